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

Bad annotations (a box of zero or negative size, a box more than 1 pixel
outside the image, an unknown class name, an XML without a size) are
errors naming the image id and object index; ``on_bad_annotation="skip"``
drops them instead.
"""

from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from msfusion.data.coco_detection import POLICIES, BadAnnotationError
from msfusion.data.detection import DetectionDataset, DetectionSample
from msfusion.data.detection_transforms import DetectionTransforms
from msfusion.data.image_io import read_image

__all__ = ["VOCDetection", "VOC_DETECTION_CLASSES"]

VOC_DETECTION_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
    "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


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
        self.records = [self._parse(i, name) for i, name in enumerate(self.names)]
        if self.skipped:
            warnings.warn(
                f"{list_file}: skipped {len(self.skipped)} bad objects; first: {self.skipped[0]}", stacklevel=2
            )

    def _bad(self, message: str) -> None:
        if self.on_bad_annotation == "raise":
            raise BadAnnotationError(f"{message}. Fix it, or pass on_bad_annotation='skip' to drop such objects.")
        self.skipped.append(message)

    def _parse(self, index: int, name: str) -> dict[str, Any]:
        xml_path = self.root / "Annotations" / f"{name}.xml"
        image_path = self.root / "JPEGImages" / f"{name}.jpg"
        if not xml_path.is_file():
            raise FileNotFoundError(f"VOC image {name}: annotation {xml_path} is missing")
        if not image_path.is_file():
            raise FileNotFoundError(f"VOC image {name} is listed in the split but {image_path} is missing on disk")
        tree = ET.parse(xml_path).getroot()
        size = tree.find("size")
        if size is None:
            raise BadAnnotationError(f"{xml_path}: no <size> element")
        width, height = int(float(size.findtext("width"))), int(float(size.findtext("height")))
        boxes, labels, difficult = [], [], []
        for j, obj in enumerate(tree.findall("object")):
            where = f"VOC image {name} (id {index + 1}), object {j}"
            cls = (obj.findtext("name") or "").strip()
            if cls not in VOC_DETECTION_CLASSES:
                self._bad(f"{where}: class {cls!r} is not one of the 20 VOC classes")
                continue
            bb = obj.find("bndbox")
            x0, y0, x1, y1 = (float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
            x0, y0 = x0 - 1, y0 - 1
            if x1 <= x0 or y1 <= y0:
                self._bad(f"{where}: box (xmin, ymin, xmax, ymax) = {(x0 + 1, y0 + 1, x1, y1)} has no area")
                continue
            if x0 < -1 or y0 < -1 or x1 > width + 1 or y1 > height + 1:
                self._bad(f"{where}: box {(x0 + 1, y0 + 1, x1, y1)} lies outside the {width}x{height} image")
                continue
            boxes.append([max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)])
            labels.append(VOC_DETECTION_CLASSES.index(cls) + 1)
            difficult.append(obj.findtext("difficult", "0").strip() == "1")
        return {
            "path": image_path,
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
            image, rec["boxes"], rec["labels"], None, image_id=index + 1, path=str(rec["path"]), ignore=rec["ignore"]
        )
