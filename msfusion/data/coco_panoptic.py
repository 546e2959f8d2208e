"""Panoptic datasets: the sample contract, and the COCO panoptic format (PNGs + ``segments_info`` JSON).

The format of Kirillov et al., "Panoptic Segmentation" (arXiv 1801.00868),
Sec. 3 and its COCO release: a JSON with ``images`` (id, file_name, height,
width), ``annotations`` (one per image: ``image_id``, ``file_name`` of a PNG,
``segments_info`` = [{``id``, ``category_id``, ``iscrowd``, ``bbox``,
``area``}]) and ``categories`` (id, name, ``isthing``); per image a PNG whose
pixel colour ``(R, G, B)`` encodes the segment id ``R + 256 G + 256^2 B``
(0 = void, unlabelled). Category ids need not be contiguous (COCO: 80 things
and 53 stuff among ids 1..200).

Labels: things get 1..T in order of increasing category id (the detector's
labels, ``num_classes = T + 1`` with the background), stuff T+1..T+S;
``classes = ["background", things..., stuff...]`` and ``label_to_category``
maps them back to the file's ids; ``num_stuff_classes = S``.

A sample (``PanopticDataset.__getitem__``) is the detection sample
(``msfusion.data.detection``: non-crowd things as boxes, labels, masks) plus
``target["semantic"]`` (H, W) int64 for the semantic branch: 0 for any thing
pixel (crowd regions included), k in 1..S for stuff class k, 255 for void;
the geometric transforms move it with the image, padding is void.
``load_panoptic(index)`` gives the untransformed ground truth for PQ.

Checked when ``COCOPanoptic`` is built (the JSON): the three lists (as for
COCO instances, ``read_coco_json``), an annotation naming an image missing
from ``images``, an image annotated twice (it would be trained
and scored twice), a category id not in ``categories``, a segment listed
twice or with a JSON ``area`` of 0. Checked for every PNG by
``check_labels()`` (which training runs before the first step) and again
when an image is read: a PNG segment id missing from ``segments_info``, a
segment of ``segments_info`` with no pixel in the PNG (it would be ignored in
training and in PQ), an all-void PNG whose JSON lists segments, a PNG whose
size differs from its image. Each error names the file and the entry.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision import tv_tensors

from msfusion.data.base_dataset import boxes_from_masks
from msfusion.data.coco_detection import read_coco_json
from msfusion.data.detection import DetectionDataset, DetectionSample
from msfusion.data.detection_transforms import DetectionTransforms, to_tv_target
from msfusion.data.image_io import read_image
from msfusion.data.registry import register_dataset

__all__ = [
    "PanopticSample",
    "PanopticDataset",
    "COCOPanoptic",
    "rgb_to_id",
    "id_to_rgb",
    "check_panoptic_segments",
    "masks_to_panoptic",
    "write_coco_panoptic",
    "IGNORE_INDEX",
]

IGNORE_INDEX = 255
VOID = 0


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 colours -> (H, W) int64 segment ids ``R + 256 G + 256^2 B``."""
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """(H, W) segment ids -> (H, W, 3) uint8 colours (the inverse of ``rgb_to_id``)."""
    ids = np.asarray(ids, dtype=np.int64)
    if ids.min(initial=0) < 0 or ids.max(initial=0) >= 256**3:
        raise ValueError(f"segment ids must be in [0, 256^3), got {ids.min()}..{ids.max()}")
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def check_panoptic_segments(ids: np.ndarray, segments: Sequence[Mapping[str, Any]], what: str) -> dict[int, Mapping]:
    """``{segment id: segment}`` after checking a map against its ``segments_info``; ``ValueError`` names ``what``.

    Segment ids must be unique and non-zero (0 is void), and every non-zero id
    of the map must be listed.
    """
    by_id: dict[int, Mapping] = {}
    for seg in segments:
        sid = int(seg["id"])
        if sid == VOID:
            raise ValueError(f"{what}: segment id 0 is reserved for void pixels; number segments from 1")
        if sid in by_id:
            raise ValueError(f"{what}: segment id {sid} is listed twice in segments_info")
        by_id[sid] = seg
    unknown = sorted(set(np.unique(ids).tolist()) - {VOID} - set(by_id))
    if unknown:
        raise ValueError(
            f"{what}: segment ids {unknown[:10]} are in the panoptic map but not in segments_info "
            f"(listed ids: {sorted(by_id)[:10]}); every non-zero id of the map needs an entry"
        )
    return by_id


