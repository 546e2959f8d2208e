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

Everything is checked when the dataset is built, before the first step, and
each error names the file, the image id and the annotation id, and says how
to fix it:

- the JSON's structure: ``images``, ``annotations`` and ``categories`` must
  be lists, ``annotations`` not empty (an empty list trains on nothing and
  scores AP 0.00); every image needs an integer ``id``, a ``file_name`` and
  positive integer ``width`` and ``height``; image ids and category ids must
  be unique (two files under one id would train boxes on the wrong picture;
  two categories under one id would rename a class). These are errors
  whatever ``on_bad_annotation`` says.
- each annotation: a unique integer ``id`` (the COCO evaluation matches by
  it: pycocotools keeps one of two equal ids), an integer ``image_id`` of a
  listed image (a string id never matches a detection), a known
  ``category_id``, ``iscrowd`` 0 or 1 (the string ``"0"`` would read as a
  crowd), a ``bbox`` of four finite JSON numbers (strings such as ``"42"``
  and NaN are refused) of positive size reaching at most 1 pixel outside
  the image; with masks, polygons of at least three points that are not
  entirely outside the image, and RLE whose ``size`` is the image's
  ``[height, width]`` and whose runs cover exactly its pixels (pycocotools
  would otherwise decode garbage or fail mid-training).
- the coordinate system: boxes (or polygons) whose every coordinate is at
  most 1 on images larger than 16 pixels are in 0-1 units (a YOLO export),
  not COCO's pixels; refused with the fix (multiply x and width by the
  image width, y and height by its height).

With ``on_bad_annotation="skip"`` bad annotations (and images missing on
disk) are dropped, counted in ``self.skipped`` and reported in one warning.
Boxes less than 1 pixel outside the image are clipped to it.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from msfusion.data.detection import DetectionDataset, DetectionSample
from msfusion.data.detection_transforms import DetectionTransforms
from msfusion.data.image_io import read_image
from msfusion.data.registry import register_dataset
from msfusion.structured_files import read_mapping

__all__ = ["COCODetection", "BadAnnotationError", "rle_run_lengths"]

POLICIES = ("raise", "skip")
_OUTSIDE_TOLERANCE = 1.0  # pixels a box may reach outside the image (rounding in the annotation tools)


class BadAnnotationError(ValueError):
    """An annotation that cannot be used; the message names the image and annotation ids."""


def _is_number(value: Any) -> bool:
    """A JSON number: ``json`` gives exactly int or float (bool, an int subclass, is not a coordinate)."""
    return type(value) in (int, float)


def _is_integer(value: Any) -> bool:
    """A JSON integer (``3`` or ``3.0``), not a string or a bool."""
    return _is_number(value) and math.isfinite(value) and float(value).is_integer()


def rle_run_lengths(counts: str) -> list[int]:
    """The run lengths of a COCO compressed RLE string (pycocotools' ``rleFrString`` format).

    Each run is a little-endian sequence of 5-bit groups, one character per
    group (``chr(48 + bits)``, bit 0x20 set while more groups follow, bit 0x10
    of the last group the sign); from the third run on, a run is stored as its
    difference to the run two places before. pycocotools decodes a string
    whose runs do not add up to ``height * width`` without complaint (into
    memory it does not own), so the runs are summed here first.

    Raises:
        ValueError: a character outside the format's range, or a string ending mid-run.
    """
    runs: list[int] = []
    value = shift = 0
    for char in counts:
        code = ord(char) - 48
        if not 0 <= code < 64:
            raise ValueError(f"character {char!r} is not part of the compressed RLE alphabet ('0'..'o')")
        value |= (code & 0x1F) << shift
        shift += 5
        if code & 0x20:
            continue
        if code & 0x10:
            value -= 1 << shift
        if len(runs) > 2:
            value += runs[-2]
        runs.append(value)
        value = shift = 0
    if shift:
        raise ValueError("the string ends in the middle of a run")
    return runs


