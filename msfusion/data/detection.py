"""Detection datasets: the sample contract, the synthetic shapes split and batching.

A detection dataset returns, per index::

    {"image": (3, H, W) float32 in [0, 1] (not normalised: the detector does it),
     "target": {"boxes": (N, 4) float32 XYXY pixels, "labels": (N,) int64 in 1..K,
                "masks": (N, H, W) uint8 (when the dataset has masks), "image_id": int},
     "image_id": int, "path": str}

``classes[0]`` is ``"background"`` and ``num_classes = K + 1`` (torchvision's
convention, what ``build_detector`` takes). ``label_to_category[label]`` is
the annotation file's category id of a label (COCO's ids 1..90 are not
contiguous), and ``coco_gt()`` is the ground truth as a pycocotools ``COCO``
object in those ids and the images' own pixels, which the COCO evaluation
scores against.

``ShapesDetection`` is the detection split of the synthetic shapes data
(``msfusion.data.shapes``): every visible object is an instance with its
visible mask and the tight box of that mask.
"""

from __future__ import annotations

import contextlib
import io
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchvision import tv_tensors

from msfusion.data.base_dataset import BaseDataset, boxes_from_masks
from msfusion.data.detection_transforms import CopyPaste, DetectionTransforms, to_tv_target
from msfusion.data.registry import register_dataset

__all__ = [
    "DetectionSample",
    "DetectionDataset",
    "ShapesDetection",
    "collate_detection",
    "coco_gt_from_samples",
]


