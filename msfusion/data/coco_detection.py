"""COCO-format detection and instance segmentation: an image folder and an instances JSON.

The format of Lin et al., "Microsoft COCO: Common Objects in Context" (arXiv
1405.0312), read with pycocotools: ``images`` (id, file_name, height,
width), ``annotations`` (id, image_id, category_id, ``bbox`` [x, y, w, h] in
pixels, ``segmentation`` as polygons or RLE, ``iscrowd``) and
``categories``. Category ids need not be contiguous (COCO's 80 use 1..90):
labels are 1..K in the order of increasing category id, and
``label_to_category`` / ``category_to_label`` map both ways; the evaluation
writes results in the file's own ids.

Crowd annotations (``iscrowd=1``) are left out of the training targets and
kept in the ground truth, where the COCO evaluation ignores detections that
match them.

Every annotation is checked when the dataset is built. A box of zero or
negative size, a box reaching more than 1 pixel outside its image, a
category id missing from ``categories``, a polygon with fewer than three
points, an annotation of an unknown image, and an image listed in the JSON
but missing on disk are errors naming the image and annotation ids; with
``on_bad_annotation="skip"`` such annotations (and missing images) are
dropped and counted in ``self.skipped``. Boxes less than 1 pixel outside the
image are clipped to it.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from msfusion.data.detection import DetectionDataset, DetectionSample
from msfusion.data.detection_transforms import DetectionTransforms
from msfusion.data.image_io import read_image

__all__ = ["COCODetection", "BadAnnotationError"]

POLICIES = ("raise", "skip")
_OUTSIDE_TOLERANCE = 1.0  # pixels a box may reach outside the image (rounding in the annotation tools)


class BadAnnotationError(ValueError):
    """An annotation that cannot be used; the message names the image and annotation ids."""


class COCODetection(DetectionDataset):
    """COCO-format detection dataset.

    Args:
        images: folder holding the ``file_name`` of every image.
        annotations: the instances JSON.
        transforms, copy_paste, aug_seed: as ``DetectionDataset``.
        with_masks: decode instance masks (Mask R-CNN); False keeps boxes only.
        on_bad_annotation: ``"raise"`` or ``"skip"`` (module doc).
        drop_empty: leave out images without any usable annotation (training).
    """

    def __init__(
        self,
        images: str | Path,
        annotations: str | Path,
        transforms: DetectionTransforms | Mapping[str, Any] | None = None,
        copy_paste: bool | float | Mapping[str, Any] = False,
        aug_seed: int | None = None,
        with_masks: bool = True,
        on_bad_annotation: str = "raise",
        drop_empty: bool = False,
    ) -> None:
        if on_bad_annotation not in POLICIES:
            raise ValueError(f"on_bad_annotation must be one of {POLICIES}, got {on_bad_annotation!r}")
        self.images_dir = Path(images)
        self.annotation_file = Path(annotations)
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"COCO image folder not found: {self.images_dir}")
        if not self.annotation_file.is_file():
            raise FileNotFoundError(f"COCO annotation file not found: {self.annotation_file}")
        try:
            data = json.loads(self.annotation_file.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{self.annotation_file}: not valid JSON ({err})") from err
        for key in ("images", "annotations", "categories"):
            if key not in data:
                raise ValueError(f"{self.annotation_file}: an instances JSON needs a {key!r} list")
        self.with_masks = with_masks
        self.on_bad_annotation = on_bad_annotation
        self.skipped: list[str] = []
        categories = sorted(data["categories"], key=lambda c: c["id"])
        self.category_to_label = {int(c["id"]): i + 1 for i, c in enumerate(categories)}
        super().__init__(
            ["background"] + [str(c["name"]) for c in categories],
            [0] + [int(c["id"]) for c in categories],
            transforms,
            copy_paste,
            aug_seed,
        )
        images_by_id = {int(im["id"]): im for im in data["images"]}
        kept: dict[int, list[dict]] = {image_id: [] for image_id in images_by_id}
        for ann in data["annotations"]:
            problem = self._check(ann, images_by_id)
            if problem is None:
                kept[int(ann["image_id"])].append(ann)
            else:
                self._bad(problem)
        ids = []
        for image_id, image in images_by_id.items():
            if not (self.images_dir / image["file_name"]).is_file():
                self._bad(
                    f"image {image_id} ({image['file_name']}) is listed in the JSON but missing on disk in "
                    f"{self.images_dir}"
                )
                kept.pop(image_id)
                continue
            if drop_empty and not any(not a.get("iscrowd", 0) for a in kept[image_id]):
                continue
            ids.append(image_id)
        if self.skipped:
            warnings.warn(
                f"{self.annotation_file}: skipped {len(self.skipped)} bad annotations or images; "
                f"first: {self.skipped[0]}",
                stacklevel=2,
            )
        self.ids = ids
        self.image_info = images_by_id
        self.annotations = kept
        gt = dict(data)
        gt["images"] = [images_by_id[i] for i in images_by_id if i in kept]
        # pycocotools' evaluation reads 'area' and 'iscrowd'; hand-made JSONs often leave them out.
        gt["annotations"] = [
            {"iscrowd": 0, "area": float(a["bbox"][2]) * float(a["bbox"][3]), **a} for i in kept for a in kept[i]
        ]
        self._gt_data = gt

    def _where(self, ann: Mapping[str, Any], images: Mapping[int, Any]) -> str:
        image = images.get(int(ann.get("image_id", -1)), {})
        name = f" ({image['file_name']})" if "file_name" in image else ""
        return f"{self.annotation_file.name}: image {ann.get('image_id')}{name}, annotation {ann.get('id')}"

    def _bad(self, message: str) -> None:
        if self.on_bad_annotation == "raise":
            raise BadAnnotationError(
                f"{message}. Fix or remove it, or pass on_bad_annotation='skip' "
                "(data.train.on_bad_annotation: skip) to drop such annotations."
            )
        self.skipped.append(message)

    def _check(self, ann: Mapping[str, Any], images: Mapping[int, Any]) -> str | None:
        where = self._where(ann, images)
        if int(ann.get("image_id", -1)) not in images:
            return f"{where}: the annotation refers to an image id that is not in 'images'"
        if int(ann.get("category_id", -1)) not in self.category_to_label:
            return (
                f"{where}: category id {ann.get('category_id')} is not in the JSON's categories "
                f"{sorted(self.category_to_label)}"
            )
        bbox = ann.get("bbox")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            return f"{where}: bbox must be [x, y, width, height], got {bbox!r}"
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            return f"{where}: box [x, y, w, h] = {list(bbox)} has zero or negative size"
        image = images[int(ann["image_id"])]
        width, height = float(image["width"]), float(image["height"])
        tol = _OUTSIDE_TOLERANCE
        if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
            return f"{where}: box [x, y, w, h] = {list(bbox)} lies outside the {int(width)}x{int(height)} image"
        segm = ann.get("segmentation")
        if self.with_masks and isinstance(segm, list):
            if not segm:
                return f"{where}: empty polygon list"
            for polygon in segm:
                if len(polygon) < 6 or len(polygon) % 2:
                    return f"{where}: a polygon needs at least three (x, y) points, got {len(polygon)} numbers"
        return None

    def __len__(self) -> int:
        return len(self.ids)

    def _mask(self, ann: Mapping[str, Any], height: int, width: int) -> np.ndarray:
        from pycocotools import mask as mask_utils

        segm = ann.get("segmentation")
        if segm is None or segm == []:
            # A box-only annotation: its box is the mask (keeps Mask R-CNN targets aligned with boxes).
            mask = np.zeros((height, width), dtype=bool)
            x, y, w, h = ann["bbox"]
            mask[int(max(y, 0)) : int(np.ceil(y + h)), int(max(x, 0)) : int(np.ceil(x + w))] = True
            return mask
        if isinstance(segm, list):
            rle = mask_utils.merge(mask_utils.frPyObjects(segm, height, width))
        elif isinstance(segm.get("counts"), list):
            rle = mask_utils.frPyObjects(segm, height, width)
        else:
            rle = segm
        return mask_utils.decode(rle).astype(bool)

    def load(self, index: int) -> DetectionSample:
        image_id = self.ids[index]
        info = self.image_info[image_id]
        path = self.images_dir / info["file_name"]
        image = read_image(path)
        height, width = image.shape[:2]
        if (height, width) != (int(info["height"]), int(info["width"])):
            raise BadAnnotationError(
                f"{self.annotation_file.name}: image {image_id} ({info['file_name']}) is {width}x{height} on disk "
                f"but {info['width']}x{info['height']} in the JSON"
            )
        anns = self.annotations[image_id]
        boxes = np.array(
            [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns],
            dtype=np.float32,
        ).reshape(-1, 4)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        labels = np.array([self.category_to_label[int(a["category_id"])] for a in anns], dtype=np.int64)
        ignore = np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool)
        masks = None
        if self.with_masks:
            masks = np.zeros((len(anns), height, width), dtype=bool)
            for j, ann in enumerate(anns):
                masks[j] = self._mask(ann, height, width)
        return DetectionSample(image, boxes, labels, masks, image_id=image_id, path=str(path), ignore=ignore)

    def coco_gt(self) -> Any:
        """The JSON's own ground truth (original category ids, crowds included), as pycocotools ``COCO``."""
        from pycocotools.coco import COCO

        if self._coco_gt is None:
            gt = COCO()
            gt.dataset = self._gt_data
            with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
                gt.createIndex()
            self._coco_gt = gt
        return self._coco_gt