def masks_to_panoptic(masks: np.ndarray, what: str = "masks") -> np.ndarray:
    """(N, H, W) bool segment masks -> (H, W) int64 ids 1..N (0 where none); overlapping masks are an error."""
    masks = np.asarray(masks, dtype=bool)
    counts = masks.sum(axis=0)
    if (counts > 1).any():
        ys, xs = np.nonzero(counts > 1)
        owners = np.nonzero(masks[:, ys[0], xs[0]])[0].tolist()
        raise ValueError(
            f"{what}: segments overlap ({int((counts > 1).sum())} pixels, first at y={ys[0]}, x={xs[0]}, segments "
            f"{[o + 1 for o in owners]}); a panoptic map gives each pixel one segment"
        )
    return (masks * np.arange(1, len(masks) + 1)[:, None, None]).sum(axis=0).astype(np.int64)


@dataclass
class PanopticSample:
    """One image and its panoptic ground truth before transforms.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        ids: (H, W) int64 segment ids, 0 = void.
        segments: ``{"id", "label" (1..T+S), "iscrowd"}`` per segment.
        image_id: the annotation file's image id.
        path: the image file (or a synthetic id).
    """

    image: np.ndarray
    ids: np.ndarray
    segments: list[dict[str, Any]] = field(default_factory=list)
    image_id: int = 0
    path: str = ""


class PanopticDataset(DetectionDataset):
    """Base of the panoptic datasets (module doc). Subclasses implement ``__len__`` and ``load_panoptic``.

    Args:
        things: thing class names (labels 1..T).
        stuff: stuff class names (labels T+1..T+S).
        category_ids: the file's category id of each thing then stuff class.
        transforms, aug_seed: as ``DetectionDataset`` (copy-paste is not offered:
            it would need the stuff regions re-labelled too).
    """

    def __init__(
        self,
        things: Sequence[str],
        stuff: Sequence[str],
        category_ids: Sequence[int],
        transforms: DetectionTransforms | Mapping[str, Any] | None = None,
        aug_seed: int | None = None,
    ) -> None:
        if len(category_ids) != len(things) + len(stuff):
            raise ValueError(f"{len(things)} things and {len(stuff)} stuff classes but {len(category_ids)} ids")
        if not stuff:
            raise ValueError("a panoptic dataset needs at least one stuff class (the semantic branch predicts them)")
        # ``classes`` and ``label_to_category`` cover things and stuff; the detector sees labels 1..T only.
        super().__init__(["background", *things, *stuff], [0, *category_ids], transforms, False, aug_seed)
        self.num_things = len(things)
        self.num_stuff_classes = len(stuff)

    @property
    def num_classes(self) -> int:
        """Thing classes + the background (the detector's ``num_classes``)."""
        return self.num_things + 1

    @abstractmethod
    def load_panoptic(self, index: int) -> PanopticSample:
        """The image and its panoptic ground truth at ``index``, without transforms."""

    def load(self, index: int) -> DetectionSample:
        """The things of ``load_panoptic`` as a detection sample (crowds flagged ``ignore``)."""
        return self._detection(self.load_panoptic(index))

    def _detection(self, sample: PanopticSample) -> DetectionSample:
        things = [s for s in sample.segments if int(s["label"]) <= self.num_things]
        masks = np.stack([sample.ids == int(s["id"]) for s in things]) if things else None
        if masks is None:
            masks = np.zeros((0, *sample.ids.shape), dtype=bool)
        boxes = boxes_from_masks(torch.from_numpy(masks)).numpy()
        labels = np.array([int(s["label"]) for s in things], dtype=np.int64)
        ignore = np.array([bool(s.get("iscrowd", 0)) for s in things], dtype=bool)
        return DetectionSample(sample.image, boxes, labels, masks, sample.image_id, sample.path, ignore)

    def semantic_map(self, sample: PanopticSample) -> np.ndarray:
        """(H, W) uint8 semantic labels: 0 = thing, 1..S = stuff, 255 = void."""
        lut = {int(s["id"]): max(int(s["label"]) - self.num_things, 0) for s in sample.segments}
        out = np.full(sample.ids.shape, IGNORE_INDEX, dtype=np.uint8)
        for sid, value in lut.items():
            out[sample.ids == sid] = value
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        length = len(self)
        if not -length <= index < length:
            raise IndexError(f"index {index} out of range for a dataset of {length} images")
        index %= length
        rng = self._rng(index)
        sample = self.load_panoptic(index)
        det = self._detection(sample)
        keep = ~det.ignore
        target = to_tv_target(
            torch.from_numpy(det.boxes[keep]), torch.from_numpy(det.labels[keep]), sample.ids.shape,
            torch.from_numpy(det.masks[keep]),
        )  # fmt: skip
        # Shifted by one so that the transforms' zero padding becomes void (0 -> 255 below).
        semantic = self.semantic_map(sample).astype(np.int64)
        shifted = np.where(semantic == IGNORE_INDEX, 0, semantic + 1).astype(np.uint8)
        target["semantic"] = tv_tensors.Mask(torch.from_numpy(shifted)[None])
        image = tv_tensors.Image(torch.from_numpy(np.require(sample.image, requirements=["C", "W"])).permute(2, 0, 1))
        image, target = self.transforms(image, target, rng)
        shifted = target.pop("semantic").as_subclass(Tensor)[0].long()
        target["semantic"] = torch.where(shifted == 0, IGNORE_INDEX, shifted - 1)
        target["image_id"] = sample.image_id
        return {"image": image, "target": target, "image_id": sample.image_id, "path": sample.path}


