"""SegNeXt's data pipeline: joint image/mask transforms with an explicit RNG.

SegNeXt (Guo et al., "SegNeXt: Rethinking Convolutional Attention Design for
Semantic Segmentation", arXiv:2209.08575, Sec. 4, implementation details)
trains with random horizontal flipping, random scaling from 0.5 to 2 and
random cropping on top of mmsegmentation. Its official ADE20K configs spell
the pipeline out:

    RandomResize(scale=(2048, 512), ratio_range=(0.5, 2.0), keep_ratio=True)
    RandomCrop(crop_size=(512, 512), cat_max_ratio=0.75)
    RandomFlip(prob=0.5)
    PhotoMetricDistortion()
    Normalize(mean=(123.675, 116.28, 103.53), std=(58.395, 57.12, 57.375))  # RGB
    Pad(size=crop_size, pad_val=0, seg_pad_val=255)
    ToTensor()

and the test pipeline resizes keep-ratio to the same scale, normalises and
converts. Details follow mmsegmentation: the keep-ratio rule of
``mmcv.rescale_size``, the 10 crop retries of ``RandomCrop``, the order
(crop and flip first, colour jitter on the crop) and 50 % probabilities of
``PhotoMetricDistortion`` (including its hue offset drawn from
``[-delta, delta)``), and padding after normalisation (so padded pixels are
0 in normalised space, as in mmseg's data pre-processor).

Deviations, none of which changes a parameter range or a probability:

- Images are resized by torch's bilinear filter on uint8 (through
  ``torchvision.transforms.v2.functional.resize`` with ``antialias=True``):
  it antialiases when downscaling, like PIL and unlike OpenCV, and is within
  one grey level of PIL's ``BILINEAR``. Label maps are resized by
  nearest-neighbour sampling at pixel centres (PIL's rule; OpenCV's
  ``INTER_NEAREST`` samples at top-left corners, half a pixel off).
- Saturation and hue are changed in continuous HSV computed from RGB
  (OpenCV quantises hue to 180 steps and S, V to 8 bits in between), and
  the two are applied in one HSV round trip when both are drawn; they are
  adjacent in mmseg's order and commute, so only rounding differs.
- None for brightness and contrast: they use mmseg's own float32 arithmetic
  (``clip(x * alpha + beta)`` truncated to uint8) and are exact, as one
  256-entry lookup table without saturation and hue, or in place on the
  float32 copy that the HSV step works on.

Speed (one thread, as in DataLoader workers): resizing runs on the
channels-last view of the uint8 array without a float copy, colour jitter
only on the crop, and ``Normalize`` and ``Pad`` write channel-first memory
that ``ToTensor`` takes without a transpose.

Samples are dicts of numpy arrays until ``ToTensor``: ``"image"`` (H, W, 3)
uint8 (float32 after ``Normalize``), ``"mask"`` (H, W) uint8 train ids, and
optionally ``"instance_masks"`` (N, H, W) bool with ``"labels"`` (N,).
Arrays may be views with any strides (a crop, or an ``(H, W, 3)`` view of
channel-first memory after ``PhotoMetricDistortion`` and ``Normalize``, which
``ToTensor`` then hands to torch without a copy). Geometric transforms move
every label map with the image, always with nearest-neighbour sampling, so
no new label value can appear.

Reproducibility: every transform is called as ``transform(sample, rng)``
with a ``numpy.random.Generator`` and draws all randomness from it. The
datasets create that generator per sample (see
``msfusion.data.segmentation.SegmentationDataset``): from ``(aug_seed, epoch, index)``
when an ``aug_seed`` is given, which makes augmentation independent of worker
count and order, and otherwise from torch's RNG, which ``torch.manual_seed``
and DataLoader worker seeding make reproducible.

``build_train_transforms`` and ``build_eval_transforms`` are registered as
the ``"train"`` and ``"eval"`` pipelines of the ``"segmentation"`` task
(``msfusion.data.registry``), which a recipe's ``transforms: {type: ...}``
names.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from msfusion.data.registry import register_transform

Sample = dict[str, Any]
Transform = Callable[[Sample, np.random.Generator], Sample]

IMAGENET_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
IMAGENET_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)
IGNORE_INDEX = 255
_LABEL_KEYS = ("mask", "instance_masks")
# Hue offsets of PhotoMetricDistortion are in OpenCV's uint8 hue unit (2 degrees); 30 make one sextant (60 degrees).
_OPENCV_HUE_PER_SEXTANT = 30.0
# Hue sextant at which each of R, G, B is the lowest channel (cyan, magenta, yellow).
_LOWEST_HUE = torch.tensor([3.0, 5.0, 1.0]).view(3, 1, 1)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


def _as_tensor(array: np.ndarray) -> torch.Tensor:
    """A torch view of ``array`` (copied only if it has negative strides)."""
    if any(stride < 0 for stride in array.strides):
        array = np.ascontiguousarray(array)
    with warnings.catch_warnings():
        # Decoded images are often read-only buffers; the transforms never write into their inputs.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def _to_channels_first(image: np.ndarray) -> torch.Tensor:
    """``(H, W, C)`` array -> ``(C, H, W)`` tensor view (channels-last strides, no copy)."""
    if image.ndim == 2:
        image = image[:, :, None]
    return _as_tensor(image).permute(2, 0, 1)


def _resize_image(image: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear, antialiased resize of an ``(H, W, C)`` or ``(H, W)`` image.

    torch's uint8 path works on the channels-last view directly (vectorised,
    no float copy); the result comes back as an ``(H, W, C)`` array.
    """
    if tuple(image.shape[:2]) == tuple(size_hw):
        return image
    resized = TF.resize(
        _to_channels_first(image), list(size_hw), interpolation=InterpolationMode.BILINEAR, antialias=True
    )
    out = resized.permute(1, 2, 0).numpy()
    return out[:, :, 0] if image.ndim == 2 else out