def _check_segmentation(segm: Any, height: int, width: int) -> str | None:
    """What is wrong with a polygon list or RLE on a ``height x width`` image, or None."""
    if segm is None or segm == []:
        return None  # box-only: the box is the mask
    if isinstance(segm, list):
        for polygon in segm:
            if not isinstance(polygon, list) or not set(map(type, polygon)) <= {int, float}:
                return f"a polygon must be a list of JSON numbers [x0, y0, x1, y1, ...], got {polygon!r:.80}"
            if len(polygon) < 6 or len(polygon) % 2:
                return f"a polygon needs at least three (x, y) points, got {len(polygon)} numbers"
            if not math.isfinite(sum(polygon)):  # NaN or infinity anywhere makes the sum non-finite
                return "a polygon holds a non-finite coordinate"
            xs, ys = polygon[0::2], polygon[1::2]
            if max(xs) <= 0 or max(ys) <= 0 or min(xs) >= width or min(ys) >= height:
                return f"a polygon lies entirely outside the {width}x{height} image, so its mask is empty"
        return None
    if not isinstance(segm, Mapping) or "counts" not in segm or "size" not in segm:
        return "segmentation must be a list of polygons or an RLE {'size': [h, w], 'counts': ...}"
    if segm["size"] != [height, width]:
        return (
            f"the RLE's size {segm['size']} is not the image's [height, width] = {[height, width]}; "
            "the mask was encoded for another image size"
        )
    counts = segm["counts"]
    if isinstance(counts, list):
        if not all(_is_integer(c) and c >= 0 for c in counts):
            return "uncompressed RLE counts must be non-negative integers"
        runs = [int(c) for c in counts]
    elif isinstance(counts, str):
        try:
            runs = rle_run_lengths(counts)
        except ValueError as err:
            return f"the RLE counts string is not valid compressed RLE ({err})"
    else:
        return f"RLE counts must be a list of run lengths or a compressed string, got {type(counts).__name__}"
    if any(r < 0 for r in runs) or sum(runs) != height * width:
        return (
            f"the RLE's runs cover {sum(runs)} pixels, not the image's {height}x{width} = {height * width} "
            "(a corrupted or truncated RLE); re-encode the mask with pycocotools.mask.encode"
        )
    return None


def read_coco_json(path: Path, kind: str) -> dict[str, Any]:
    """Read a COCO JSON, checking the structure both COCO formats share.

    The instances and panoptic formats (Lin et al., arXiv 1405.0312, Sec. 3;
    Kirillov et al., arXiv 1801.00868, Sec. 3) are each an object with the
    lists ``images``, ``annotations`` and ``categories``.

    Args:
        path: the JSON file.
        kind: ``"instances"`` or ``"panoptic"``, for the messages.

    Raises:
        FileNotFoundError: ``path`` is not a file.
        ValueError: not JSON, not an object, or one of the three lists missing.
    """
    data = read_mapping(path, f"COCO {kind} JSON")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(
                f"{path}: a COCO {kind} JSON needs the {key!r} list, got "
                f"{'nothing' if key not in data else repr(data[key])[:40]}"
            )
    return data