@register_dataset("coco_panoptic", task="panoptic")
class COCOPanoptic(PanopticDataset):
    """COCO panoptic format (module doc).

    Args:
        images: folder of the images (``images[].file_name``).
        annotations: the panoptic JSON.
        panoptic: folder of the PNGs (``annotations[].file_name``); default:
            the JSON's path without ``.json`` (COCO's layout:
            ``panoptic_val2017.json`` beside ``panoptic_val2017/``).
        transforms, aug_seed: as ``PanopticDataset``.
    """

    def __init__(
        self,
        images: str | Path,
        annotations: str | Path,
        panoptic: str | Path | None = None,
        transforms: DetectionTransforms | Mapping[str, Any] | None = None,
        aug_seed: int | None = None,
    ) -> None:
        self.images_dir = Path(images)
        self.annotation_file = Path(annotations)
        self.panoptic_dir = Path(panoptic) if panoptic is not None else self.annotation_file.with_suffix("")
        for path, what in ((self.images_dir, "image folder"), (self.panoptic_dir, "panoptic PNG folder")):
            if not path.is_dir():
                raise FileNotFoundError(f"COCO panoptic {what} not found: {path}")
        data = read_coco_json(self.annotation_file, "panoptic")
        categories = sorted(data["categories"], key=lambda c: int(c["id"]))
        if any("isthing" not in c for c in categories):
            raise ValueError(f"{self.annotation_file}: every category needs 'isthing' (1 thing, 0 stuff)")
        things = [c for c in categories if c["isthing"]]
        stuff = [c for c in categories if not c["isthing"]]
        ordered = things + stuff
        super().__init__(
            [str(c["name"]) for c in things], [str(c["name"]) for c in stuff], [int(c["id"]) for c in ordered],
            transforms, aug_seed,
        )  # fmt: skip
        self.category_to_label = {int(c["id"]): i + 1 for i, c in enumerate(ordered)}
        self.image_info = {int(im["id"]): im for im in data["images"]}
        self.records = []
        annotated: dict[int, str] = {}
        for ann in data["annotations"]:
            image_id = int(ann["image_id"])
            if image_id not in self.image_info:
                raise ValueError(f"{self.annotation_file.name}: annotation {ann['file_name']} names image {image_id}, "
                                 "which is not in 'images'")  # fmt: skip
            if image_id in annotated:
                raise ValueError(
                    f"{self.annotation_file.name}: image {image_id} ({self.image_info[image_id]['file_name']}) is "
                    f"annotated twice ({annotated[image_id]} and {ann['file_name']}); it would be trained and scored "
                    "twice. Keep one annotation per image."
                )
            annotated[image_id] = ann["file_name"]
            seen: set[int] = set()
            for seg in ann["segments_info"]:
                where = f"{self.annotation_file.name}: {ann['file_name']} (image {image_id}), segment {seg['id']}"
                if int(seg["category_id"]) not in self.category_to_label:
                    raise ValueError(
                        f"{where}: category id {seg['category_id']} is not in the JSON's categories "
                        f"{sorted(self.category_to_label)}"
                    )
                if int(seg["id"]) in seen:
                    raise ValueError(f"{where}: the segment id is listed twice in segments_info")
                seen.add(int(seg["id"]))
                if "area" in seg and seg["area"] == 0:
                    raise ValueError(
                        f"{where}: the JSON gives the segment an area of 0 pixels; a segment without pixels is ignored "
                        "in training and in PQ. Remove it from segments_info"
                    )
            self.records.append(ann)

    def __len__(self) -> int:
        return len(self.records)

    def check_labels(self, split: str = "this split") -> dict[str, int]:
        """Read every panoptic PNG and check it against its JSON entry (module doc), before training.

        Args:
            split: how to name the split in messages, e.g. ``"data.train"``.

        Returns:
            ``{"files": PNGs read, "segments": segments listed}``.

        Raises:
            ValueError: the first bad PNG, naming ``split``, the file and the segments.
        """
        segments = 0
        for index, ann in enumerate(self.records):
            info = self.image_info[int(ann["image_id"])]
            with Image.open(self.images_dir / info["file_name"]) as image:
                width, height = image.size
            try:
                self._read_ids(index, (height, width))
            except ValueError as err:
                raise ValueError(f"{split}: {err}") from err
            segments += len(ann["segments_info"])
        return {"files": len(self.records), "segments": segments}

    def _read_ids(self, index: int, image_size: tuple[int, int]) -> np.ndarray:
        """(H, W) segment ids of the PNG of record ``index``, checked against its segments and image size."""
        ann = self.records[index]
        info = self.image_info[int(ann["image_id"])]
        png_path = self.panoptic_dir / ann["file_name"]
        try:
            with Image.open(png_path) as png:
                ids = rgb_to_id(np.asarray(png.convert("RGB")))
        except OSError as err:
            raise ValueError(f"{png_path}: cannot read the panoptic PNG ({err})") from err
        if ids.shape != tuple(image_size):
            raise ValueError(
                f"{png_path}: the panoptic PNG is {ids.shape[1]}x{ids.shape[0]} but its image {info['file_name']} is "
                f"{image_size[1]}x{image_size[0]}"
            )
        listed = check_panoptic_segments(ids, ann["segments_info"], str(png_path))
        absent = sorted(set(listed) - set(np.unique(ids).tolist()))
        if absent and len(absent) == len(listed):
            raise ValueError(
                f"{png_path} (image {ann['image_id']}): the PNG has no segment pixel (all void) but segments_info "
                f"lists {len(listed)} segments; the PNG is blank, or its colours do not encode the segment ids as "
                "R + 256 G + 256^2 B. Re-export the PNG"
            )
        if absent:
            raise ValueError(
                f"{png_path} (image {ann['image_id']}): segments {absent[:10]} of segments_info have no pixel in the "
                "PNG; they would be ignored in training and in PQ. Remove them from segments_info, or re-export the "
                "PNG with them"
            )
        return ids

    def load_panoptic(self, index: int) -> PanopticSample:
        ann = self.records[index]
        info = self.image_info[int(ann["image_id"])]
        image_path = self.images_dir / info["file_name"]
        image = read_image(image_path)
        ids = self._read_ids(index, image.shape[:2])
        segments = [
            {"id": int(s["id"]), "label": self.category_to_label[int(s["category_id"])],
             "iscrowd": int(s.get("iscrowd", 0))}
            for s in ann["segments_info"]
        ]  # fmt: skip
        return PanopticSample(image, ids, segments, int(ann["image_id"]), str(image_path))


