"""Detection data: COCO-format checks and id mapping, VOC XML, shapes split, LSJ and copy-paste consistency."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from msfusion.data import boxes_from_masks, build_detection_dataset
from msfusion.data.coco_detection import BadAnnotationError, COCODetection
from msfusion.data.detection import ShapesDetection, collate_detection
from msfusion.data.detection_transforms import CopyPaste, build_detection_transforms, to_tv_target
from msfusion.data.voc_detection import VOCDetection


def write_coco(root: Path, annotations: list[dict], images: list[dict] | None = None) -> tuple[Path, Path]:
    """Two 40x60 images and categories with the non-contiguous ids 3 ("cat") and 7 ("dog")."""
    images = images or [
        {"id": 11, "file_name": "a.png", "width": 60, "height": 40},
        {"id": 12, "file_name": "b.png", "width": 60, "height": 40},
    ]
    folder = root / "images"
    folder.mkdir(exist_ok=True)
    for image in images:
        Image.fromarray(np.full((40, 60, 3), 100, np.uint8)).save(folder / image["file_name"])
    data = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": 7, "name": "dog"}, {"id": 3, "name": "cat"}],
    }
    path = root / "instances.json"
    path.write_text(json.dumps(data))
    return folder, path


GOOD = [
    {"id": 1, "image_id": 11, "category_id": 3, "bbox": [2, 4, 20, 10], "segmentation": [[2, 4, 22, 4, 22, 14, 2, 14]]},
    {"id": 2, "image_id": 11, "category_id": 7, "bbox": [30, 10, 20, 20], "segmentation": [[30, 10, 50, 10, 40, 30]]},
    {"id": 3, "image_id": 12, "category_id": 7, "bbox": [5, 5, 10, 10], "iscrowd": 1,
     "segmentation": {"size": [40, 60], "counts": [205, 10, 30, 10, 2145]}},
]  # fmt: skip


def test_coco_maps_non_contiguous_ids_both_ways(tmp_path: Path) -> None:
    folder, path = write_coco(tmp_path, GOOD)
    ds = COCODetection(folder, path)
    assert ds.classes == ["background", "cat", "dog"]
    assert ds.label_to_category == [0, 3, 7] and ds.category_to_label == {3: 1, 7: 2}
    sample = ds[0]
    assert sample["target"]["labels"].tolist() == [1, 2]
    assert sample["target"]["boxes"][0].tolist() == [2, 4, 22, 14]
    masks = sample["target"]["masks"]
    assert masks.shape == (2, 40, 60) and masks[0, 4:14, 2:22].all() and masks[0].sum() == 200
    # The crowd of image 12 is not a training target, but stays in the ground truth for evaluation.
    assert len(ds[1]["target"]["labels"]) == 0
    assert len(ds.coco_gt().getAnnIds(imgIds=[12], iscrowd=True)) == 1


@pytest.mark.parametrize(
    "bad,message",
    [
        ({"bbox": [2, 4, 0, 10]}, "zero or negative size"),
        ({"bbox": [50, 4, 30, 10]}, "outside"),
        ({"category_id": 5}, "category id 5 is not in"),
        ({"segmentation": [[2, 4, 22, 4]]}, "at least three"),
    ],
)
def test_coco_bad_annotations_name_image_and_annotation(tmp_path: Path, bad: dict, message: str) -> None:
    anns = [dict(GOOD[0], **bad), GOOD[1]]
    folder, path = write_coco(tmp_path, anns)
    with pytest.raises(BadAnnotationError, match=message) as info:
        COCODetection(folder, path)
    assert "image 11 (a.png), annotation 1" in str(info.value) and "skip" in str(info.value)
    with pytest.warns(UserWarning, match="skipped 1"):
        ds = COCODetection(folder, path, on_bad_annotation="skip")
    assert ds[0]["target"]["labels"].tolist() == [2]


def test_coco_missing_image_file(tmp_path: Path) -> None:
    folder, path = write_coco(tmp_path, GOOD[:2])
    (folder / "b.png").unlink()
    with pytest.raises(BadAnnotationError, match=r"image 12 \(b.png\) is listed in the JSON but missing"):
        COCODetection(folder, path)
    with pytest.warns(UserWarning):
        assert len(COCODetection(folder, path, on_bad_annotation="skip")) == 1


def test_voc_xml(tmp_path: Path) -> None:
    root = tmp_path / "VOC2007"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    Image.fromarray(np.zeros((30, 50, 3), np.uint8)).save(root / "JPEGImages" / "000001.jpg")
    (root / "ImageSets/Main/val.txt").write_text("000001\n")
    objects = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
        f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, d, b in (("dog", 0, (1, 1, 10, 20)), ("cat", 1, (5, 5, 40, 25)))
    )
    xml = f"<annotation><size><width>50</width><height>30</height></size>{objects}</annotation>"
    (root / "Annotations/000001.xml").write_text(xml)
    ds = VOCDetection(root, "val")
    sample = ds[0]
    # 1-based inclusive pixel indices -> pixel edges; the difficult cat is not a training target.
    assert sample["target"]["boxes"].tolist() == [[0, 0, 10, 20]]
    assert sample["target"]["labels"].tolist() == [12]
    assert len(ds.coco_gt().getAnnIds(iscrowd=True)) == 1
    (root / "Annotations/000001.xml").write_text(xml.replace("<name>dog", "<name>wolf"))
    with pytest.raises(BadAnnotationError, match="VOC image 000001 .*object 0: class 'wolf'"):
        VOCDetection(root, "val")


def test_shapes_detection_split_and_collate() -> None:
    ds = build_detection_dataset({"type": "shapes", "split": "val", "num_images": 3, "image_size": 64})
    sample = ds[0]
    assert sample["image"].shape == (3, 64, 64) and sample["image"].max() <= 1.0
    target = sample["target"]
    assert torch.equal(boxes_from_masks(target["masks"]), target["boxes"])
    assert ds.num_classes == 7 and target["labels"].min() >= 1
    batch = collate_detection([ds[0], ds[1]])
    assert len(batch["images"]) == 2 and batch["image_id"] == [1, 2]
    with pytest.raises(ValueError, match="Did you mean 'image_size'"):
        build_detection_dataset({"type": "shapes", "image_sise": 64})


def _sample(size: int = 48):
    masks = torch.zeros(2, size, size, dtype=torch.uint8)
    masks[0, 5:20, 8:30] = 1
    masks[1, 25:40, 20:44] = 1
    image = torch.randint(0, 255, (3, size, size), dtype=torch.uint8)
    from torchvision import tv_tensors

    return tv_tensors.Image(image), to_tv_target(boxes_from_masks(masks), torch.tensor([1, 2]), (size, size), masks)


@pytest.mark.parametrize("seed", range(4))
def test_lsj_keeps_boxes_tight_on_masks(seed: int) -> None:
    transforms = build_detection_transforms("lsj", size=64, scale_range=(0.3, 2.0))
    image, target = _sample()
    out_image, out = transforms(image, target, np.random.default_rng(seed))
    assert out_image.shape == (3, 64, 64) and out_image.dtype == torch.float32
    assert torch.equal(boxes_from_masks(out["masks"]), out["boxes"])
    assert out["masks"].shape[0] == len(out["labels"]) == len(out["boxes"])
    assert bool(out["masks"].flatten(1).any(1).all())


def test_flip_moves_boxes_with_masks() -> None:
    transforms = build_detection_transforms("train", flip_prob=1.0)
    image, target = _sample()
    out_image, out = transforms(image, target, np.random.default_rng(0))
    assert out["boxes"][0].tolist() == [48 - 30, 5, 48 - 8, 20]
    assert torch.equal(boxes_from_masks(out["masks"]), out["boxes"])
    assert torch.allclose(out_image, torch.flip(image.as_subclass(torch.Tensor).float() / 255, dims=[-1]))


def test_copy_paste_with_masks_and_boxes_only() -> None:
    to_float = build_detection_transforms("eval")
    image, target = to_float(*_sample(), np.random.default_rng(0))
    src_image, src = to_float(*_sample(), np.random.default_rng(1))
    src_image = torch.rand_like(src_image)
    src = dict(src, masks=src["masks"].flip(-1), boxes=boxes_from_masks(src["masks"].flip(-1)))
    out_image, out = CopyPaste()(image, target, src_image, src, np.random.default_rng(3))
    assert torch.equal(boxes_from_masks(out["masks"]), out["boxes"])
    from_src = [any(torch.equal(m, s) for s in src["masks"]) for m in out["masks"]]
    assert any(from_src)
    region = out["masks"][torch.tensor(from_src)].bool().any(0)
    assert torch.equal(out_image[:, region], src_image[:, region])
    # The target's own masks lost the pasted pixels.
    assert not (out["masks"][~torch.tensor(from_src)].bool() & region).any()
    no_masks = {k: v for k, v in target.items() if k != "masks"}
    src_boxes = {k: v for k, v in src.items() if k != "masks"}
    _, boxes_only = CopyPaste()(image, no_masks, src_image, src_boxes, np.random.default_rng(3))
    assert "masks" not in boxes_only and len(boxes_only["boxes"]) == len(boxes_only["labels"]) >= 1
    with pytest.raises(ValueError, match="after large-scale jittering"):
        CopyPaste()(image, target, src_image[:, :10], src, np.random.default_rng(0))


def test_dataset_lsj_copy_paste_is_reproducible() -> None:
    kwargs = dict(num_images=4, image_size=64, transforms={"kind": "lsj", "size": 64}, copy_paste=True, aug_seed=5)
    a, b = ShapesDetection("train", **kwargs), ShapesDetection("train", **kwargs)
    first, second = a[2], b[2]
    assert torch.equal(first["image"], second["image"])
    assert torch.equal(first["target"]["boxes"], second["target"]["boxes"])
    assert torch.equal(boxes_from_masks(first["target"]["masks"]), first["target"]["boxes"])
