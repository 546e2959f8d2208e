"""Semantic segmentation data: the sample contract, file-backed datasets and batching.

``dataset[i]`` returns a dict (the engine relies on it):

- ``"image"``: ``(3, H, W)`` float32 tensor, normalised by the transforms;
- ``"mask"``: ``(H, W)`` int64 tensor of train ids, 255 = ignore;
- ``"path"``: the image file, or ``"shapes/<split>/<i>"`` for synthetic data;
- with instances (``ShapesDataset(with_instances=True)``): ``"instance_masks"``
  ``(N, H, W)`` bool (visible parts, in the transformed geometry), ``"labels"``
  ``(N,)`` int64 and ``"boxes"`` ``(N, 4)`` float32 xyxy computed from those
  masks after the transforms (``boxes_from_masks``, pixel-edge coordinates),
  so crops and flips never leave stale boxes.

Each dataset has ``classes``, ``palette``, ``num_classes``, ``ignore_index``
(255) and ``load_raw(i) -> (image (H, W, 3) uint8, mask (H, W) uint8)``.

Transforms, ``aug_seed`` / ``set_epoch`` and the ``load(index)`` hook are
those of ``msfusion.data.base_dataset.BaseDataset``, the base of every task's
datasets. ``collate_segmentation`` batches samples for a DataLoader.
"""

from __future__ import annotations

import warnings
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F

from msfusion.data.base_dataset import BaseDataset, boxes_from_masks
from msfusion.data.image_io import read_image, read_label
from msfusion.data.label_maps import IGNORE_INDEX, INVALID, InvalidSampleError, apply_table
from msfusion.data.segmentation_transforms import Transform

__all__ = [
    "BadFilePolicy",
    "FileSegmentationDataset",
    "PublicSegmentationDataset",
    "RawSample",
    "SamplePaths",
    "SegmentationDataset",
    "collate_segmentation",
]

Color = tuple[int, int, int]
BadFilePolicy = Literal["raise", "skip"]


@dataclass
class RawSample:
    """One sample before transforms.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB.
        mask: ``(H, W)`` uint8 train ids, 255 = ignore.
        path: Image file or synthetic id.
        instance_masks: Optional ``(N, H, W)`` bool visible instance masks.
        labels: Optional ``(N,)`` int64 class of each instance.
    """

    image: np.ndarray
    mask: np.ndarray
    path: str
    instance_masks: np.ndarray | None = None
    labels: np.ndarray | None = None