@register_dataset("coco", task="detection")
class COCODetection(DetectionDataset):
    """COCO-format detection dataset.

    Args:
        images: folder holding the ``file_name`` of every image.
        annotations: the instances JSON.
        transforms, copy_paste, aug_seed: as ``DetectionDataset``.
        with_masks: decode (and check) instance masks, for detectors that
            predict masks (Mask R-CNN); False keeps boxes only. A recipe's
            dataset follows its model's arch unless it sets this.
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
        data = read_coco_json(self.annotation_file, "instances")
        if not data["annotations"]:
            raise ValueError(
                f"{self.annotation_file}: 'annotations' is empty, so there is nothing to train on and every AP would "
                "be 0. Point data.*.annotations at the instances JSON that holds the boxes (an image-info JSON "
                "such as image_info_test2017.json has none)."
            )
        self.with_masks = with_masks
        self.on_bad_annotation = on_bad_annotation
        self.skipped: list[str] = []
        categories = self._check_categories(data["categories"])
        self.category_to_label = {int(c["id"]): i + 1 for i, c in enumerate(categories)}
        super().__init__(
            ["background"] + [str(c["name"]) for c in categories],
            [0] + [int(c["id"]) for c in categories],
            transforms,
            copy_paste,
            aug_seed,
        )
        images_by_id = self._check_images(data["images"])
        kept: dict[int, list[dict]] = {image_id: [] for image_id in images_by_id}
        annotation_ids: dict[int, Any] = {}
        for ann in data["annotations"]:
            problem = self._check(ann, images_by_id, annotation_ids)
            if problem is None:
                annotation_ids[int(ann["id"])] = ann["image_id"]
                kept[int(ann["image_id"])].append(ann)
            else:
                self._bad(f"{self._where(ann, images_by_id)}: {problem}")
        if not annotation_ids:
            raise BadAnnotationError(
                f"{self.annotation_file}: every one of the {len(data['annotations'])} annotations is bad, so "
                f"on_bad_annotation='skip' would leave nothing to train on; first: {self.skipped[0]}"
            )
        self._check_units(kept, images_by_id)
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
        gt["categories"] = categories
        gt["images"] = [images_by_id[i] for i in images_by_id if i in kept]
        # pycocotools' evaluation reads 'area' and 'iscrowd'; hand-made JSONs often leave them out.
        gt["annotations"] = [
            {"iscrowd": 0, "area": float(a["bbox"][2]) * float(a["bbox"][3]), **a} for i in kept for a in kept[i]
        ]
        self._gt_data = gt

    def _check_categories(self, categories: list[Any]) -> list[dict]:
        """The categories sorted by id, after checking that ids are unique integers and every one has a name."""
        seen: dict[int, str] = {}
        for k, cat in enumerate(categories):
            where = f"{self.annotation_file}: categories[{k}]"
            if not isinstance(cat, Mapping) or not _is_integer(cat.get("id")) or "name" not in cat:
                raise BadAnnotationError(
                    f"{where} = {cat!r}: a category needs an integer 'id' and a 'name' "
                    '(e.g. {"id": 1, "name": "person"})'
                )
            cid = int(cat["id"])
            if cid in seen:
                raise BadAnnotationError(
                    f"{where}: category id {cid} is used twice ({seen[cid]!r} and {cat['name']!r}); one id would name "
                    "two classes. Give each category its own id (and its annotations that id)."
                )
            seen[cid] = str(cat["name"])
        return sorted(categories, key=lambda c: int(c["id"]))

    def _check_images(self, images: list[Any]) -> dict[int, dict]:
        """``{image id: image}`` after checking ids (unique integers), file names and sizes."""
        by_id: dict[int, dict] = {}
        for k, image in enumerate(images):
            where = f"{self.annotation_file}: images[{k}]"
            if not isinstance(image, Mapping):
                raise BadAnnotationError(f"{where} = {image!r} is not an object with id, file_name, width, height")
            image_id = image.get("id")
            if not _is_integer(image_id):
                raise BadAnnotationError(
                    f"{where} ({image.get('file_name')}): image id {image_id!r} is not an integer. Write ids as JSON "
                    "numbers (the COCO evaluation matches detections to images by integer id)."
                )
            where = f"{where}, image {image_id}"
            for key in ("file_name", "width", "height"):
                if key not in image:
                    raise BadAnnotationError(
                        f"{where}: no {key!r}. Every image needs file_name, width and height (the image's size in "
                        "pixels, as PIL's Image.open(path).size gives it)."
                    )
            if not all(_is_integer(image[key]) and int(image[key]) > 0 for key in ("width", "height")):
                raise BadAnnotationError(
                    f"{where} ({image['file_name']}): width {image['width']!r} and height {image['height']!r} must be "
                    "positive integers (pixels)"
                )
            if int(image_id) in by_id:
                raise BadAnnotationError(
                    f"{where}: image id {image_id} is used twice ({by_id[int(image_id)]['file_name']} and "
                    f"{image['file_name']}); the boxes of one would be trained on the other. Give each image its own "
                    "id and each annotation the id of its image."
                )
            by_id[int(image_id)] = dict(image)
        return by_id

    def _where(self, ann: Any, images: Mapping[int, Any]) -> str:
        if not isinstance(ann, Mapping):
            return f"{self.annotation_file.name}: annotation {ann!r:.60}"
        image_id = ann.get("image_id", -1)
        image = images.get(int(image_id), {}) if _is_integer(image_id) else {}
        name = f" ({image['file_name']})" if "file_name" in image else ""
        return f"{self.annotation_file.name}: image {ann.get('image_id')!r}{name}, annotation {ann.get('id')!r}"

    def _bad(self, message: str) -> None:
        if self.on_bad_annotation == "raise":
            raise BadAnnotationError(
                f"{message}. Fix or remove it, or pass on_bad_annotation='skip' "
                "(data.train.on_bad_annotation: skip) to drop such annotations."
            )
        self.skipped.append(message)

    def _check(
        self, ann: Mapping[str, Any], images: Mapping[int, Any], annotation_ids: Mapping[int, Any]
    ) -> str | None:
        """What is wrong with an annotation, or None (the caller names the annotation)."""
        if not isinstance(ann, Mapping):
            return "the annotation is not an object"
        if "id" not in ann:
            return "the annotation has no 'id' (the COCO evaluation needs a unique integer id per annotation)"
        if not _is_integer(ann["id"]):
            return f"annotation id {ann['id']!r} is not an integer"
        if int(ann["id"]) in annotation_ids:
            return (
                f"annotation id {ann['id']} is used twice (also on image {annotation_ids[int(ann['id'])]}); "
                "the COCO evaluation would keep only one of them. Number the annotations uniquely"
            )
        if not _is_integer(ann.get("image_id")):
            return f"image_id {ann.get('image_id')!r} is not an integer (write it as a JSON number)"
        if int(ann["image_id"]) not in images:
            return "the annotation refers to an image id that is not in 'images'"
        if not _is_integer(ann.get("category_id")) or int(ann["category_id"]) not in self.category_to_label:
            return (
                f"category id {ann.get('category_id')!r} is not in the JSON's categories "
                f"{sorted(self.category_to_label)}"
            )
        if ann.get("iscrowd", 0) not in (0, 1) or isinstance(ann.get("iscrowd", 0), str):
            return f"iscrowd must be the number 0 or 1, got {ann['iscrowd']!r}"
        bbox = ann.get("bbox")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            return f"bbox must be [x, y, width, height], got {bbox!r}"
        if not all(_is_number(v) for v in bbox):
            return f"bbox {bbox!r} must hold four JSON numbers (not strings)"
        if not all(math.isfinite(v) for v in bbox):
            return f"bbox {bbox!r} is not finite"
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            return f"box [x, y, w, h] = {list(bbox)} has zero or negative size"
        image = images[int(ann["image_id"])]
        width, height = int(image["width"]), int(image["height"])
        tol = _OUTSIDE_TOLERANCE
        if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
            return f"box [x, y, w, h] = {list(bbox)} lies outside the {width}x{height} image"
        if self.with_masks:
            return _check_segmentation(ann.get("segmentation"), height, width)
        return None

    def _check_units(self, kept: Mapping[int, list[dict]], images: Mapping[int, Any]) -> None:
        """Refuse boxes or polygons in 0-1 units: every coordinate at most 1 on images larger than 16 pixels."""
        anns = [a for image_anns in kept.values() for a in image_anns]
        if not anns or max(max(int(im["width"]), int(im["height"])) for im in images.values()) <= 16:
            return
        first = self._where(anns[0], images)
        if max(max(float(v) for v in a["bbox"]) for a in anns) <= 1.0:
            raise BadAnnotationError(
                f"{first}: every box of the {len(anns)} annotations has coordinates of at most 1 (e.g. "
                f"{anns[0]['bbox']}), i.e. boxes in 0-1 units, but COCO boxes are [x, y, width, height] in pixels. "
                "Multiply x and width by the image width and y and height by the image height."
            )
        polygons = [p for a in anns if isinstance(a.get("segmentation"), list) for p in a["segmentation"]]
        if self.with_masks and polygons and max(max(p) for p in polygons) <= 1.0:
            raise BadAnnotationError(
                f"{first}: every polygon point of the {len(polygons)} polygons is at most 1, i.e. polygons in 0-1 "
                "units, but COCO polygons are in pixels. Multiply each x by the image width and each y by its height."
            )

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
