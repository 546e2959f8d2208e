"""The feature contract shared by backbones, add-ons, necks and heads.

A feature producer (backbone, add-on, neck) returns ``list[Tensor]`` ordered
strictly finest first and describes it with ``feature_info``: one
``{"chs": C, "reduction": stride, "module": name}`` per output, where ``module``
names the submodule that produced the map (timm's and detectron2's convention).
Consumers (heads, necks, add-ons) select maps by stride, never by position.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "pad_to_size_constraint",
    "FeatureInfo",
    "check_feature_info",
    "check_image_batch",
    "indices_for_strides",
    "is_channels_last",
    "resize_to",
    "select_features",
]


class FeatureInfo(TypedDict, total=False):
    chs: int
    reduction: int
    module: str


def check_feature_info(info: object, owner: str) -> list[FeatureInfo]:
    """Validate a producer's ``feature_info``; return it as a list of plain dicts.

    Every entry needs a positive ``chs`` and ``reduction``; reductions must
    increase strictly (finest first), so that a consumer can select maps by
    stride. ``owner`` names the producer in the error message.
    """
    if info is None or isinstance(info, (str, bytes)) or not hasattr(info, "__len__") or len(info) == 0:
        raise ValueError(
            f"{owner} has no feature_info: a feature producer must describe its outputs with a list of "
            "dict(chs=channels, reduction=stride, module=name), finest first. Build backbones with "
            "msfusion.create_model(name, features_only=True)."
        )
    out: list[FeatureInfo] = []
    for i, entry in enumerate(info):
        try:
            chs, reduction = int(entry["chs"]), int(entry["reduction"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{owner}.feature_info[{i}] = {entry!r} needs integer 'chs' and 'reduction'") from err
        if chs <= 0 or reduction <= 0:
            raise ValueError(f"{owner}.feature_info[{i}] = {entry!r}: channels and stride must be positive")
        out.append(FeatureInfo(chs=chs, reduction=reduction, module=str(entry.get("module", f"out{i}"))))
    strides = [f["reduction"] for f in out]
    if any(b <= a for a, b in zip(strides, strides[1:], strict=False)):
        raise ValueError(
            f"{owner} lists its outputs with strides {strides}: they must increase strictly (finest first). "
            "Reorder the outputs, or expose extra maps of a repeated stride separately."
        )
    return out


def indices_for_strides(info: Sequence[FeatureInfo], strides: Sequence[int], owner: str) -> tuple[int, ...]:
    """Positions in ``info`` of the maps with the given strides, in the order asked.

    Raises ``ValueError`` listing the strides that exist when one is missing.
    """
    available = [int(f["reduction"]) for f in info]
    strides = tuple(int(s) for s in strides)
    if not strides:
        raise ValueError(f"{owner}: name at least one stride to read; the producer has strides {available}")
    missing = [s for s in strides if s not in available]
    if missing:
        raise ValueError(
            f"{owner} reads strides {list(strides)}, but the features have strides {available} "
            f"(missing: {missing}). Pass in_strides= with strides from that list."
        )
    return tuple(available.index(s) for s in strides)


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


def check_image_batch(x: Tensor, in_chans: int = 3, dtype: torch.dtype | None = None) -> None:
    """Fail early, and say what was expected, for an input that is not a (B, C, H, W) float batch.

    ``dtype``: the model's weight dtype; an input of another float dtype (float64 into float32
    weights) is named here instead of failing inside a convolution.
    """
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
    if dtype is not None and x.dtype != dtype:
        raise ValueError(f"input is {x.dtype} but the model's weights are {dtype}; convert with x.to({dtype})")
    if x.shape[1] != in_chans:
        raise ValueError(
            f"expected {in_chans} input channels, got {x.shape[1]} (input shape {tuple(x.shape)}). "
            "Images must be channels-first (B, C, H, W)."
        )


def is_channels_last(t: Tensor) -> bool:
    """A 4-D tensor in channels-last (NHWC) memory and not also NCHW-contiguous (e.g. one pixel, one channel)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def resize_to(x: Tensor, size: Sequence[int], mode: str = "bilinear") -> Tensor:
    """Bilinear resize (align_corners=False, as mmseg's ``resize``); a no-op at the same size."""
    # Traced graphs (ONNX export) keep the resize: the sizes may differ at other input sizes. At equal
    # sizes, bilinear resizing with align_corners=False is the identity, so the numbers do not change.
    if tuple(x.shape[-2:]) == tuple(size) and not torch.jit.is_tracing():
        return x
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=False if mode != "nearest" else None)


def pad_to_size_constraint(images: Tensor, size_divisor: int, min_size: int = 0) -> Tensor:
    """Zero-pad (bottom and right) to a multiple of ``size_divisor`` and to at least ``min_size`` per side.

    Zero is the mean colour after normalisation, as mmsegmentation's and
    torchvision's padding. The arithmetic is on sizes only (no comparison), so
    a traced or exported graph pads correctly at every input size.

    Args:
        images: (B, C, H, W).
        size_divisor: the padded H and W are multiples of it.
        min_size: the padded H and W are at least this (only applied when it
            exceeds ``size_divisor``, which the first pad already reaches).

    Returns:
        (B, C, H', W') with H' >= H, W' >= W.
    """
    h, w = images.shape[-2], images.shape[-1]
    d = int(size_divisor)
    if d > 1:
        images = F.pad(images, (0, (d - w % d) % d, 0, (d - h % d) % d))
    if min_size > d:
        h, w = images.shape[-2], images.shape[-1]
        # max(x, 0) written as (x + |x|) // 2: arithmetic on sizes stays in a traced graph, a comparison would not.
        short_w, short_h = min_size - w, min_size - h
        images = F.pad(images, (0, (short_w + abs(short_w)) // 2, 0, (short_h + abs(short_h)) // 2))
    return images
