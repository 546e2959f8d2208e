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
from msfusion.registry import model_entrypoint, register_model

__all__ = ["DecodeHead", "FCNHead", "LightHamHead", "MLPHead", "MSCAHead", "UPerHead", "build_head"]


def build_head(name: str, feature_info: Sequence[FeatureInfo], num_classes: int, **kwargs: Any) -> nn.Module:
    """Build a registered head by name; ``ValueError`` with close matches for an unknown one."""
    return model_entrypoint(name, kind="head")(feature_info, num_classes=num_classes, **kwargs)


@register_model(kind="head")
def ham(feature_info: Sequence[FeatureInfo], num_classes: int, **kwargs: Any) -> LightHamHead:
    """SegNeXt's LightHamHead (Fig. 3c): strides 8, 16, 32 -> logits at 1/8."""
    return LightHamHead(feature_info, num_classes, **kwargs)


@register_model(kind="head")
def uper(feature_info: Sequence[FeatureInfo], num_classes: int, **kwargs: Any) -> UPerHead:
    """UperNet's PPM + FPN head: strides 4, 8, 16, 32 -> logits at 1/4."""
    return UPerHead(feature_info, num_classes, **kwargs)


@register_model(kind="head")
def mlp(feature_info: Sequence[FeatureInfo], num_classes: int, **kwargs: Any) -> MLPHead:
    """SegFormer's all-MLP head: strides 4, 8, 16, 32 -> logits at 1/4."""
    return MLPHead(feature_info, num_classes, **kwargs)


@register_model(kind="head")
def msca(feature_info: Sequence[FeatureInfo], num_classes: int, **kwargs: Any) -> MSCAHead:
    """SegNeXt's appendix MSCA head: strides 8, 16, 32 -> logits at 1/8."""
    return MSCAHead(feature_info, num_classes, **kwargs)


@register_model(kind="head")
def fcn(feature_info: Sequence[FeatureInfo], num_classes: int, **kwargs: Any) -> FCNHead:
    """The FCN head on one map (stride 16 by default), UperNet's auxiliary head."""
    return FCNHead(feature_info, num_classes, **kwargs)