@dataclass
class DetectionSample:
    """One image and its annotations before transforms.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        boxes: (N, 4) float32 XYXY in pixels.
        labels: (N,) int64 in 1..K.
        masks: (N, H, W) bool, or None.
        image_id: the annotation file's image id.
        path: the image file (or a synthetic id).
        ignore: (N,) bool, instances to leave out of training but not count
            as misses in evaluation (COCO crowds, VOC "difficult"); None: none.
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None
    image_id: int
    path: str
    ignore: np.ndarray | None = None


class DetectionDataset(BaseDataset):
    """Base of the detection datasets: transforms, copy-paste, the sample contract, COCO ground truth.

    Subclasses implement ``__len__`` and ``load(index) -> DetectionSample``.
    ``num_classes`` counts the background (``build_detector``'s ``num_classes``).

    Args:
        classes: names with ``"background"`` first.
        label_to_category: category id of each label (index 0 unused).
        transforms: a ``DetectionTransforms`` or ``{"kind": ..., **kwargs}``
            naming a pipeline registered for ``"detection"`` (``"eval"``,
            ``"train"``, ``"lsj"``); None: the eval pipeline.
        copy_paste: paste objects of a second random sample (``True``, a
            probability, or ``{"prob": p, "max_covered": f}``); needs
            same-size samples, i.e. the ``"lsj"`` transforms.
        aug_seed: augmentation seed; with it, image ``i`` of epoch ``e`` is
            augmented identically in every run and with any worker count.
    """

    transforms_task = "detection"

    def __init__(
        self,
        classes: Sequence[str],
        label_to_category: Sequence[int],
        transforms: DetectionTransforms | Mapping[str, Any] | None = None,
        copy_paste: bool | float | Mapping[str, Any] = False,
        aug_seed: int | None = None,
    ) -> None:
        if len(classes) != len(label_to_category):
            raise ValueError(f"{len(classes)} classes but {len(label_to_category)} category ids")
        super().__init__(classes, transforms, aug_seed)
        self.label_to_category = [int(c) for c in label_to_category]
        self.copy_paste = _build_copy_paste(copy_paste)
        self._coco_gt = None

    @abstractmethod
    def load(self, index: int) -> DetectionSample:
        """The sample at ``index`` without transforms."""

    def _transformed(self, sample: DetectionSample, rng: np.random.Generator) -> tuple[torch.Tensor, dict]:
        keep = np.ones(len(sample.labels), dtype=bool) if sample.ignore is None else ~sample.ignore
        height, width = sample.image.shape[:2]
        masks = torch.from_numpy(sample.masks[keep]) if sample.masks is not None else None
        target = to_tv_target(
            torch.from_numpy(np.asarray(sample.boxes, dtype=np.float32)[keep]),
            torch.from_numpy(np.asarray(sample.labels, dtype=np.int64)[keep]),
            (height, width),
            masks,
        )
        image = tv_tensors.Image(torch.from_numpy(np.require(sample.image, requirements=["C", "W"])).permute(2, 0, 1))
        return self.transforms(image, target, rng)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = self._check_index(index)
        rng = self._rng(index)
        sample = self.load(index)
        image, target = self._transformed(sample, rng)
        if self.copy_paste is not None:
            other = int(rng.integers(0, len(self)))
            src_image, src_target = self._transformed(self.load(other), rng)
            image, target = self.copy_paste(image, target, src_image, src_target, rng)
        target["image_id"] = sample.image_id
        return {"image": image, "target": target, "image_id": sample.image_id, "path": sample.path}

    def coco_gt(self) -> Any:
        """The ground truth as a pycocotools ``COCO`` (built once from every sample)."""
        if self._coco_gt is None:
            self._coco_gt = coco_gt_from_samples(
                (self.load(i) for i in range(len(self))), self.classes, self.label_to_category
            )
        return self._coco_gt


def _build_copy_paste(spec: bool | float | Mapping[str, Any]) -> CopyPaste | None:
    if spec is False or spec is None:
        return None
    if spec is True:
        return CopyPaste()
    if isinstance(spec, (int, float)):
        return CopyPaste(prob=float(spec))
    if isinstance(spec, Mapping):
        return CopyPaste(**spec)
    raise ValueError(f"copy_paste must be true/false, a probability or a dict, got {spec!r}")


def coco_gt_from_samples(samples: Any, classes: Sequence[str], label_to_category: Sequence[int]) -> Any:
    """A pycocotools ``COCO`` of samples' boxes and masks (masks as RLE; ignored instances as crowds)."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    images, annotations = [], []
    for sample in samples:
        height, width = sample.image.shape[:2]
        images.append(
            {"id": int(sample.image_id), "width": int(width), "height": int(height), "file_name": sample.path}
        )
        for j, (box, label) in enumerate(zip(sample.boxes, sample.labels, strict=True)):
            x0, y0, x1, y1 = (float(v) for v in box)
            ann = {
                "id": len(annotations) + 1,
                "image_id": int(sample.image_id),
                "category_id": int(label_to_category[int(label)]),
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": (x1 - x0) * (y1 - y0),
                "iscrowd": int(bool(sample.ignore[j])) if sample.ignore is not None else 0,
            }
            if sample.masks is not None:
                rle = mask_utils.encode(np.asfortranarray(sample.masks[j].astype(np.uint8)))
                ann["area"] = float(mask_utils.area(rle))
                rle["counts"] = rle["counts"].decode("ascii")
                ann["segmentation"] = rle
            annotations.append(ann)
    categories = [{"id": int(c), "name": n} for n, c in zip(classes[1:], label_to_category[1:], strict=True)]
    gt = COCO()
    gt.dataset = {"images": images, "annotations": annotations, "categories": categories}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        gt.createIndex()
    return gt


@register_dataset("shapes", task="detection")
class ShapesDetection(DetectionDataset):
    """The detection split of the synthetic shapes data (``msfusion.data.shapes``).

    Args:
        split, num_images, image_size, seed, max_objects, min_object_size,
            max_object_fraction, variant: as ``ShapesDataset``.
        transforms, copy_paste, aug_seed: as ``DetectionDataset``.
    """

    def __init__(
        self,
        split: str = "train",
        num_images: int = 512,
        image_size: int | tuple[int, int] = (128, 128),
        seed: int = 0,
        max_objects: int = 8,
        min_object_size: float = 4.0,
        max_object_fraction: float = 0.6,
        transforms: DetectionTransforms | Mapping[str, Any] | None = None,
        copy_paste: bool | float | Mapping[str, Any] = False,
        aug_seed: int | None = None,
        variant: str = "default",
    ) -> None:
        from msfusion.data.shapes import SHAPE_CLASSES, ShapesDataset

        self.shapes = ShapesDataset(
            split=split,
            num_images=num_images,
            image_size=image_size,
            seed=seed,
            with_instances=True,
            max_objects=max_objects,
            min_object_size=min_object_size,
            max_object_fraction=max_object_fraction,
            variant=variant,
        )
        super().__init__(SHAPE_CLASSES, range(len(SHAPE_CLASSES)), transforms, copy_paste, aug_seed)
        self.palette = self.shapes.palette

    def __len__(self) -> int:
        return len(self.shapes)

    def load(self, index: int) -> DetectionSample:
        raw = self.shapes.load(index)
        masks = raw.instance_masks
        boxes = boxes_from_masks(torch.from_numpy(masks)).numpy()
        return DetectionSample(raw.image, boxes, raw.labels, masks, image_id=index + 1, path=raw.path)


def collate_detection(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Lists, not stacks: detection images differ in size and in their number of objects.

    Returns:
        ``{"images": [(3, H_i, W_i)], "targets": [dict], "image_id": [int], "path": [str]}``.
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    return {
        "images": [s["image"] for s in batch],
        "targets": [s["target"] for s in batch],
        "image_id": [s["image_id"] for s in batch],
        "path": [s["path"] for s in batch],
    }