def _nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index of every output pixel, sampled at pixel centres."""
    centres = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size)
    return np.minimum(centres.astype(np.intp), in_size - 1)


def _resize_labels(labels: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of ``(H, W)`` or ``(N, H, W)`` label maps (any dtype)."""
    height, width = size_hw
    if tuple(labels.shape[-2:]) == (height, width):
        return labels
    rows = _nearest_indices(labels.shape[-2], height)
    cols = _nearest_indices(labels.shape[-1], width)
    return labels.take(rows, axis=-2).take(cols, axis=-1)


def rescale_size(size_hw: tuple[int, int], scale: Sequence[int]) -> tuple[int, int]:
    """Keep-ratio target size, as ``mmcv.rescale_size``.

    The long side becomes at most ``max(scale)`` and the short side at most
    ``min(scale)``, whichever is tighter.

    Args:
        size_hw: Current ``(H, W)``.
        scale: Two edge lengths in any order, e.g. ``(2048, 512)``.

    Returns:
        New ``(H, W)``.

    Raises:
        ValueError: a side would become 0 pixels (an extremely elongated image).
    """
    height, width = size_hw
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    new_h, new_w = int(height * factor + 0.5), int(width * factor + 0.5)
    if new_h < 1 or new_w < 1:
        raise ValueError(
            f"a {height}x{width} (HxW) image resized keep-ratio to scale {tuple(scale)} would be {new_h}x{new_w} "
            "pixels: its sides are too unequal for this scale. Crop or pad the image, or test it at its own size "
            "(resize 'none')"
        )
    return new_h, new_w


def resize_sample(sample: Sample, size_hw: tuple[int, int], resize_labels: bool = True) -> Sample:
    """Resize the image (bilinear, antialiased) and, if asked, every label map (nearest)."""
    out = dict(sample)
    out["image"] = _resize_image(sample["image"], size_hw)
    if resize_labels:
        for key in _LABEL_KEYS:
            if key in sample:
                out[key] = _resize_labels(sample[key], size_hw)
    return out


