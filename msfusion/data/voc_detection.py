"""Pascal VOC detection: ``Annotations/*.xml``, ``JPEGImages/*.jpg``, ``ImageSets/Main/<split>.txt``.

The format of Everingham et al., "The PASCAL Visual Object Classes (VOC)
Challenge" (IJCV 2010): one XML file per image with ``size`` (width,
height) and ``object`` entries (``name``, ``difficult``, ``bndbox`` with
1-based, inclusive ``xmin ymin xmax ymax`` pixel indices). Boxes become
pixel-edge XYXY ``(xmin - 1, ymin - 1, xmax, ymax)``. The 20 classes get labels
1..20 in the challenge's order (category ids equal to the labels).

"Difficult" objects are left out of training and marked as crowds in the
ground truth, so the COCO evaluation neither rewards nor penalises
detections of them (as the VOC protocol ignores them).

Every XML file is read and checked when the dataset is built, and each
error names the file (and the object index):

- per file: XML that does not parse (a truncated file), entity declarations
  (``<!DOCTYPE ... <!ENTITY``: "billion laughs" bombs and external
  entities are refused before parsing, whatever the installed expat would
  do), no ``<size>``, or a size that differs from the image file's (the
  boxes were drawn on another image);
- per object: no ``<bndbox>`` or a coordinate that is not a number, a box of
  zero or negative size, a box more than 1 pixel outside the image, an
  unknown class name.

``on_bad_annotation="skip"`` drops bad objects (and unreadable files with
their image) instead, counts them in ``self.skipped`` and reports them in
one warning. Files without any object are valid but train on nothing: one
warning says how many there are.
"""

from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from msfusion.data.coco_detection import POLICIES, BadAnnotationError
from msfusion.data.detection import DetectionDataset, DetectionSample
from msfusion.data.detection_transforms import DetectionTransforms
from msfusion.data.image_io import read_image
from msfusion.data.registry import register_dataset

__all__ = ["VOCDetection", "VOC_DETECTION_CLASSES"]

VOC_DETECTION_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


