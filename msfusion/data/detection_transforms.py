"""Detection transforms: resize, flip, large-scale jittering and copy-paste, boxes and masks kept in step.

Built on ``torchvision.transforms.v2`` with ``tv_tensors`` (``Image``,
``BoundingBoxes`` in XYXY pixels, ``Mask``), which move boxes and masks with
the image. A pipeline is ``(image, target, rng) -> (image, target)``:

- ``image``: ``tv_tensors.Image`` (3, H, W) uint8;
- ``target``: dict with ``boxes`` (``BoundingBoxes`` (N, 4) XYXY), ``labels``
  (N,) int64 and optionally ``masks`` (``Mask`` (N, H, W) uint8);
- ``rng``: a ``numpy.random.Generator``; the torch random draws of the v2
  transforms are seeded from it, so augmentation is reproducible per
  (seed, epoch, index) and independent of the number of workers.

The output image is float32 in [0, 1] and **not normalised**: the detector
(torchvision's ``GeneralizedRCNNTransform``) normalises, so it happens once.

Pipelines (``build_detection_transforms(kind=...)``, registered for the
``"detection"`` task of ``msfusion.data.registry``):

- ``"eval"``: nothing geometric: predictions come back in the image's own
  pixels, and the detector's ``min_size`` / ``max_size`` set the test scale.
- ``"train"``: optional multi-scale shortest-side resize (``scales``, longer
  side capped at ``max_size``), then horizontal flip (p = 0.5).
- ``"lsj"``: large-scale jittering (Ghiasi et al., "Simple Copy-Paste is a
  Strong Data Augmentation Method for Instance Segmentation", arXiv
  2012.07177, Sec. 3; used by CEDNet, arXiv 2302.06052, Sec. 4.1): resize so
  the image fits ``size`` x ``size`` (1024) times a scale drawn from [0.1,
  2.0], crop or pad (zeros, bottom/right) to exactly ``size`` x ``size``,
  flip; then boxes are recomputed from the cropped masks (when there are
  masks), so each box stays the tight box of its visible mask, and
  instances left with no visible pixel (or a box below 1 px) are dropped.

``CopyPaste`` (Ghiasi et al., Sec. 3) pastes a random subset of the objects
of a second LSJ sample onto the first: with masks, the pasted pixels replace
the target's, the target's masks lose those pixels (fully covered objects
are removed) and boxes are recomputed from the masks; without masks
("copy-paste with box annotations only", as CEDNet trains RetinaNet), the
pasted boxes' rectangles are copied and target boxes covered by more than
``max_covered`` of their area are removed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2

from msfusion.data.base_dataset import boxes_from_masks
from msfusion.data.registry import build_transforms, register_transform

__all__ = [
    "DetectionTransforms",
    "CopyPaste",
    "build_detection_transforms",
    "eval_transforms",
    "lsj_transforms",
    "to_tv_target",
    "train_transforms",
]


def to_tv_target(boxes: Tensor, labels: Tensor, size: tuple[int, int], masks: Tensor | None = None) -> dict[str, Any]:
    """A target of plain tensors as ``tv_tensors`` (boxes XYXY on a canvas of ``size`` = (H, W))."""
    target: dict[str, Any] = {
        "boxes": tv_tensors.BoundingBoxes(boxes.float().reshape(-1, 4), format="XYXY", canvas_size=size),
        "labels": labels.long(),
    }
    if masks is not None:
        target["masks"] = tv_tensors.Mask(masks.to(torch.uint8))
    return target


def _plain(target: dict[str, Any]) -> dict[str, Any]:
    """tv_tensors back to plain tensors (what torchvision's detectors take)."""
    out = dict(target)
    out["boxes"] = target["boxes"].as_subclass(Tensor).float()
    if "masks" in target:
        out["masks"] = target["masks"].as_subclass(Tensor).to(torch.uint8)
    return out


def _keep(target: dict[str, Any], keep: Tensor) -> dict[str, Any]:
    out = dict(target)
    for key in ("boxes", "labels", "masks"):
        if key in out:
            out[key] = out[key][keep]
    return out


class DetectionTransforms:
    """A seeded v2 pipeline ending in a float image and plain-tensor target.

    Args:
        transforms: v2 transforms applied to ``(image, target)``.
        recompute_boxes: after the transforms, set each box to the tight box
            of its mask (needs masks; for crops that cut objects).
        min_box_size: instances whose box is smaller than this (pixels, either
            side) after the transforms are dropped.
    """

    def __init__(self, transforms: Sequence[Any] = (), recompute_boxes: bool = False, min_box_size: float = 1.0):
        self.pipeline = v2.Compose(list(transforms)) if transforms else None
        self.recompute_boxes = recompute_boxes
        self.min_box_size = float(min_box_size)

    def apply_geometry(
        self, image: tv_tensors.Image, target: dict[str, Any], rng: np.random.Generator
    ) -> tuple[tv_tensors.Image, dict[str, Any]]:
        """The v2 transforms only (uint8 image, tv_tensors target), seeded from ``rng``."""
        if self.pipeline is None:
            return image, target
        seed = int(rng.integers(0, 2**62))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            image, target = self.pipeline(image, target)
        return image, target

    def finish(self, image: Tensor, target: dict[str, Any]) -> tuple[Tensor, dict[str, Any]]:
        """Recompute boxes from masks if asked, drop tiny or empty instances, float image in [0, 1]."""
        target = _plain(target)
        if self.recompute_boxes and "masks" in target:
            target["boxes"] = boxes_from_masks(target["masks"])
        boxes = target["boxes"]
        keep = ((boxes[:, 2] - boxes[:, 0]) >= self.min_box_size) & ((boxes[:, 3] - boxes[:, 1]) >= self.min_box_size)
        if "masks" in target:
            keep &= target["masks"].bool().flatten(1).any(dim=1)
        target = _keep(target, keep)
        image = v2.functional.to_dtype(image.as_subclass(Tensor), torch.float32, scale=True)
        return image, target

    def __call__(
        self, image: tv_tensors.Image, target: dict[str, Any], rng: np.random.Generator
    ) -> tuple[Tensor, dict[str, Any]]:
        image, target = self.apply_geometry(image, target, rng)
        return self.finish(image, target)


def build_detection_transforms(kind: str = "eval", **kwargs: Any) -> DetectionTransforms:
    """A detection pipeline by name (module doc): the registered builder of ``kind`` called with ``kwargs``.

    Args:
        kind: ``"eval"``, ``"train"`` or ``"lsj"`` (any name registered with
            ``register_transform(name, task="detection")``).
        kwargs: the builder's arguments (:func:`eval_transforms`,
            :func:`train_transforms`, :func:`lsj_transforms`).

    Raises:
        ValueError: unknown kind or key, naming the allowed ones.
    """
    return build_transforms({"kind": kind, **kwargs}, task="detection")


def _check_flip(flip_prob: float) -> None:
    if not 0.0 <= flip_prob <= 1.0:
        raise ValueError(f"flip_prob must be in [0, 1], got {flip_prob}")


@register_transform("eval", task="detection")
def eval_transforms(min_box_size: float = 0.0) -> DetectionTransforms:
    """Nothing geometric: predictions come back in the image's own pixels (module doc)."""
    return DetectionTransforms((), min_box_size=min_box_size)


@register_transform("train", task="detection")
def train_transforms(
    scales: Sequence[int] | None = None, max_size: int = 1333, flip_prob: float = 0.5, min_box_size: float = 1.0
) -> DetectionTransforms:
    """Multi-scale shortest-side resize and horizontal flip.

    Args:
        scales: shortest-side sizes drawn per image (None: no resize).
        max_size: cap of the longer side.
        flip_prob: horizontal flip probability.
        min_box_size: drop instances smaller than this after the transforms.
    """
    _check_flip(flip_prob)
    ops: list[Any] = []
    if scales:
        ops.append(v2.RandomShortestSize(list(scales), max_size=max_size))
    ops.append(v2.RandomHorizontalFlip(flip_prob))
    return DetectionTransforms(ops, min_box_size=min_box_size)


@register_transform("lsj", task="detection")
def lsj_transforms(
    size: int = 1024,
    scale_range: Sequence[float] = (0.1, 2.0),
    flip_prob: float = 0.5,
    min_box_size: float = 1.0,
) -> DetectionTransforms:
    """Large-scale jittering (Ghiasi et al., arXiv 2012.07177, Sec. 3), boxes recomputed from the masks.

    Args:
        size: the square output side (1024 in the paper).
        scale_range: the jitter range (0.1-2.0 in the paper).
        flip_prob: horizontal flip probability.
        min_box_size: drop instances smaller than this after the transforms.
    """
    _check_flip(flip_prob)
    low, high = (float(s) for s in scale_range)
    if not 0 < low <= high:
        raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {tuple(scale_range)}")
    if size < 1:
        raise ValueError(f"size must be a positive side length, got {size}")
    ops = [
        v2.ScaleJitter((size, size), scale_range=(low, high)),
        # Pad bottom/right with zeros to at least size x size, then take a random size x size window.
        _PadTo(size),
        v2.RandomCrop((size, size)),
        v2.RandomHorizontalFlip(flip_prob),
    ]
    return DetectionTransforms(ops, recompute_boxes=True, min_box_size=min_box_size)


class _PadTo(v2.Transform):
    """Pad bottom and right with zeros to at least ``size`` x ``size`` (boxes and masks follow)."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        return {"padding": [0, 0, max(self.size - width, 0), max(self.size - height, 0)]}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return v2.functional.pad(inpt, padding=params["padding"], fill=0)


class CopyPaste:
    """Simple Copy-Paste (Ghiasi et al., arXiv 2012.07177, Sec. 3) between two samples of the same size.

    Args:
        prob: probability of pasting at all.
        max_covered: box-only mode: a target box covered by more than this
            fraction of its area by pasted rectangles is removed.
    """

    def __init__(self, prob: float = 1.0, max_covered: float = 0.7) -> None:
        if not 0.0 <= prob <= 1.0:
            raise ValueError(f"copy-paste prob must be in [0, 1], got {prob}")
        self.prob = prob
        self.max_covered = max_covered

    def __call__(
        self,
        image: Tensor,
        target: dict[str, Tensor],
        src_image: Tensor,
        src_target: dict[str, Tensor],
        rng: np.random.Generator,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Float images (3, H, W) and plain targets (after ``DetectionTransforms``) -> the pasted sample."""
        if image.shape != src_image.shape:
            raise ValueError(
                f"copy-paste needs two images of one size, got {tuple(image.shape)} and {tuple(src_image.shape)}; "
                "use it after large-scale jittering (transforms kind 'lsj'), which makes every image size x size"
            )
        count = len(src_target["labels"])
        if count == 0 or rng.random() >= self.prob:
            return image, target
        chosen = torch.as_tensor(np.sort(rng.choice(count, int(rng.integers(1, count + 1)), replace=False)))
        with_masks = "masks" in target and "masks" in src_target
        if with_masks:
            pasted = src_target["masks"][chosen].bool()
            region = pasted.any(dim=0)
        else:
            pasted = None
            region = torch.zeros(image.shape[-2:], dtype=torch.bool)
            for x0, y0, x1, y1 in src_target["boxes"][chosen].round().long().tolist():
                region[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = True
        image = torch.where(region, src_image, image)
        out = dict(target)
        if with_masks:
            masks = target["masks"].bool() & ~region
            keep = masks.flatten(1).any(dim=1)
            out["masks"] = torch.cat([masks[keep], pasted]).to(torch.uint8)
            out["boxes"] = boxes_from_masks(out["masks"])
        else:
            boxes = target["boxes"]
            keep = torch.ones(len(boxes), dtype=torch.bool)
            for i, (x0, y0, x1, y1) in enumerate(boxes.round().long().tolist()):
                area = max(x1 - x0, 0) * max(y1 - y0, 0)
                covered = region[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)].sum().item()
                keep[i] = area > 0 and covered / area <= self.max_covered
            out["boxes"] = torch.cat([boxes[keep], src_target["boxes"][chosen]])
            out.pop("masks", None)
        out["labels"] = torch.cat([target["labels"][keep], src_target["labels"][chosen]])
        return image, out