class Compose:
    """Apply transforms in order, all drawing from the same generator.

    Args:
        transforms: Callables ``(sample, rng) -> sample``.
    """

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        for transform in self.transforms:
            sample = transform(sample, rng)
        return sample

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(t) for t in self.transforms)
        return f"Compose([\n  {inner}\n])"


class Resize:
    """Deterministic keep-ratio resize to ``scale`` (mmseg ``Resize(keep_ratio=True)``).

    Args:
        scale: Two edge lengths, e.g. ``(2048, 512)``: long side <= 2048 and
            short side <= 512.
        resize_mask: Also resize the label maps. Evaluation keeps them at the
            original size (mmseg computes metrics there).
    """

    def __init__(self, scale: Sequence[int], resize_mask: bool = True) -> None:
        self.scale = tuple(scale)
        self.resize_mask = resize_mask

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        size = rescale_size(sample["image"].shape[:2], self.scale)
        return resize_sample(sample, size, self.resize_mask)

    def __repr__(self) -> str:
        return f"Resize(scale={self.scale}, resize_mask={self.resize_mask})"


class RandomResize:
    """Keep-ratio resize to ``scale`` times a ratio drawn uniformly from ``ratio_range``.

    mmseg 1.x ``RandomResize`` / 0.x ``Resize(img_scale, ratio_range)``: the
    scale is ``(int(s0 * r), int(s1 * r))`` with ``r ~ U(ratio_range)``, then
    the keep-ratio rule of :func:`rescale_size`.
    """

    def __init__(self, scale: Sequence[int] = (2048, 512), ratio_range: tuple[float, float] = (0.5, 2.0)) -> None:
        if ratio_range[0] <= 0 or ratio_range[0] > ratio_range[1]:
            raise ValueError(f"ratio_range must be 0 < low <= high, got {ratio_range}")
        self.scale = tuple(scale)
        self.ratio_range = tuple(ratio_range)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        low, high = self.ratio_range
        ratio = rng.random() * (high - low) + low
        scale = (int(self.scale[0] * ratio), int(self.scale[1] * ratio))
        return resize_sample(sample, rescale_size(sample["image"].shape[:2], scale))

    def __repr__(self) -> str:
        return f"RandomResize(scale={self.scale}, ratio_range={self.ratio_range})"


class RandomCrop:
    """Random crop of at most ``crop_size``, avoiding crops dominated by one class.

    mmseg ``RandomCrop``: when ``cat_max_ratio < 1``, a crop is redrawn (up to
    ``max_tries`` = 10 times) unless it holds more than one non-ignored class
    and the largest covers less than ``cat_max_ratio`` of the non-ignored
    pixels; the last draw is kept either way. Images smaller than the crop
    are kept whole along that side (``Pad`` fills them up later).

    Args:
        crop_size: ``(H, W)`` or one int.
        cat_max_ratio: Largest allowed share of one class; 1 disables the check.
        ignore_index: Label not counted in the ratio.
        max_tries: Redraws, 10 in mmseg.
    """

    def __init__(
        self,
        crop_size: int | Sequence[int],
        cat_max_ratio: float = 1.0,
        ignore_index: int = IGNORE_INDEX,
        max_tries: int = 10,
    ) -> None:
        self.crop_size = _pair(crop_size)
        if min(self.crop_size) <= 0:
            raise ValueError(f"crop_size must be positive, got {self.crop_size}")
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index
        self.max_tries = max_tries

    def _draw_box(self, size_hw: tuple[int, int], rng: np.random.Generator) -> tuple[int, int]:
        margin_h = max(size_hw[0] - self.crop_size[0], 0)
        margin_w = max(size_hw[1] - self.crop_size[1], 0)
        return int(rng.integers(0, margin_h + 1)), int(rng.integers(0, margin_w + 1))

    def _balanced(self, mask: np.ndarray) -> bool:
        if mask.dtype == np.uint8:
            # A 256-bin histogram: one pass, where np.unique sorts the whole crop (torch's is the faster one).
            counts = torch.bincount(_as_tensor(mask).flatten(), minlength=256).numpy()
            if 0 <= self.ignore_index < 256:
                counts[self.ignore_index] = 0
            counts = counts[counts > 0]
        else:
            labels, counts = np.unique(mask, return_counts=True)
            counts = counts[labels != self.ignore_index]
        return len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        size = sample["image"].shape[:2]
        top, left = self._draw_box(size, rng)
        crop_h, crop_w = self.crop_size
        if self.cat_max_ratio < 1.0:
            for _ in range(self.max_tries):
                if self._balanced(sample["mask"][top : top + crop_h, left : left + crop_w]):
                    break
                top, left = self._draw_box(size, rng)
        out = dict(sample)
        out["image"] = sample["image"][top : top + crop_h, left : left + crop_w]
        out["mask"] = sample["mask"][top : top + crop_h, left : left + crop_w]
        if "instance_masks" in sample:
            out["instance_masks"] = sample["instance_masks"][:, top : top + crop_h, left : left + crop_w]
        return out

    def __repr__(self) -> str:
        return f"RandomCrop(crop_size={self.crop_size}, cat_max_ratio={self.cat_max_ratio})"