@register_dataset("voc", task="detection")
class VOCDetection(DetectionDataset):
    """Pascal VOC detection (boxes only).

    Args:
        root: the ``VOCdevkit/VOC2007`` (or ``VOC2012``) folder.
        split: a file of ``ImageSets/Main`` (``train``, ``val``, ``trainval``, ``test``).
        transforms, copy_paste, aug_seed: as ``DetectionDataset``.
        on_bad_annotation: ``"raise"`` or ``"skip"`` (module doc).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "val",
        transforms: DetectionTransforms | Mapping[str, Any] | None = None,
        copy_paste: bool | float | Mapping[str, Any] = False,
        aug_seed: int | None = None,
        on_bad_annotation: str = "raise",
    ) -> None:
        if on_bad_annotation not in POLICIES:
            raise ValueError(f"on_bad_annotation must be one of {POLICIES}, got {on_bad_annotation!r}")
        super().__init__(("background", *VOC_DETECTION_CLASSES), range(21), transforms, copy_paste, aug_seed)
        self.root = Path(root)
        list_file = self.root / "ImageSets" / "Main" / f"{split}.txt"
        if not list_file.is_file():
            raise FileNotFoundError(f"VOC split file not found: {list_file} (root should be VOCdevkit/VOC2007)")
        self.names = [line.split()[0] for line in list_file.read_text().splitlines() if line.strip()]
        self.on_bad_annotation = on_bad_annotation
        self.skipped: list[str] = []
        records = [self._parse(i, name) for i, name in enumerate(self.names)]
        self.records = [r for r in records if r is not None]
        if self.names and not self.records:
            raise BadAnnotationError(
                f"{list_file}: every one of the {len(self.names)} annotation files is unreadable, so "
                f"on_bad_annotation='skip' would leave no image; first: {self.skipped[0]}"
            )
        if self.skipped:
            warnings.warn(
                f"{list_file}: skipped {len(self.skipped)} bad objects or files; first: {self.skipped[0]}",
                stacklevel=2,
            )
        empty = [r["path"].stem for r in self.records if r["num_objects"] == 0]
        if empty:
            warnings.warn(
                f"{list_file}: {len(empty)} of {len(self.records)} annotation files have no <object> (e.g. "
                f"{empty[0]}.xml); their images train on nothing but background. Check that the XML files are "
                "the annotated ones",
                stacklevel=2,
            )

    def _bad(self, message: str) -> None:
        if self.on_bad_annotation == "raise":
            raise BadAnnotationError(
                f"{message}. Fix it, or pass on_bad_annotation='skip' to drop such objects (and unreadable files)."
            )
        self.skipped.append(message)

    def _read_xml(self, xml_path: Path) -> ET.Element:
        text = xml_path.read_bytes()
        if b"<!ENTITY" in text or b"<!DOCTYPE" in text:
            # Entity expansion is how XML "billion laughs" bombs and external-file reads work; VOC never uses it.
            raise ValueError(
                "it declares a DOCTYPE or entities, which VOC annotations never need and which are refused for "
                "safety (entity bombs, external entities); remove the <!DOCTYPE ...> block"
            )
        try:
            return ET.fromstring(text)
        except ET.ParseError as err:
            raise ValueError(f"it is not well-formed XML ({err}; a truncated or corrupted file?)") from err

    def _parse(self, index: int, name: str) -> dict[str, Any] | None:
        xml_path = self.root / "Annotations" / f"{name}.xml"
        image_path = self.root / "JPEGImages" / f"{name}.jpg"
        if not xml_path.is_file():
            raise FileNotFoundError(f"VOC image {name}: annotation {xml_path} is missing")
        if not image_path.is_file():
            raise FileNotFoundError(f"VOC image {name} is listed in the split but {image_path} is missing on disk")
        where = f"VOC image {name} (id {index + 1}, {xml_path})"
        try:
            tree = self._read_xml(xml_path)
        except ValueError as err:
            self._bad(f"{where}: {err}")
            return None
        size = tree.find("size")
        try:
            width, height = (int(float(size.findtext(k))) for k in ("width", "height"))  # type: ignore[union-attr]
        except (AttributeError, TypeError, ValueError):
            self._bad(f"{where}: no <size> with numeric <width> and <height>")
            return None
        with Image.open(image_path) as image:
            actual = image.size
        if actual != (width, height):
            self._bad(
                f"{where}: <size> says {width}x{height} but {image_path.name} is {actual[0]}x{actual[1]}; the boxes "
                "were drawn on another image. Pair each XML with its own image"
            )
            return None
        boxes, labels, difficult = [], [], []
        objects = tree.findall("object")
        for j, obj in enumerate(objects):
            where_object = f"{where}, object {j}"
            cls = (obj.findtext("name") or "").strip()
            if cls not in VOC_DETECTION_CLASSES:
                self._bad(f"{where_object}: class {cls!r} is not one of the 20 VOC classes")
                continue
            bb = obj.find("bndbox")
            if bb is None:
                self._bad(f"{where_object}: no <bndbox> (a VOC object needs xmin, ymin, xmax, ymax)")
                continue
            try:
                x0, y0, x1, y1 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                self._bad(f"{where_object}: <bndbox> needs numeric xmin, ymin, xmax and ymax")
                continue
            x0, y0 = x0 - 1, y0 - 1
            if x1 <= x0 or y1 <= y0:
                self._bad(f"{where_object}: box (xmin, ymin, xmax, ymax) = {(x0 + 1, y0 + 1, x1, y1)} has no area")
                continue
            if x0 < -1 or y0 < -1 or x1 > width + 1 or y1 > height + 1:
                self._bad(f"{where_object}: box {(x0 + 1, y0 + 1, x1, y1)} lies outside the {width}x{height} image")
                continue
            boxes.append([max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)])
            labels.append(VOC_DETECTION_CLASSES.index(cls) + 1)
            difficult.append(obj.findtext("difficult", "0").strip() == "1")
        return {
            "path": image_path,
            "image_id": index + 1,
            "num_objects": len(objects),
            "boxes": np.array(boxes, dtype=np.float32).reshape(-1, 4),
            "labels": np.array(labels, dtype=np.int64),
            "ignore": np.array(difficult, dtype=bool),
        }

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> DetectionSample:
        rec = self.records[index]
        image = read_image(rec["path"])
        return DetectionSample(
            image, rec["boxes"], rec["labels"], None, rec["image_id"], path=str(rec["path"]), ignore=rec["ignore"]
        )
