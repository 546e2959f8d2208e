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

Every annotation file is read and checked when the dataset is built. A line
that does not have 8 comma-separated fields (a trailing comma is allowed, as
some files have), a category outside 0..11 or a non-number is an error
naming the file and line. So is a box that lies entirely outside its image
(read from the image file's header): clipped to the image it would become a
zero-size ground-truth box, never detectable but scored as a miss; with
``on_bad_annotation="skip"`` such lines are dropped and counted in
``self.skipped``. Boxes partly outside are clipped to the image. Boxes of
zero width or height exist in the released annotations; they are dropped,
counted in ``self.skipped`` and reported in one warning.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from msfusion.data.coco_detection import POLICIES, BadAnnotationError
from msfusion.data.detection import DetectionDataset, DetectionSample
from msfusion.data.detection_transforms import DetectionTransforms
from msfusion.data.image_io import IMAGE_SUFFIXES, read_image
from msfusion.data.registry import register_dataset

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
    return _parse_lines(Path(path))[0]


def _parse_lines(path: Path) -> tuple[np.ndarray, list[int]]:
    """``parse_visdrone_annotation`` and the 1-based line number of each row."""
    rows, numbers = [], []
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
        numbers.append(number)
    return np.asarray(rows, dtype=np.float64).reshape(-1, NUM_FIELDS), numbers


@register_dataset("visdrone", task="detection")
class VisDroneDetection(DetectionDataset):
    """VisDrone-DET (module doc).

    Args:
        root: the split folder holding ``images/`` and ``annotations/``.
        transforms, aug_seed: as ``DetectionDataset``.
        images, annotations: override the two sub-folders.
        on_bad_annotation: ``"raise"`` or ``"skip"`` a box entirely outside its image (module doc).
    """

    def __init__(
        self,
        root: str | Path,
        transforms: DetectionTransforms | Mapping[str, Any] | None = None,
        aug_seed: int | None = None,
        images: str | Path | None = None,
        annotations: str | Path | None = None,
        on_bad_annotation: str = "raise",
    ) -> None:
        if on_bad_annotation not in POLICIES:
            raise ValueError(f"on_bad_annotation must be one of {POLICIES}, got {on_bad_annotation!r}")
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
        self.on_bad_annotation = on_bad_annotation
        self.skipped: list[str] = []
        self.records = [self._parse(path) for path in self.files]
        self.attributes = {i: rec["attributes"] for i, rec in enumerate(self.records)}
        zero = sum(s.startswith("zero-size") for s in self.skipped)
        if self.skipped:
            warnings.warn(
                f"{self.annotations_dir}: dropped {zero} zero-size boxes and {len(self.skipped) - zero} boxes "
                f"outside their image; first: {self.skipped[0]}",
                stacklevel=2,
            )

    def _parse(self, path: Path) -> dict[str, Any]:
        """The boxes of one image, checked against the image's size."""
        ann_path = self.annotations_dir / f"{path.stem}.txt"
        rows, numbers = _parse_lines(ann_path)
        with Image.open(path) as image:
            width, height = image.size
        keep = np.ones(len(rows), dtype=bool)
        for k, (row, number) in enumerate(zip(rows, numbers, strict=True)):
            x, y, w, h = row[:4]
            if w <= 0 or h <= 0:
                keep[k] = False
                self.skipped.append(f"zero-size box {row[:4].tolist()} in {ann_path.name}, line {number}")
            elif x >= width or y >= height or x + w <= 0 or y + h <= 0:
                keep[k] = False
                message = (
                    f"{ann_path}, line {number}: box (left, top, width, height) = {row[:4].tolist()} lies entirely "
                    f"outside the {width}x{height} image {path.name}; it would be a zero-size ground truth, scored "
                    "but never detectable. Fix the line (or the image), or pass on_bad_annotation='skip' to drop "
                    "such boxes"
                )
                if self.on_bad_annotation == "raise":
                    raise BadAnnotationError(message)
                self.skipped.append(message)
        rows = rows[keep]
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
        return {
            "boxes": xyxy.astype(np.float32),
            "labels": labels.astype(np.int64),
            "ignore": ignore,
            "size": (height, width),
            "attributes": objects[:, 6:8].astype(np.int64),
        }

    def __len__(self) -> int:
        return len(self.files)

    def load(self, index: int) -> DetectionSample:
        path, rec = self.files[index], self.records[index]
        image = read_image(path)
        if image.shape[:2] != rec["size"]:
            raise BadAnnotationError(
                f"{path}: the image is {image.shape[1]}x{image.shape[0]} but was "
                f"{rec['size'][1]}x{rec['size'][0]} when the dataset was built; the file changed since"
            )
        return DetectionSample(
            image, rec["boxes"], rec["labels"], None, image_id=index + 1, path=str(path), ignore=rec["ignore"]
        )  # fmt: skip