class RandomFlip:
    """Horizontal flip with probability ``prob`` (mmseg ``RandomFlip``)."""

    def __init__(self, prob: float = 0.5) -> None:
        self.prob = prob

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        if rng.random() >= self.prob:
            return sample
        out = dict(sample)
        # torch copies an (H, W, 3) uint8 image flipped an order of magnitude faster than numpy.
        out["image"] = _as_tensor(sample["image"]).flip(1).numpy()
        for key in _LABEL_KEYS:
            if key in sample:
                out[key] = np.ascontiguousarray(sample[key][..., ::-1])
        return out

    def __repr__(self) -> str:
        return f"RandomFlip(prob={self.prob})"


class PhotoMetricDistortion:
    """mmseg ``PhotoMetricDistortion`` on a uint8 RGB image.

    In order, each step applied with probability 0.5: brightness (add
    ``U(-delta, delta)``), contrast (multiply by ``U(lower, upper)``) either
    here or last (a coin flip), saturation (scale HSV S by
    ``U(lower, upper)``), hue (shift HSV H by an integer from
    ``[-hue_delta, hue_delta)`` in OpenCV units of 2 degrees). Brightness and
    contrast clip to 0..255 and truncate, as mmseg's ``convert``, in its
    float32 arithmetic. Saturation and hue work in continuous HSV (see
    :func:`adjust_saturation_hue`), V is kept and the result rounded.

    Without saturation and hue, brightness and contrast are one 256-entry
    lookup table; with them, every step runs in place on one float32 copy.
    Returns the image as an ``(H, W, 3)`` uint8 view of channel-first memory
    in the second case (``Normalize`` reads it without a transpose).
    """

    def __init__(
        self,
        brightness_delta: int = 32,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: int = 18,
    ) -> None:
        self.brightness_delta = brightness_delta
        self.contrast_range = contrast_range
        self.saturation_range = saturation_range
        self.hue_delta = hue_delta

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        # Every draw happens first, in mmseg's order; the image is then touched as few times as possible.
        before: list[tuple[float, float]] = []  # (alpha, beta) of mmseg's convert
        if rng.integers(2):
            delta = self.brightness_delta
            before.append((1.0, rng.uniform(-delta, delta)))
        contrast_last = rng.integers(2) == 0
        if not contrast_last and rng.integers(2):
            before.append((rng.uniform(*self.contrast_range), 0.0))
        saturation = rng.uniform(*self.saturation_range) if rng.integers(2) else None
        hue = int(rng.integers(-self.hue_delta, self.hue_delta)) if rng.integers(2) else None
        after: list[tuple[float, float]] = []
        if contrast_last and rng.integers(2):
            after.append((rng.uniform(*self.contrast_range), 0.0))
        image = sample["image"]
        if saturation is None and hue is None:
            if before or after:
                image = np.take(_convert_table(before + after), image)
        else:
            rgb = _to_channels_first(image).to(torch.float32, memory_format=torch.contiguous_format)
            for alpha, beta in before:
                _convert_(rgb, alpha, beta)
            rgb = _saturation_hue_(rgb, saturation, None if hue is None else hue / _OPENCV_HUE_PER_SEXTANT)
            if after:
                rgb.trunc_()  # the rounded uint8 value (rounding half up was folded in as +0.5)
                for alpha, beta in after:
                    _convert_(rgb, alpha, beta)
            image = rgb.to(torch.uint8).permute(1, 2, 0).numpy()
        return {**sample, "image": image}

    def __repr__(self) -> str:
        return (
            f"PhotoMetricDistortion(brightness_delta={self.brightness_delta}, "
            f"contrast_range={self.contrast_range}, saturation_range={self.saturation_range}, "
            f"hue_delta={self.hue_delta})"
        )


