"""Audit of the detection, VOC, VisDrone and COCO panoptic readers: a folder of broken datasets, each refused or named.

``write_broken_datasets`` writes one tiny dataset per case (images written
with PIL) under ``<folder>/<case>/``, each with a ``dataset.json`` that says
which reader builds it and how; ``audit`` walks such a folder and builds each
dataset as training would (the reader, then ``check_labels`` where the
dataset has one), recording whether it was refused, warned about, or accepted
without a word. Every case must be refused with a ``ValueError`` that names
the file and the entry and says how to fix it, or warned about when the data
can be valid; the tests below hold each case to its message.
"""

from __future__ import annotations

import copy
import json
import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

# ---- the valid datasets each case breaks -------------------------------------------------------------

COCO_IMAGES = [
    {"id": 11, "file_name": "a.png", "width": 60, "height": 40},
    {"id": 12, "file_name": "b.png", "width": 60, "height": 40},
]
COCO_CATEGORIES = [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}]
COCO_ANNOTATIONS = [
    {"id": 1, "image_id": 11, "category_id": 3, "bbox": [2, 4, 20, 10], "segmentation": [[2, 4, 22, 4, 22, 14, 2, 14]]},
    # Partly outside the image: valid, the mask decoder clips it.
    {"id": 2, "image_id": 11, "category_id": 7, "bbox": [30, 10, 30, 20], "segmentation": [[30, 10, 70, 10, 50, 30]]},
    {"id": 3, "image_id": 12, "category_id": 7, "bbox": [5, 5, 10, 10], "iscrowd": 1,
     "segmentation": {"size": [40, 60], "counts": [205, 10, 30, 10, 2145]}},
    # Compressed RLE (pycocotools.mask.encode of the 10x10 square at x, y = 20..29, 5..14).
    {"id": 4, "image_id": 12, "category_id": 3, "bbox": [20, 5, 10, 10],
     "segmentation": {"size": [40, 60], "counts": "Ui0:n000000000000000000[U1"}},
]  # fmt: skip


def _coco(root: Path, edit: Callable[[dict], None]) -> dict[str, Any]:
    data = copy.deepcopy({"images": COCO_IMAGES, "annotations": COCO_ANNOTATIONS, "categories": COCO_CATEGORIES})
    edit(data)
    (root / "images").mkdir(parents=True)
    for image in COCO_IMAGES:
        Image.fromarray(np.full((40, 60, 3), 100, np.uint8)).save(root / "images" / image["file_name"])
    (root / "instances.json").write_text(json.dumps(data))
    return {"reader": "detection", "dataset": {"type": "coco", "images": "images", "annotations": "instances.json"}}


VOC_OBJECT = (
    "<object><name>dog</name><difficult>0</difficult>"
    "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>10</xmax><ymax>20</ymax></bndbox></object>"
)
VOC_XML = f"<annotation><size><width>50</width><height>30</height></size>{VOC_OBJECT}</annotation>"


