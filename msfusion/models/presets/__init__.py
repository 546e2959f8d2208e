"""Registered paper variants, one file per paper: each registers its models with ``@register_model``.

``segnext`` (+ ``segnext_ablations``), ``cednet``, ``mscsa``, ``fine``,
``topformer``, and ``baselines`` (the models the papers compare against,
built with the same helpers as their rows). A detector preset is
``build_detector`` (or ``build_detr``) with one paper's setup; its keyword
arguments override that setup, ``*_kwargs`` dicts merged key by key
(``merge_preset_kwargs``).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from msfusion.models.meta_arch.detector import build_detector

__all__ = ["COCO_CLASSES_WITH_BACKGROUND", "create_detector", "create_detr", "merge_preset_kwargs"]

COCO_CLASSES_WITH_BACKGROUND = 81  # 80 categories, mapped to 1..80, plus background


def merge_preset_kwargs(defaults: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """A preset's ``defaults`` overridden by the user's ``kwargs``; ``*_kwargs`` dicts merge key by key."""
    out = dict(defaults)
    for key, value in kwargs.items():
        if key.endswith("_kwargs") and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    out.setdefault("num_classes", COCO_CLASSES_WITH_BACKGROUND)
    return out


def create_detector(arch: str, defaults: dict[str, Any], kwargs: dict[str, Any]) -> nn.Module:
    """``build_detector(arch, ...)`` with a preset's defaults (80 COCO classes unless given)."""
    return build_detector(arch, **merge_preset_kwargs(defaults, kwargs))


def create_detr(arch: str, defaults: dict[str, Any], kwargs: dict[str, Any]) -> nn.Module:
    """``build_detr(arch, ...)`` with a preset's defaults; transformers (``msfusion[detr]``) is imported here."""
    from msfusion.models.meta_arch.detr import build_detr

    return build_detr(arch, **merge_preset_kwargs(defaults, kwargs))