def write_coco_panoptic(
    root: str | Path,
    samples: Sequence[PanopticSample],
    panoptic_classes: Sequence[str],
    num_things: int,
    label_to_category: Sequence[int] | None = None,
    name: str = "panoptic",
) -> Path:
    """Write samples in the COCO panoptic format: ``root/images/``, ``root/<name>/`` PNGs, ``root/<name>.json``.

    Args:
        root: output folder.
        samples: images with their ids and segments (``label`` 1..T+S).
        panoptic_classes: ``["background", things..., stuff...]``.
        num_things: T.
        label_to_category: category id of each label (default: the label).
        name: the JSON's stem and PNG folder.

    Returns:
        The JSON path (``COCOPanoptic(root / "images", <it>)`` reads it back).
    """
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / name).mkdir(parents=True, exist_ok=True)
    ids_of = list(label_to_category) if label_to_category is not None else list(range(len(panoptic_classes)))
    images, annotations = [], []
    for sample in samples:
        check_panoptic_segments(sample.ids, sample.segments, f"image {sample.image_id}")
        stem = f"{int(sample.image_id):012d}"
        Image.fromarray(sample.image).save(root / "images" / f"{stem}.png")
        Image.fromarray(id_to_rgb(sample.ids)).save(root / name / f"{stem}.png")
        height, width = sample.ids.shape
        images.append({"id": int(sample.image_id), "file_name": f"{stem}.png", "height": height, "width": width})
        info = []
        for seg in sample.segments:
            mask = sample.ids == int(seg["id"])
            box = boxes_from_masks(torch.from_numpy(mask[None]))[0].tolist()
            info.append({
                "id": int(seg["id"]), "category_id": int(ids_of[int(seg["label"])]),
                "iscrowd": int(seg.get("iscrowd", 0)), "area": int(mask.sum()),
                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
            })  # fmt: skip
        annotations.append({"image_id": int(sample.image_id), "file_name": f"{stem}.png", "segments_info": info})
    categories = [
        {"id": int(ids_of[k]), "name": panoptic_classes[k], "isthing": int(k <= num_things)}
        for k in range(1, len(panoptic_classes))
    ]
    path = root / f"{name}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path
