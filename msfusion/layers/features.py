"""The feature contract shared by backbones, add-ons, necks and heads (DESIGN.md).

A feature producer returns ``list[Tensor]`` ordered fine to coarse and describes
it with ``feature_info``: one ``{"chs": C, "reduction": stride}`` per output.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["FeatureInfo", "check_image_batch", "resize_to", "select_features"]


class FeatureInfo(TypedDict):
    chs: int
    reduction: int


def select_features(
    info: Sequence[FeatureInfo], out_indices: Sequence[int] | None
) -> tuple[tuple[int, ...], list[FeatureInfo]]:
    """Validate ``out_indices`` against ``info``; return them and the selected info."""
    n = len(info)
    if out_indices is None:
        out_indices = tuple(range(n))
    indices = tuple(i % n if -n <= i < n else i for i in out_indices)
    bad = [i for i in indices if not 0 <= i < n]
    if bad or not indices:
        raise ValueError(f"out_indices {tuple(out_indices)} out of range: this backbone has {n} outputs (0..{n - 1})")
    return indices, [dict(info[i]) for i in indices]


def check_image_batch(x: Tensor, in_chans: int = 3) -> None:
    """Fail early, and say what was expected, for an input that is not a (B, C, H, W) float batch."""
    if not isinstance(x, Tensor):
        raise TypeError(f"expected a torch.Tensor of shape (B, {in_chans}, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        hint = " Add a batch dimension with x.unsqueeze(0)." if x.dim() == 3 else ""
        raise ValueError(f"expected a 4-D input (B, {in_chans}, H, W), got shape {tuple(x.shape)}.{hint}")
    if not torch.is_floating_point(x):
        raise ValueError(
            f"expected a float input (normalised image), got dtype {x.dtype}. "
            "Convert with x.float() and normalise with the ImageNet mean/std."
        )
    if x.shape[1] != in_chans:
        raise ValueError(
            f"expected {in_chans} input channels, got {x.shape[1]} (input shape {tuple(x.shape)}). "
            "Images must be channels-first (B, C, H, W)."
        )


def resize_to(x: Tensor, size: Sequence[int], mode: str = "bilinear") -> Tensor:
    """Bilinear resize (align_corners=False, as mmseg's ``resize``); a no-op at the same size."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False if mode != "nearest" else None)
