"""CEDNet checkpoint key layouts of the released CEDNet code (zhanggang001/CEDNet).

Our module names equal the official ones, so the layouts differ only in their
wrapping and prefixes:

- ``"imagenet"`` (official ``main.py``): ``{"model": state_dict, "optimizer": ...,
  "epoch": ...}``; keys ``stem.*``, ``stages.{s}.*``, ``final_layers.{k}.*``,
  ``norms.{k}.*``, ``heads.{k}.*`` (one head per stage; ``model_ema`` may be
  present as well).
- ``"mmdet"`` (ced-mmdet detectors): ``{"state_dict": ...}``; the backbone's keys
  under ``backbone.``, including the built-in pyramid layers ``reduce_convs``,
  ``add_blocks`` and, for two-stage detectors, ``reduce_c2`` / ``merge_c2``; no
  classification heads; detector heads under ``bbox_head.`` / ``rpn_head.`` /
  ``roi_head.``.
- ``"mmseg"`` (ced-mmseg UperNet): ``{"state_dict": ...}``; backbone keys under
  ``backbone.`` without classification heads, ``decode_head.*`` and
  ``auxiliary_head.*`` beside them.

Official Swin blocks also store their ``relative_position_index`` buffer, which
our (timm) window attention rebuilds itself; it is dropped on load.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["LAYOUTS", "from_official", "to_official", "unwrap"]

LAYOUTS = ("imagenet", "mmdet", "mmseg")
_HEAD_PREFIXES = ("final_layers.", "norms.", "heads.")
_PYRAMID_PREFIXES = ("reduce_convs.", "add_blocks.", "reduce_c2.", "merge_c2.")
# Task heads of mmdet / mmseg models, never part of the backbone.
_TASK_PREFIXES = (
    "neck.",
    "bbox_head.",
    "rpn_head.",
    "roi_head.",
    "mask_head.",
    "decode_head.",
    "auxiliary_head.",
)


def unwrap(checkpoint: dict[str, Any]) -> dict[str, Tensor]:
    """The state dict inside a checkpoint: ``state_dict``, then ``model``, else the dict itself."""
    for key in ("state_dict", "model"):
        inner = checkpoint.get(key)
        if isinstance(inner, dict) and any(isinstance(v, Tensor) for v in inner.values()):
            return inner
    return checkpoint


def from_official(checkpoint: dict[str, Any]) -> dict[str, Tensor]:
    """Any official layout -> our keys (backbone, pyramid and classification-head keys).

    Unwraps ``state_dict`` / ``model``, strips ``module.`` (DDP) and ``backbone.``
    (mmdet / mmseg) prefixes, drops task-head keys (``decode_head.``,
    ``bbox_head.``, ...) and Swin's ``relative_position_index`` buffers.
    """
    out = {}
    for key, value in unwrap(checkpoint).items():
        if not isinstance(value, Tensor):
            continue
        key = key.removeprefix("module.")
        if key.startswith(_TASK_PREFIXES):
            continue
        key = key.removeprefix("backbone.")
        if key.endswith("relative_position_index"):
            continue
        out[key] = value
    return out


def to_official(state_dict: dict[str, Tensor], layout: str = "imagenet") -> dict[str, Any]:
    """Our state dict -> a checkpoint dict in an official layout (export, and round-trip tests).

    Args:
        state_dict: ``CEDNet.state_dict()``.
        layout: ``"imagenet"``, ``"mmdet"`` or ``"mmseg"``.

    Returns:
        ``{"model": ...}`` (ImageNet) or ``{"state_dict": ..., "meta": {}}``
        (mmdet / mmseg, backbone keys under ``backbone.``; classification heads
        removed, and pyramid layers removed for mmseg). Swin blocks get the
        ``relative_position_index`` buffers the official code stores.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    sd = dict(state_dict)
    for key, value in state_dict.items():
        if key.endswith("attn.relative_position_bias_table"):
            window = (int(round(value.shape[0] ** 0.5)) + 1) // 2
            sd[key.replace("relative_position_bias_table", "relative_position_index")] = _relative_index(window)
    if layout == "imagenet":
        return {"model": sd}
    drop = _HEAD_PREFIXES + (_PYRAMID_PREFIXES if layout == "mmseg" else ())
    return {
        "state_dict": {f"backbone.{k}": v for k, v in sd.items() if not k.startswith(drop)},
        "meta": {},
    }


def _relative_index(window: int) -> Tensor:
    """Swin's (w*w, w*w) index into the (2w-1)^2 relative-position table."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]
