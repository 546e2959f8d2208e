"""The base of every msfusion dataset (segmentation, detection, panoptic) and the boxes of masks.

A dataset subclass implements ``__len__`` and one loading hook,
``load(index)``, which returns the sample before transforms (a
``RawSample`` for segmentation, a ``DetectionSample`` for detection and
panoptic); its ``__getitem__`` applies the transforms and returns the
sample contract of its task (``msfusion.data.segmentation``,
``msfusion.data.detection``).

What the base holds for every task:

- ``classes`` and ``num_classes``;
- ``transforms``: a callable, or a dict ``{"type": name, **kwargs}`` (or
  ``"kind"``) naming a pipeline registered for the dataset's
  ``transforms_task`` in ``msfusion.data.registry``; None is the ``"eval"``
  pipeline of that task;
- augmentation randomness from a per-sample ``numpy.random.Generator``:
  seeded from ``(aug_seed, epoch, index)`` when the dataset has an
  ``aug_seed`` (call ``set_epoch`` every epoch, before creating the
  DataLoader iterator), so image ``i`` of epoch ``e`` is augmented
  identically in every run and with any worker count; from torch's RNG
  otherwise (reproducible under ``torch.manual_seed``, with DataLoader
  workers seeded by torch as usual).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from msfusion.data.registry import build_transforms

__all__ = ["BaseDataset", "boxes_from_masks"]


def boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """Tight XYXY boxes of masks, in pixel-edge coordinates.

    An instance covering columns ``x0..x1`` and rows ``y0..y1`` gets the box
    ``(x0, y0, x1 + 1, y1 + 1)``, so a one-pixel object still has a positive
    area (torchvision's detectors reject empty boxes).

    An **empty mask gets the zero box** ``(0, 0, 0, 0)``: it has zero width
    and height, so every caller drops it with the instance (the detection
    transforms drop boxes below ``min_box_size`` and masks with no pixel;
    the segmentation datasets keep only visible instances before calling;
    the COCO panoptic writer stores the zero box of an empty segment as
    ``bbox [0, 0, 0, 0]``, as COCO does). It is never a full-image box.

    Args:
        masks: ``(N, H, W)`` masks, bool or integer (non-zero = inside).

    Returns:
        ``(N, 4)`` float32 ``x_min, y_min, x_max, y_max``.
    """
    if masks.shape[0] == 0:
        return torch.zeros((0, 4), dtype=torch.float32)
    masks = masks.bool()
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    height, width = masks.shape[1:]
    y_min = rows.to(torch.uint8).argmax(dim=1)
    y_max = height - rows.flip(1).to(torch.uint8).argmax(dim=1)
    x_min = cols.to(torch.uint8).argmax(dim=1)
    x_max = width - cols.flip(1).to(torch.uint8).argmax(dim=1)
    boxes = torch.stack([x_min, y_min, x_max, y_max], dim=1).to(torch.float32)
    # argmax of an all-False row is 0, which would give (0, 0, W, H): zero the boxes of empty masks instead.
    return boxes * masks.flatten(1).any(dim=1, keepdim=True)


class BaseDataset(Dataset, ABC):
    """Base of all msfusion datasets: classes, transforms, seeded augmentation, one loading hook.

    Subclasses implement ``__len__``, ``load(index)`` (the sample without
    transforms) and ``__getitem__`` (the task's sample contract).

    Args:
        classes: Class names, index = label.
        transforms: A callable pipeline, a dict naming a registered one, or
            None for the ``"eval"`` pipeline (module doc).
        aug_seed: Seed for reproducible augmentation (module doc).
    """

    #: The task of ``msfusion.data.registry`` whose pipelines a ``transforms`` dict names.
    transforms_task: ClassVar[str]

    def __init__(self, classes: Sequence[str], transforms: Any = None, aug_seed: int | None = None) -> None:
        self.classes: list[str] = list(classes)
        self.transforms = self._build_transforms(transforms)
        self.aug_seed = aug_seed
        self.epoch = 0

    def _build_transforms(self, spec: Any) -> Any:
        if spec is None:
            return build_transforms({}, self.transforms_task, default="eval")
        if isinstance(spec, Mapping):
            return build_transforms(spec, self.transforms_task, default="eval")
        if not callable(spec):
            raise TypeError(f"transforms must be a callable pipeline or a dict, got {type(spec).__name__}")
        return spec

    @property
    def num_classes(self) -> int:
        """Number of classes (``len(classes)``)."""
        return len(self.classes)

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def load(self, index: int) -> Any:
        """The sample at ``index`` without transforms (``0 <= index < len(self)``)."""

    @abstractmethod
    def __getitem__(self, index: int) -> dict[str, Any]: ...

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch`` (used with ``aug_seed``)."""
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        if self.aug_seed is not None:
            return np.random.default_rng([self.aug_seed, self.epoch, index])
        return np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))

    def _check_index(self, index: int) -> int:
        length = len(self)
        if not -length <= index < length:
            raise IndexError(f"index {index} out of range for a dataset of {length} samples")
        return index % length

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_samples={len(self)}, num_classes={self.num_classes})"
