"""Decode heads, registered by name (kind ``"head"``) and built from a producer's ``feature_info``.

``build_head("ham", feature_info=..., num_classes=K)`` builds any registered
head; each head names the strides it reads (``in_strides``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from msfusion.layers import FeatureInfo
from msfusion.models.heads.base import DecodeHead
from msfusion.models.heads.fcn import FCNHead
from msfusion.models.heads.ham import LightHamHead
from msfusion.models.heads.mlp import MLPHead
from msfusion.models.heads.msca_head import MSCAHead
from msfusion.models.heads.uper import UPerHead
from msfusion.registry import model_entrypoint

__all__ = ["DecodeHead", "FCNHead", "LightHamHead", "MLPHead", "MSCAHead", "UPerHead", "build_head"]


def build_head(name: str, feature_info: Sequence[FeatureInfo], num_classes: int, **kwargs: Any) -> nn.Module:
    """Build a registered head by name; ``ValueError`` with close matches for an unknown one."""
    return model_entrypoint(name, kind="head")(feature_info, num_classes=num_classes, **kwargs)