def _convert_table(steps: Sequence[tuple[float, float]]) -> np.ndarray:
    """mmseg's ``convert`` steps composed over all uint8 values: a ``(256,)`` uint8 lookup table."""
    values = np.arange(256, dtype=np.float32)
    for alpha, beta in steps:
        # float32 array times Python floats stays float32, as in mmseg's numpy code.
        values = np.floor(np.clip(values * np.float32(alpha) + np.float32(beta), 0, 255))
    return values.astype(np.uint8)


def _convert_(rgb: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """mmseg's ``convert`` (``x * alpha + beta``, clipped to 0..255, truncated) on float32 data, in place."""
    if alpha != 1.0:
        rgb.mul_(alpha)
    if beta != 0.0:
        rgb.add_(beta)
    return rgb.clamp_(0.0, 255.0).trunc_()


def adjust_saturation_hue(image: np.ndarray, saturation: float | None = None, hue: float | None = None) -> np.ndarray:
    """Scale HSV saturation and rotate HSV hue of a uint8 RGB image, keeping V (the channel maximum).

    Computed in RGB with the hexcone model: chroma ``C = V - min`` becomes
    ``min(saturation * C, V)`` (S scaled and clipped to 1, as mmseg clips it
    to 255), and the hue sextant ``h`` in ``[0, 6)`` becomes ``h + hue``.
    Channel ``n`` is then ``V - C * clamp(2 - d_n, 0, 1)``, ``d_n`` being the
    circular distance of ``h`` from the hue where that channel is lowest
    (cyan 3 for R, magenta 5 for G, yellow 1 for B). Grey pixels (``C = 0``)
    stay grey. The result is within 0.5 of the exact continuous HSV
    transform (``colorsys``), rounded.

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        saturation: Factor on S, or None to keep it.
        hue: Shift in sextants (60 degrees), or None to keep the hue.

    Returns:
        ``(H, W, 3)`` uint8 view of ``(3, H, W)`` memory.
    """
    rgb = _to_channels_first(image).to(torch.float32, memory_format=torch.contiguous_format)
    if saturation is not None or hue is not None:
        rgb = _saturation_hue_(rgb, saturation, hue)
    return rgb.to(torch.uint8).permute(1, 2, 0).numpy()


def _saturation_hue_(rgb: torch.Tensor, saturation: float | None, hue: float | None) -> torch.Tensor:
    """:func:`adjust_saturation_hue` on ``(3, H, W)`` contiguous float32 holding integers 0..255.

    Overwrites ``rgb`` and returns the result plus 0.5 (truncation then
    rounds half up; every result lies in ``[0, V]``).
    """
    # In-place float32 work into few buffers: a fresh buffer costs about as much as the arithmetic on it.
    red, green, blue = rgb.unbind(0)
    value = torch.maximum(red, green)
    torch.maximum(value, blue, out=value)
    chroma = torch.minimum(red, green)
    torch.minimum(chroma, blue, out=chroma)
    chroma.neg_().add_(value)
    if hue is None:
        # Hue kept: every channel moves away from V by the chroma's factor, min(saturation, V / C).
        factor = torch.div(value, chroma.clamp_(min=0.5), out=chroma).clamp_(max=saturation)
        return rgb.sub_(value).mul_(factor).add_(value.add_(0.5))
    # Sextant times chroma by the channel holding the maximum: 4C + R - G (blue), 2C + B - R (green),
    # G - B (red), selected by exact 0/1 weights (channel - V + 1, clamped, on integer values). Ties
    # between maxima give the same hue either way.
    scaled = torch.sub(red, green).add_(chroma, alpha=4.0)
    candidate = torch.sub(blue, red).add_(chroma, alpha=2.0)
    weight = torch.sub(green, value).add_(1.0).clamp_(min=0.0)
    scaled.lerp_(candidate, weight)
    torch.sub(green, blue, out=candidate)
    torch.sub(red, value, out=weight).add_(1.0).clamp_(min=0.0)
    scaled.lerp_(candidate, weight)
    sextant = scaled.div_(torch.clamp(chroma, min=0.5, out=weight)).add_(hue)  # in [-1 + hue, 5 + hue]
    if abs(hue) > 1.0:
        sextant.sub_(torch.floor(sextant * (1.0 / 6.0)).mul_(6.0))  # into [0, 6)
    if saturation is not None:
        torch.minimum(chroma.mul_(saturation), value, out=chroma)
    # Ramp of each channel: 2 - circular distance d to its lowest hue, clamped to 0..1, with
    # d = 3 - ||h - c| - 3|. Without the wrap |h - c| stays below 7, where the formula's d is -(true d)
    # only for true d <= 1, both of which clamp to 1.
    ramp = torch.sub(sextant.unsqueeze(0), _LOWEST_HUE, out=rgb).abs_().sub_(3.0).abs_().sub_(1.0).clamp_(0.0, 1.0)
    return torch.addcmul(value.add_(0.5), chroma, ramp, value=-1.0, out=rgb)


class Normalize:
    """``(image - mean) / std`` per RGB channel; uint8 in, float32 out."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        # Channel-first float32 memory, returned as an (H, W, 3) view: ToTensor then needs no transpose copy.
        image = _to_channels_first(sample["image"]).to(torch.float32, memory_format=torch.contiguous_format)
        image.sub_(torch.from_numpy(self.mean).view(-1, 1, 1)).div_(torch.from_numpy(self.std).view(-1, 1, 1))
        return {**sample, "image": image.permute(1, 2, 0).numpy()}

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


class Pad:
    """Pad bottom and right up to ``size`` (mmseg ``Pad``; larger inputs are kept).

    Args:
        size: ``(H, W)`` or one int.
        pad_val: Image fill; 0 after ``Normalize`` is the mean colour.
        seg_pad_val: Mask fill, the ignore index, so padding adds no loss.
    """

    def __init__(self, size: int | Sequence[int], pad_val: float = 0.0, seg_pad_val: int = IGNORE_INDEX) -> None:
        self.size = _pair(size)
        self.pad_val = pad_val
        self.seg_pad_val = seg_pad_val

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        height, width = sample["image"].shape[:2]
        pad_h, pad_w = max(self.size[0] - height, 0), max(self.size[1] - width, 0)
        if pad_h == 0 and pad_w == 0:
            return sample
        out = dict(sample)
        # Channel-first memory, as Normalize leaves it: ToTensor then needs no transpose copy.
        image = _to_channels_first(sample["image"])
        padded = image.new_full((image.shape[0], height + pad_h, width + pad_w), self.pad_val)
        padded[:, :height, :width] = image
        out["image"] = (
            padded.permute(1, 2, 0).numpy().reshape(height + pad_h, width + pad_w, *sample["image"].shape[2:])
        )
        label_pad = ((0, pad_h), (0, pad_w))
        out["mask"] = np.pad(sample["mask"], label_pad, constant_values=self.seg_pad_val)
        if "instance_masks" in sample:
            out["instance_masks"] = np.pad(sample["instance_masks"], ((0, 0), *label_pad))
        return out

    def __repr__(self) -> str:
        return f"Pad(size={self.size}, pad_val={self.pad_val}, seg_pad_val={self.seg_pad_val})"


class ToTensor:
    """Numpy sample -> tensors: image ``(3, H, W)`` float32, mask ``(H, W)`` int64.

    Instance masks become ``(N, H, W)`` bool and labels ``(N,)`` int64. The
    image must be float already (after ``Normalize``).
    """

    def __call__(self, sample: Sample, rng: np.random.Generator) -> Sample:
        image = sample["image"]
        if image.dtype != np.float32:
            raise TypeError(
                f"ToTensor expects the float32 output of Normalize, got {image.dtype}; "
                "put Normalize() before ToTensor()"
            )
        out = dict(sample)
        out["image"] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        out["mask"] = torch.from_numpy(np.ascontiguousarray(sample["mask"], dtype=np.int64))
        if "instance_masks" in sample:
            masks = np.ascontiguousarray(sample["instance_masks"], dtype=bool)
            out["instance_masks"] = torch.from_numpy(masks)
            out["labels"] = torch.as_tensor(np.asarray(sample["labels"]), dtype=torch.int64)
        return out

    def __repr__(self) -> str:
        return "ToTensor()"


@register_transform("train", task="segmentation")
def build_train_transforms(
    crop_size: int | Sequence[int],
    scale: Sequence[int] = (2048, 512),
    ratio_range: tuple[float, float] = (0.5, 2.0),
    cat_max_ratio: float = 0.75,
    flip_prob: float = 0.5,
    photometric: bool = True,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    ignore_index: int = IGNORE_INDEX,
) -> Compose:
    """SegNeXt's training pipeline (its official configs; defaults are ADE20K's but the crop).

    Args:
        crop_size: Crop and pad size ``(H, W)`` or one int; 512 for ADE20K,
            1024 for Cityscapes.
        scale: Base resize scale, ``(2048, 512)`` for ADE20K and
            ``(2048, 1024)`` for Cityscapes.
        ratio_range: Random scale ratio range.
        cat_max_ratio: ``RandomCrop``'s largest share of one class (0.75).
        flip_prob: Horizontal flip probability.
        photometric: Include ``PhotoMetricDistortion``.
        mean: Normalisation mean (RGB, 0..255 scale).
        std: Normalisation std.
        ignore_index: Label of padded and ignored pixels.

    Returns:
        A :class:`Compose` called as ``pipeline(sample, rng)``.
    """
    steps: list[Transform] = [
        RandomResize(scale, ratio_range),
        RandomCrop(crop_size, cat_max_ratio, ignore_index),
        RandomFlip(flip_prob),
    ]
    if photometric:
        steps.append(PhotoMetricDistortion())
    steps += [Normalize(mean, std), Pad(crop_size, 0.0, ignore_index), ToTensor()]
    return Compose(steps)


@register_transform("eval", task="segmentation")
def build_eval_transforms(
    scale: Sequence[int] | None = None,
    resize_mask: bool = False,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> Compose:
    """SegNeXt's test pipeline: optional keep-ratio resize, normalise, to tensor.

    Args:
        scale: Keep-ratio resize scale, e.g. ``(2048, 512)``; None keeps the size.
        resize_mask: Resize the mask with the image. Off by default: mmseg
            scores predictions resized back to the original label size, so
            the mask keeps the original resolution and may then differ in size
            from the image.
        mean: Normalisation mean.
        std: Normalisation std.
    """
    steps: list[Transform] = [] if scale is None else [Resize(scale, resize_mask)]
    return Compose([*steps, Normalize(mean, std), ToTensor()])


def denormalize(
    image: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> np.ndarray:
    """Undo ``Normalize`` for display.

    Args:
        image: ``(3, H, W)`` normalised tensor (any device or dtype).
        mean: The mean used to normalise.
        std: The std used to normalise.

    Returns:
        ``(H, W, 3)`` uint8 RGB array.
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"denormalize expects a (3, H, W) tensor, got {tuple(image.shape)}")
    array = image.detach().float().cpu().numpy().transpose(1, 2, 0)
    array = array * np.asarray(std, dtype=np.float32) + np.asarray(mean, dtype=np.float32)
    return np.clip(np.round(array), 0, 255).astype(np.uint8)