class SegmentationDataset(BaseDataset):
    """Base of the segmentation datasets: applies transforms and returns the contract (module doc).

    Subclasses implement ``__len__`` and ``load(index) -> RawSample``.

    Args:
        classes: Class names, index = train id.
        palette: One RGB colour per class, for drawing.
        transforms: ``(sample, rng) -> sample`` ending in tensors (see
            ``msfusion.data.segmentation_transforms``), or a dict naming a
            pipeline registered for ``"segmentation"`` (``{"type": "train",
            "crop_size": 512}``); None normalises and converts only.
        aug_seed: Seed for reproducible augmentation, see the module doc.
    """

    transforms_task = "segmentation"
    ignore_index: int = IGNORE_INDEX

    def __init__(
        self,
        classes: Sequence[str],
        palette: Sequence[Sequence[int]],
        transforms: Transform | Mapping[str, Any] | None = None,
        aug_seed: int | None = None,
    ) -> None:
        if len(palette) != len(classes):
            raise ValueError(f"{len(classes)} classes but {len(palette)} palette colours")
        super().__init__(classes, transforms, aug_seed)
        self.palette: list[Color] = [tuple(int(c) for c in color) for color in palette]

    @abstractmethod
    def load(self, index: int) -> RawSample:
        """The raw sample at ``index`` (image, mask in train ids, paths)."""

    def load_raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``(H, W, 3)`` uint8 and mask ``(H, W)`` uint8 (train ids) without transforms.

        Bad files are handled as in ``__getitem__`` (raise, or the next valid
        sample with ``on_bad_file="skip"``).
        """
        sample = self.load(self._check_index(index))
        return sample.image, sample.mask

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        raw = self.load(index)
        sample: dict[str, Any] = {"image": raw.image, "mask": raw.mask}
        if raw.instance_masks is not None:
            sample["instance_masks"] = raw.instance_masks
            sample["labels"] = raw.labels
        try:
            out = self.transforms(sample, self._rng(index))
        except (ValueError, TypeError) as error:
            # The transforms see arrays, not files: name the file here (e.g. a resize to a 0-pixel side).
            raise InvalidSampleError(f"{raw.path}: {error}", raw.path) from error
        if not isinstance(out.get("image"), torch.Tensor):
            raise TypeError("transforms must end with ToTensor() (see msfusion.data.segmentation_transforms)")
        if "instance_masks" in out:
            visible = out["instance_masks"].flatten(1).any(dim=1)
            out["instance_masks"] = out["instance_masks"][visible]
            out["labels"] = out["labels"][visible]
            out["boxes"] = boxes_from_masks(out["instance_masks"])
        out["path"] = raw.path
        return out


@dataclass(frozen=True)
class SamplePaths:
    """Files of one sample and how to read its labels.

    Attributes:
        image: Image file.
        label: Label image file.
        table: ``(256,)`` raw value -> train id table (``msfusion.data.label_maps``).
    """

    image: Path
    label: Path
    table: np.ndarray


class FileSegmentationDataset(SegmentationDataset):
    """A dataset of (image file, label file) pairs, checked as they are read.

    Every read checks that the image decodes, that the label values are valid
    for the format (through ``SamplePaths.table``) and that image and label
    have the same size; a failure raises :class:`InvalidSampleError` naming
    the file. With ``on_bad_file="skip"`` the failure is warned about once
    and the next valid sample is returned instead.

    Args:
        samples: The pairs, in dataset order.
        classes: Class names.
        palette: Class colours.
        transforms: See :class:`SegmentationDataset`.
        on_bad_file: ``"raise"`` or ``"skip"``.
        aug_seed: See :class:`SegmentationDataset`.
        label_colors: Colour table used to decode RGB label images, or None
            to reject them.
    """

    def __init__(
        self,
        samples: Sequence[SamplePaths],
        classes: Sequence[str],
        palette: Sequence[Sequence[int]],
        transforms: Transform | None = None,
        on_bad_file: BadFilePolicy = "raise",
        aug_seed: int | None = None,
        label_colors: Sequence[Sequence[int]] | None = None,
    ) -> None:
        super().__init__(classes, palette, transforms, aug_seed)
        if on_bad_file not in ("raise", "skip"):
            raise ValueError(f"on_bad_file must be 'raise' or 'skip', got {on_bad_file!r}")
        self.samples = list(samples)
        self.on_bad_file = on_bad_file
        self.label_colors = label_colors
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.samples)

    def read_checked(self, index: int) -> RawSample:
        """Read sample ``index`` and check it, raising :class:`InvalidSampleError`."""
        paths = self.samples[index]
        image = read_image(paths.image)
        raw_label = read_label(paths.label, self.label_colors)
        if raw_label.shape != image.shape[:2]:
            raise InvalidSampleError(
                f"image {paths.image} is {image.shape[0]}x{image.shape[1]} (HxW) but its "
                f"label {paths.label} is {raw_label.shape[0]}x{raw_label.shape[1]}",
                str(paths.label),
            )
        mask = apply_table(raw_label, paths.table, str(paths.label))
        return RawSample(image=image, mask=mask, path=str(paths.image))

    def _raw_histogram(self, index: int) -> np.ndarray | None:
        """Counts of the 256 raw label values of sample ``index`` (None for a skipped bad file)."""
        paths = self.samples[index]
        try:
            raw = read_label(paths.label, self.label_colors)
            apply_table(raw, paths.table, str(paths.label))  # validates, naming the file
        except InvalidSampleError:
            if self.on_bad_file == "raise":
                raise
            return None
        return np.bincount(raw.ravel(), minlength=256)[:256]

    def label_counts(self) -> dict[str, Any]:
        """One pass over the label files (read only, in threads): what the split's masks hold.

        Returns:
            ``{"pixels": (K,) int64 labelled pixels per train id, "ignored": int,
            "raw": (256,) int64 counts of the stored values, "files": int}``.
        """
        raw = np.zeros(256, dtype=np.int64)
        pixels = np.zeros(self.num_classes, dtype=np.int64)
        ignored = files = 0
        with ThreadPoolExecutor(max_workers=4) as pool:  # PIL decodes without the GIL
            for index, hist in enumerate(pool.map(self._raw_histogram, range(len(self)))):
                if hist is None:
                    continue
                files += 1
                raw += hist
                table = self.samples[index].table
                for value in np.flatnonzero(hist):
                    train_id = int(table[value])
                    if train_id == IGNORE_INDEX:
                        ignored += int(hist[value])
                    elif train_id != INVALID:
                        pixels[train_id] += int(hist[value])
        return {"pixels": pixels, "ignored": ignored, "raw": raw, "files": files}

    def check_labels(self, split: str = "this split") -> dict[str, Any]:
        """Fail when no pixel of the split is labelled; warn about classes with no labelled pixel.

        Masks stored as 0/255 for a two-class dataset (255 would be read as
        "ignore", training background only) are named as such, with the fix.

        Args:
            split: how to name the split in messages, e.g. ``"data.train"``.

        Returns:
            :meth:`label_counts`.

        Raises:
            ValueError: every pixel is ignored, or the 0/255 binary case.
        """
        counts = self.label_counts()
        pixels, raw = counts["pixels"], counts["raw"]
        where = f"{split} ({counts['files']} label files of {type(self).__name__})"
        stored = np.flatnonzero(raw).tolist()
        absent = [self.classes[i] for i in np.flatnonzero(pixels == 0)]
        if stored and set(stored) <= {0, 255} and len(stored) == 2 and absent and self.num_classes == 2:
            raise ValueError(
                f"{where}: the masks hold only the values 0 and 255, and 255 means 'ignore', so class "
                f"{absent[0]!r} has no labelled pixel and the model would learn {self.classes[0]!r} only. If 255 "
                f"marks {self.classes[1]!r}, give the dataset value_map: {{0: 0, 255: 1}}; if the masks number the "
                "classes from 1 with 0 = 'other', give it reduce_zero_label: true."
            )
        if pixels.sum() == 0:
            shown = ", ".join(str(v) for v in stored[:10])
            raise ValueError(
                f"{where}: every pixel is ignored (stored values: {shown}), so there is nothing to learn or score. "
                "Check that the masks hold train ids 0..K-1 (255 = ignore), or map their values with the "
                "dataset's value_map / reduce_zero_label options."
            )
        if absent:
            warnings.warn(
                f"{where}: {len(absent)} of {self.num_classes} classes have no labelled pixel: "
                f"{', '.join(absent[:10])}{', ...' if len(absent) > 10 else ''} (their IoU will be n/a)",
                stacklevel=2,
            )
        return counts

    def load(self, index: int) -> RawSample:
        if self.on_bad_file == "raise":
            return self.read_checked(index)
        for offset in range(len(self)):
            candidate = (index + offset) % len(self)
            if candidate in self._bad:
                continue
            try:
                return self.read_checked(candidate)
            except InvalidSampleError as error:
                self._bad.add(candidate)
                warnings.warn(f"skipping bad sample {candidate}: {error}", stacklevel=3)
        raise InvalidSampleError(f"every one of the {len(self)} samples is bad", "")


class PublicSegmentationDataset(FileSegmentationDataset):
    """A public benchmark in its published folder layout, built from ``root`` and ``split``.

    Subclasses name the classes and colours and say where a split's samples are
    (:meth:`find_samples`); reading, checking and augmentation are
    :class:`FileSegmentationDataset`'s.

    Args:
        root: The dataset folder (the subclass documents its layout; the usual parent folders are searched).
        split: A split of the dataset, e.g. ``"train"`` or ``"val"``.
        transforms: ``(sample, rng) -> sample``; None normalises only.
        on_bad_file: ``"raise"`` or ``"skip"`` bad samples.
        aug_seed: Seed for reproducible augmentation.
    """

    CLASSES: ClassVar[Sequence[str]]
    PALETTE: ClassVar[Sequence[Sequence[int]]]
    # Colour table for RGB label images (iSAID's unconverted masks); None rejects them.
    LABEL_COLORS: ClassVar[Sequence[Sequence[int]] | None] = None

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transforms: Transform | None = None,
        on_bad_file: BadFilePolicy = "raise",
        aug_seed: int | None = None,
    ) -> None:
        root, split, samples = self.find_samples(root, split)
        super().__init__(
            samples, self.CLASSES, self.PALETTE, transforms, on_bad_file, aug_seed, label_colors=self.LABEL_COLORS
        )
        self.root = root
        self.split = split

    @classmethod
    @abstractmethod
    def find_samples(cls, root: str | Path, split: str) -> tuple[Path, str, list[SamplePaths]]:
        """The dataset folder found from ``root``, the split's own name and its samples, in dataset order.

        Raises ``FileNotFoundError`` with the expected layout when a folder or file is missing.
        """


_INSTANCE_KEYS = ("instance_masks", "labels", "boxes")


def collate_segmentation(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Batch samples of the segmentation contract for a DataLoader.

    Images and masks of different sizes are padded bottom-right to the
    largest (images with 0, i.e. the mean colour after normalisation; masks
    with the ignore index 255), each to its own largest size.

    Returns:
        ``"image"`` ``(B, 3, H, W)``, ``"mask"`` ``(B, H, W)``, ``"path"``
        list of str, and when present ``"instance_masks"``, ``"labels"``,
        ``"boxes"`` as lists (one tensor per sample, N varies).
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    out: dict[str, Any] = {
        "image": _pad_stack([s["image"] for s in batch], 0.0),
        "mask": _pad_stack([s["mask"] for s in batch], IGNORE_INDEX),
        "path": [s["path"] for s in batch],
    }
    for key in _INSTANCE_KEYS:
        if key in batch[0]:
            out[key] = [s[key] for s in batch]
    return out


def _pad_stack(tensors: Sequence[torch.Tensor], value: float) -> torch.Tensor:
    height = max(t.shape[-2] for t in tensors)
    width = max(t.shape[-1] for t in tensors)
    padded = [F.pad(t, (0, width - t.shape[-1], 0, height - t.shape[-2]), value=value) for t in tensors]
    return torch.stack(padded)
