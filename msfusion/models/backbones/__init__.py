"""Feature backbones: MSCAN, CEDNet, and any timm model through one adapter."""

from __future__ import annotations

from typing import Any

from torch import nn

from msfusion.registry import register_fallback


def _timm_features(name: str, **kwargs: Any) -> nn.Module | None:
    """Any timm model name as a feature backbone (``create_model(name, features_only=True)``)."""
    import timm

    if not (timm.is_model(name) or timm.list_models(name)):
        return None
    from msfusion.models.backbones.timm_adapter import TimmFeatures

    return TimmFeatures(name, **kwargs)


register_fallback(_timm_features)