def _voc(root: Path, first_xml: str) -> dict[str, Any]:
    """Two 50x30 images; the first one's XML is ``first_xml``, the second a valid one."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    for name, xml in (("000001", first_xml), ("000002", VOC_XML)):
        Image.fromarray(np.zeros((30, 50, 3), np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
        (root / "Annotations" / f"{name}.xml").write_text(xml)
    (root / "ImageSets/Main/val.txt").write_text("000001\n000002\n")
    return {"reader": "detection", "dataset": {"type": "voc", "root": ".", "split": "val"}}


def _visdrone(root: Path, lines: list[str]) -> dict[str, Any]:
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(root / "images" / "0000001_00000_d_0000001.jpg")
    (root / "annotations" / "0000001_00000_d_0000001.txt").write_text("\n".join(lines) + "\n")
    return {"reader": "detection", "dataset": {"type": "visdrone", "root": "."}}


def _panoptic(root: Path, edit: Callable[[dict, np.ndarray], np.ndarray] | None = None) -> dict[str, Any]:
    """Two 8x10 images: a thing (category 5), a crowd of it, stuff (category 12) and void."""
    from msfusion.data.coco_panoptic import id_to_rgb

    (root / "images").mkdir(parents=True)
    (root / "panoptic").mkdir()
    ids = np.zeros((8, 10), np.int64)
    ids[1:4, 1:5] = 300
    ids[5:8, 6:9] = 7
    ids[:, 9] = 65538
    segments = [
        {"id": 300, "category_id": 5, "iscrowd": 0, "bbox": [1, 1, 4, 3], "area": 12},
        {"id": 7, "category_id": 5, "iscrowd": 1, "bbox": [6, 5, 3, 3], "area": 9},
        {"id": 65538, "category_id": 12, "iscrowd": 0, "bbox": [9, 0, 1, 8], "area": 8},
    ]
    data: dict[str, Any] = {"images": [], "annotations": [], "categories": [
        {"id": 12, "name": "grass", "isthing": 0}, {"id": 5, "name": "dog", "isthing": 1},
    ]}  # fmt: skip
    for image_id in (3, 9):
        data["images"].append({"id": image_id, "file_name": f"{image_id}.jpg", "height": 8, "width": 10})
        data["annotations"].append(
            {"image_id": image_id, "file_name": f"{image_id}.png", "segments_info": copy.deepcopy(segments)}
        )
    first = edit(data, ids.copy()) if edit is not None else ids
    for image_id, png in ((3, first), (9, ids)):
        Image.fromarray(np.full((8, 10, 3), 40, np.uint8)).save(root / "images" / f"{image_id}.jpg")
        Image.fromarray(id_to_rgb(png)).save(root / "panoptic" / f"{image_id}.png")
    (root / "panoptic.json").write_text(json.dumps(data))
    return {"reader": "panoptic", "dataset": {"type": "coco_panoptic", "images": "images",
                                              "annotations": "panoptic.json", "panoptic": "panoptic"}}  # fmt: skip


def _set(path: str, value: Any) -> Callable[[dict], None]:
    """An edit setting ``data[a][i][k] = value`` for ``path = "a.i.k"`` (``DELETE`` removes the key)."""

    def edit(data: dict) -> None:
        *parents, last = (int(p) if p.isdigit() else p for p in path.split("."))
        node = data
        for key in parents:
            node = node[key]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value

    return edit


DELETE = object()


def _scale_boxes(data: dict) -> None:
    for ann in data["annotations"]:
        x, y, w, h = ann["bbox"]
        ann["bbox"] = [x / 60, y / 40, w / 60, h / 40]


def _scale_polygons(data: dict) -> None:
    """Polygons as a YOLO-style export writes them: x / width and y / height, within 0..1."""
    for ann in data["annotations"]:
        if isinstance(ann["segmentation"], list):
            ann["segmentation"] = [
                [min(v / (60 if i % 2 == 0 else 40), 1.0) for i, v in enumerate(polygon)]
                for polygon in ann["segmentation"]
            ]


def _extra_segment(data: dict, ids: np.ndarray) -> np.ndarray:
    data["annotations"][0]["segments_info"].append({"id": 999, "category_id": 12, "iscrowd": 0, "area": 5})
    return ids


def _all_void(data: dict, ids: np.ndarray) -> np.ndarray:
    return np.zeros_like(ids)


def _annotated_twice(data: dict, ids: np.ndarray) -> np.ndarray:
    data["annotations"].append(dict(copy.deepcopy(data["annotations"][0]), file_name="3_again.png"))
    return ids


def _area_zero(data: dict, ids: np.ndarray) -> np.ndarray:
    data["annotations"][0]["segments_info"][0]["area"] = 0
    return ids


def _categories_null(data: dict, ids: np.ndarray) -> np.ndarray:
    data["categories"] = None
    return ids


BOMB = (
    '<?xml version="1.0"?><!DOCTYPE annotation [<!ENTITY a "aaaaaaaaaa">'
    + "".join(f'<!ENTITY {c} "{("&" + p + ";") * 10}">' for p, c in zip("abcdefgh", "bcdefghi", strict=True))
    + f"]><annotation><size><width>50</width><height>30</height></size>{VOC_OBJECT}<x>&i;</x></annotation>"
)
EXTERNAL = (
    '<?xml version="1.0"?><!DOCTYPE annotation [<!ENTITY secret SYSTEM "file:///etc/hostname">]>'
    f"<annotation><size><width>50</width><height>30</height></size>{VOC_OBJECT}<x>&secret;</x></annotation>"
)

# case -> (writer, expected outcome, a regex the message must match: the file, the entry, the fix).
CASES: dict[str, tuple[Callable[[Path], dict], str, str]] = {
    # -- COCO instances JSON --
    "coco_duplicate_image_id": (
        lambda r: _coco(r, _set("images.1.id", 11)), "error",
        r"instances\.json: images\[1\], image 11: image id 11 is used twice \(a\.png and b\.png\).*own id"),
    "coco_iscrowd_string": (
        lambda r: _coco(r, _set("annotations.0.iscrowd", "0")), "error",
        r"image 11 \(a\.png\), annotation 1: iscrowd must be the number 0 or 1, got '0'"),
    "coco_annotations_empty": (
        lambda r: _coco(r, _set("annotations", [])), "error", r"instances\.json: 'annotations' is empty.*Point"),
    "coco_annotations_null": (
        lambda r: _coco(r, _set("annotations", None)), "error",
        r"instances\.json: a COCO instances JSON needs the 'annotations' list, got None"),
    "coco_boxes_in_0_1_units": (
        lambda r: _coco(r, _scale_boxes), "error",
        r"image 11 \(a\.png\), annotation 1: every box .* 0-1 units.*Multiply x and width by the image width"),
    "coco_polygons_in_0_1_units": (
        lambda r: _coco(r, _scale_polygons), "error",
        r"image 11 \(a\.png\), annotation 1: every polygon point .* 0-1 units.*Multiply each x by the image width"),
    "coco_polygon_outside_image": (
        lambda r: _coco(r, _set("annotations.1.segmentation", [[100, 10, 120, 10, 110, 30]])), "error",
        r"image 11 \(a\.png\), annotation 2: a polygon lies entirely outside the 60x40 image"),
    "coco_bbox_strings": (
        lambda r: _coco(r, _set("annotations.0.bbox", ["2", "4", "20", "10"])), "error",
        r"annotation 1: bbox \['2', '4', '20', '10'\] must hold four JSON numbers"),
    "coco_bbox_decimal_strings": (
        lambda r: _coco(r, _set("annotations.0.bbox", ["2.5", "4.0", "20.5", "10"])), "error",
        r"annotation 1: bbox .* must hold four JSON numbers"),
    "coco_bbox_nan": (
        lambda r: _coco(r, _set("annotations.0.bbox", [2, 4, float("nan"), 10])), "error",
        r"annotation 1: bbox \[2, 4, nan, 10\] is not finite"),
    "coco_duplicate_annotation_id": (
        lambda r: _coco(r, _set("annotations.1.id", 1)), "error",
        r"image 11 \(a\.png\), annotation 1: annotation id 1 is used twice .*Number the annotations uniquely"),
    "coco_duplicate_category_id": (
        lambda r: _coco(r, lambda d: d["categories"].append({"id": 3, "name": "circle"})), "error",
        r"instances\.json: categories\[2\]: category id 3 is used twice \('cat' and 'circle'\)"),
    "coco_string_image_id_in_annotation": (
        lambda r: _coco(r, _set("annotations.0.image_id", "11")), "error",
        r"annotation 1: image_id '11' is not an integer"),
    "coco_string_image_id_in_images": (
        lambda r: _coco(r, lambda d: [a.update(image_id=str(a["image_id"])) for a in d["annotations"]]
                        and [im.update(id=str(im["id"])) for im in d["images"]]), "error",
        r"instances\.json: images\[0\] \(a\.png\): image id '11' is not an integer"),
    "coco_garbage_rle": (
        lambda r: _coco(r, _set("annotations.2.segmentation.counts", "garbage!!")), "error",
        r"image 12 \(b\.png\), annotation 3: the RLE counts string is not valid compressed RLE"),
    "coco_rle_of_wrong_size": (
        lambda r: _coco(r, _set("annotations.2.segmentation.size", [30, 60])), "error",
        r"annotation 3: the RLE's size \[30, 60\] is not the image's \[height, width\] = \[40, 60\]"),
    "coco_rle_truncated": (
        lambda r: _coco(r, _set("annotations.2.segmentation.counts", [205, 10, 30, 10])), "error",
        r"annotation 3: the RLE's runs cover 255 pixels, not the image's 40x60 = 2400"),
    "coco_annotation_without_id": (
        lambda r: _coco(r, _set("annotations.1.id", DELETE)), "error",
        r"image 11 \(a\.png\), annotation None: the annotation has no 'id'"),
    "coco_image_without_width": (
        lambda r: _coco(r, _set("images.0.width", DELETE)), "error",
        r"instances\.json: images\[0\], image 11: no 'width'"),
    # -- VOC XML --
    "voc_size_differs_from_image": (
        lambda r: _voc(r, VOC_XML.replace("<width>50", "<width>100").replace("<height>30", "<height>60")), "error",
        r"VOC image 000001 \(id 1, .*000001\.xml\): <size> says 100x60 but 000001\.jpg is 50x30"),
    "voc_file_without_objects": (
        lambda r: _voc(r, VOC_XML.replace(VOC_OBJECT, "")), "warning",
        r"val\.txt: 1 of 2 annotation files have no <object> \(e\.g\. 000001\.xml\)"),
    "voc_truncated_xml": (
        lambda r: _voc(r, VOC_XML[:70]), "error",
        r"VOC image 000001 \(id 1, .*000001\.xml\): it is not well-formed XML .*truncated"),
    "voc_object_without_bndbox": (
        lambda r: _voc(r, re.sub("<bndbox>.*</bndbox>", "", VOC_XML)), "error",
        r"000001\.xml\), object 0: no <bndbox>"),
    "voc_entity_bomb": (
        lambda r: _voc(r, BOMB), "error", r"000001\.xml\): it declares a DOCTYPE or entities.*remove the <!DOCTYPE"),
    "voc_external_entity": (
        lambda r: _voc(r, EXTERNAL), "error", r"000001\.xml\): it declares a DOCTYPE or entities"),
    # -- VisDrone --
    "visdrone_box_outside_image": (
        lambda r: _visdrone(r, ["4,6,10,8,1,4,0,0", "70,10,8,8,1,4,0,0"]), "error",
        r"0000001_00000_d_0000001\.txt, line 2: box .* lies entirely outside the 64x48 image"),
    # -- COCO panoptic --
    "panoptic_segment_without_pixels": (
        lambda r: _panoptic(r, _extra_segment), "error",
        r"3\.png \(image 3\): segments \[999\] of segments_info have no pixel in the PNG.*Remove them"),
    "panoptic_segment_of_area_zero": (
        lambda r: _panoptic(r, _area_zero), "error",
        r"panoptic\.json: 3\.png \(image 3\), segment 300: the JSON gives the segment an area of 0"),
    "panoptic_categories_null": (
        lambda r: _panoptic(r, _categories_null), "error",
        r"panoptic\.json: a COCO panoptic JSON needs the 'categories' list, got None"),
    "panoptic_image_annotated_twice": (
        lambda r: _panoptic(r, _annotated_twice), "error",
        r"panoptic\.json: image 3 \(3\.jpg\) is annotated twice \(3\.png and 3_again\.png\)"),
    "panoptic_all_void_png": (
        lambda r: _panoptic(r, _all_void), "error",
        r"3\.png \(image 3\): the PNG has no segment pixel \(all void\) but segments_info lists 3 segments"),
}  # fmt: skip


def write_broken_datasets(folder: Path) -> list[str]:
    """Write every case of ``CASES`` under ``folder/<case>/`` (with its ``dataset.json``); returns the cases."""
    for case, (writer, _, _) in CASES.items():
        root = folder / case
        spec = writer(root)
        (root / "dataset.json").write_text(json.dumps(spec))
    return list(CASES)


def _build(root: Path, spec: dict) -> Any:
    from msfusion.data import build_detection_dataset, build_panoptic_dataset

    description = dict(spec["dataset"])
    for key in ("images", "annotations", "root", "panoptic"):
        if key in description:
            description[key] = str(root / description[key])
    build = build_detection_dataset if spec["reader"] == "detection" else build_panoptic_dataset
    dataset = build(description)
    if callable(getattr(dataset, "check_labels", None)):
        dataset.check_labels("data.train")  # what training runs before its first step
    return dataset


def audit(folder: Path) -> dict[str, tuple[str, str]]:
    """Build each dataset under ``folder``; ``{case: (outcome, message)}``.

    outcome: ``"error"`` (a ``ValueError``), ``"crash"`` (any other exception:
    a raw traceback), ``"warning"`` or ``"accepted"`` (nothing said).
    """
    outcomes = {}
    for root in sorted(p.parent for p in folder.glob("*/dataset.json")):
        spec = json.loads((root / "dataset.json").read_text())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                _build(root, spec)
            except ValueError as err:
                outcomes[root.name] = ("error", str(err))
                continue
            except Exception as err:  # noqa: BLE001 - the audit records raw tracebacks as such
                outcomes[root.name] = ("crash", f"{type(err).__name__}: {err}")
                continue
        said = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        outcomes[root.name] = ("warning", " | ".join(said)) if said else ("accepted", "")
    return outcomes


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str]]:
    folder = tmp_path_factory.mktemp("broken")
    write_broken_datasets(folder)
    return audit(folder)


@pytest.mark.parametrize("case", list(CASES))
def test_broken_dataset_is_refused_or_named(audited: dict[str, tuple[str, str]], case: str) -> None:
    outcome, message = audited[case]
    _, expected, pattern = CASES[case]
    assert outcome == expected, f"{case}: expected {expected}, got {outcome}: {message}"
    assert re.search(pattern, message, re.S), f"{case}: {message}"


def test_the_valid_datasets_the_cases_break_are_accepted(tmp_path: Path) -> None:
    """Without the breakage every reader builds its dataset without a word (no case passes by accident)."""
    writers = {"coco": lambda r: _coco(r, lambda d: None), "voc": lambda r: _voc(r, VOC_XML),
               "visdrone": lambda r: _visdrone(r, ["4,6,10,8,1,4,0,0"]), "panoptic": _panoptic}  # fmt: skip
    for name, writer in writers.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "dataset.json").write_text(json.dumps(writer(tmp_path / name)))
    assert audit(tmp_path) == {name: ("accepted", "") for name in writers}
    # The panoptic PNGs were all read and checked before a first step would run.
    spec = json.loads((tmp_path / "panoptic" / "dataset.json").read_text())
    assert _build(tmp_path / "panoptic", spec).check_labels() == {"files": 2, "segments": 6}
