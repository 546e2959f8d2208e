"""The panoptic split of the synthetic shapes data (``msfusion.data.shapes``), for the demo and tests.

Things are the six shape classes (every visible object is one segment:
its visible mask, as the detection split); stuff is the one class
``"backdrop"`` (all pixels no object covers, one segment per image), so
there is no void and no crowd. Panoptic classes: ``["background" (unused
label 0), circle, square, triangle, star, cross, bar, backdrop]``;
the detector gets 6 classes + background, the semantic branch 1 stuff class +
"thing". ``write_shapes_panoptic`` writes a split in the COCO panoptic format
(``COCOPanoptic`` reads it back).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from msfusion.data.coco_panoptic import PanopticDataset, PanopticSample, masks_to_panoptic, write_coco_panoptic
from msfusion.data.detection_transforms import DetectionTransforms
from msfusion.data.registry import register_dataset
from msfusion.data.shapes import SHAPE_CLASSES, SHAPE_PALETTE, ShapesDataset

__all__ = ["ShapesPanoptic", "write_shapes_panoptic"]

STUFF_CLASSES = ["backdrop"]  # "background" is label 0 (torchvision's convention)


@register_dataset("shapes", task="panoptic")
class ShapesPanoptic(PanopticDataset):
    """Shapes as panoptic segmentation (module doc).

    Args:
        split, num_images, image_size, seed, max_objects, min_object_size,
            max_object_fraction: as ``ShapesDataset``.
        transforms, aug_seed: as ``PanopticDataset``.
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
        aug_seed: int | None = None,
    ) -> None:
        self.shapes = ShapesDataset(
            split=split, num_images=num_images, image_size=image_size, seed=seed, with_instances=True,
            max_objects=max_objects, min_object_size=min_object_size, max_object_fraction=max_object_fraction,
        )  # fmt: skip
        things = SHAPE_CLASSES[1:]
        super().__init__(
            things, STUFF_CLASSES, list(range(1, len(things) + len(STUFF_CLASSES) + 1)), transforms, aug_seed
        )
        self.palette = [*SHAPE_PALETTE, (96, 96, 96)]  # one colour per panoptic class; stuff in grey

    def __len__(self) -> int:
        return len(self.shapes)

    def load_panoptic(self, index: int) -> PanopticSample:
        raw = self.shapes.load(index)
        ids = masks_to_panoptic(raw.instance_masks, raw.path)
        segments = [{"id": i + 1, "label": int(lab), "iscrowd": 0} for i, lab in enumerate(raw.labels)]
        if (ids == 0).any():
            segments.append({"id": len(segments) + 1, "label": self.num_things + 1, "iscrowd": 0})
            ids[ids == 0] = len(segments)
        return PanopticSample(raw.image, ids, segments, index + 1, raw.path)


def write_shapes_panoptic(root: str | Path, **kwargs: Any) -> Path:
    """Write a ``ShapesPanoptic(**kwargs)`` split in the COCO panoptic format under ``root``; returns the JSON."""
    data = ShapesPanoptic(**kwargs)
    samples = [data.load_panoptic(i) for i in range(len(data))]
    return write_coco_panoptic(root, samples, data.classes, data.num_things, name=f"panoptic_{data.shapes.split}")
