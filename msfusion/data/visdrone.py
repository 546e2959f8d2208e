"""VisDrone-DET2019: drone images with many small objects, in the benchmark's text annotation format.

Dataset: Zhu et al., "Vision Meets Drones: A Challenge" (arXiv 1804.07437)
and "Detection and Tracking Meet Drones Challenge" (arXiv 2001.06303); FINE
(arXiv 2606.14005) Appendix E, Table 8, evaluates on it at 800x800 (AP50).

Layout: a split folder (e.g. ``VisDrone2019-DET-val``) with ``images/<name>.jpg``
and ``annotations/<name>.txt``, one object per line::

    <bbox_left>,<bbox_top>,<bbox_width>,<bbox_height>,<score>,<object_category>,<truncation>,<occlusion>

in pixels. Categories: 0 ignored region, 1 pedestrian, 2 people, 3 bicycle,
4 car, 5 van, 6 truck, 7 tricycle, 8 awning-tricycle, 9 bus, 10 motor, 11
others. How the benchmark's toolkit treats them, and so this reader:

- the 10 classes 1..10 are the labels 1..10 (``num_classes = 11`` with the
  background);
- **ignored regions (0)** and **"others" (11)** are not objects: the toolkit
  removes ground truth and detections that lie in them. Here they are
  ``ignore`` boxes, left out of training, and in the COCO ground truth
  (``coco_gt()``) crowd regions repeated for every class, so that COCO
  evaluation ignores a detection of any class that lies inside one
  (pycocotools scores a detection against a crowd region by the fraction of
  the detection inside it; at AP50 this is the toolkit's "half inside" rule);
- a ground-truth **score of 0** marks a box the toolkit ignores for its own
  class: an ``ignore`` box of that class;
- truncation and occlusion are kept in ``self.attributes`` (per image,
  (N, 2) int) but not used.

A line that does not have 8 comma-separated fields (a trailing comma is
allowed, as some files have), a category outside 0..11 or a non-number is an
error naming the file and line. Boxes of zero width or height exist in the
released annotations; they are dropped and counted in ``self.skipped``.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from msfusion.data.detection import DetectionDataset, DetectionSample
from msfusion.data.detection_transforms import DetectionTransforms
from msfusion.data.image_io import IMAGE_SUFFIXES, read_image

__all__ = ["VisDroneDetection", "VISDRONE_CLASSES", "parse_visdrone_annotation"]

VISDRONE_CLASSES = [
    "background", "pedestrian", "people", "bicycle", "car", "van", "truck", "tricycle", "awning-tricycle", "bus",
    "motor",
]  # fmt: skip
IGNORED_REGION, OTHERS = 0, 11
NUM_FIELDS = 8


def parse_visdrone_annotation(path: str | Path) -> np.ndarray:
    """Read one annotation file -> (N, 8) float64 rows ``[x, y, w, h, score, category, truncation, occlusion]``.

    Raises:
        ValueError: a line with the wrong number of fields, a value that is not
            a number, or a category outside 0..11, naming the file and line.
    """
    path = Path(path)
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        fields = [f.strip() for f in line.split(",")]
        if fields and fields[-1] == "":
            fields = fields[:-1]  # a trailing comma, as in some released files
        if len(fields) != NUM_FIELDS:
            raise ValueError(
                f"{path}, line {number}: expected {NUM_FIELDS} comma-separated fields (x, y, width, height, score, "
                f"category, truncation, occlusion), got {len(fields)}: {line!r}"
            )
        try:
            values = [float(f) for f in fields]
        except ValueError as err:
            raise ValueError(f"{path}, line {number}: not a number in {line!r} ({err})") from err
        if values[5] not in range(IGNORED_REGION, OTHERS + 1):
            raise ValueError(f"{path}, line {number}: category {fields[5]} is not one of 0..11 in {line!r}")
        rows.append(values)
    return np.asarray(rows, dtype=np.float64).reshape(-1, NUM_FIELDS)


class VisDroneDetection(DetectionDataset):
    """VisDrone-DET (module doc).

    Args:
        root: the split folder holding ``images/`` and ``annotations/``.
        transforms, aug_seed: as ``DetectionDataset``.
        images, annotations: override the two sub-folders.
    """

    def __init__(
        self,
        root: str | Path,
        transforms: DetectionTransforms | Mapping[str, Any] | None = None,
        aug_seed: int | None = None,
        images: str | Path | None = None,
        annotations: str | Path | None = None,
    ) -> None:
        super().__init__(VISDRONE_CLASSES, range(len(VISDRONE_CLASSES)), transforms, False, aug_seed)
        self.root = Path(root)
        self.images_dir = Path(images) if images is not None else self.root / "images"
        self.annotations_dir = Path(annotations) if annotations is not None else self.root / "annotations"
        for folder, what in ((self.images_dir, "image"), (self.annotations_dir, "annotation")):
            if not folder.is_dir():
                raise FileNotFoundError(f"VisDrone {what} folder not found: {folder}")
        self.files = sorted(p for p in self.images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {self.images_dir}")
        missing = [p.name for p in self.files if not (self.annotations_dir / f"{p.stem}.txt").is_file()]
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} images have no annotation file in {self.annotations_dir}, e.g. {missing[0]} "
                f"(expected {Path(missing[0]).stem}.txt)"
            )
        self.skipped: set[str] = set()
        self.attributes: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> DetectionSample:
        path = self.files[index]
        image = read_image(path)
        height, width = image.shape[:2]
        ann_path = self.annotations_dir / f"{path.stem}.txt"
        rows = parse_visdrone_annotation(ann_path)
        empty = (rows[:, 2] <= 0) | (rows[:, 3] <= 0)
        if empty.any():
            self.skipped.update(f"{ann_path.name}: zero-size box {row[:4].tolist()}" for row in rows[empty])
            warnings.warn(f"{ann_path}: dropped {int(empty.sum())} zero-size boxes", stacklevel=2)
        rows = rows[~empty]
        category = rows[:, 5].astype(np.int64)
        region = (category == IGNORED_REGION) | (category == OTHERS)
        objects = rows[~region]
        regions = rows[region]
        num_labels = len(VISDRONE_CLASSES) - 1
        # A region ignores detections of every class: one crowd box per class (module doc).
        boxes = np.concatenate([objects[:, :4], np.repeat(regions[:, :4], num_labels, axis=0)])
        labels = np.concatenate([objects[:, 5], np.tile(np.arange(1, num_labels + 1), len(regions))])
        ignore = np.concatenate([objects[:, 4] == 0, np.ones(len(regions) * num_labels, dtype=bool)])
        xyxy = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:4]], axis=1)
        xyxy[:, 0::2] = xyxy[:, 0::2].clip(0, width)
        xyxy[:, 1::2] = xyxy[:, 1::2].clip(0, height)
        self.attributes[index] = objects[:, 6:8].astype(np.int64)
        return DetectionSample(
            image, xyxy.astype(np.float32), labels.astype(np.int64), None, image_id=index + 1, path=str(path),
            ignore=ignore,
        )  # fmt: skip
