"""The synthetic shapes dataset: determinism, splits, scale range, instances."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from msfusion.data import (
    Compose,
    FolderDataset,
    Normalize,
    Pad,
    RandomCrop,
    RandomFlip,
    RandomResize,
    ShapesDataset,
    ToTensor,
    boxes_from_masks,
)

SIZE = 96


def test_same_seed_gives_identical_bytes() -> None:
    first, second = ShapesDataset(num_images=4, seed=3), ShapesDataset(num_images=4, seed=3)
    other = ShapesDataset(num_images=4, seed=4)
    for index in range(4):
        image, mask = first.load_raw(index)
        image2, mask2 = second.load_raw(index)
        assert image.tobytes() == image2.tobytes() and mask.tobytes() == mask2.tobytes()
        assert image.tobytes() != other.load_raw(index)[0].tobytes()


def test_train_and_val_are_disjoint() -> None:
    train = {ShapesDataset("train", 16).load_raw(i)[0].tobytes() for i in range(16)}
    val = {ShapesDataset("val", 16).load_raw(i)[0].tobytes() for i in range(16)}
    assert len(train) == len(val) == 16
    assert not train & val


def test_sample_contract_and_metadata() -> None:
    dataset = ShapesDataset("val", 2, image_size=(SIZE, 2 * SIZE))
    sample = dataset[1]
    assert sample["image"].shape == (3, SIZE, 2 * SIZE) and sample["image"].dtype == torch.float32
    assert sample["mask"].shape == (SIZE, 2 * SIZE) and sample["mask"].dtype == torch.int64
    assert sample["path"] == "shapes/val/1"
    assert "boxes" not in sample
    assert dataset.num_classes == len(dataset.classes) == len(dataset.palette) >= 6
    assert dataset.classes[0] == "background"
    assert len(set(dataset.palette)) == dataset.num_classes


def test_object_sizes_span_small_to_half_image() -> None:
    dataset = ShapesDataset("train", 12, image_size=SIZE, with_instances=True)
    extents = torch.cat(
        [
            (boxes[:, 2:] - boxes[:, :2]).max(dim=1).values
            for boxes in (dataset[i]["boxes"] for i in range(len(dataset)))
        ]
    )
    assert extents.min() < 8
    assert extents.max() >= SIZE / 2
    assert len(extents) >= 3 * len(dataset)


def test_objects_occlude_each_other() -> None:
    dataset = ShapesDataset("train", 12, image_size=SIZE, with_instances=True)
    occluded = 0
    for index in range(len(dataset)):
        masks, _ = dataset.load_instances(index)
        assert not (masks.sum(axis=0) > 1).any()  # visible parts never overlap
        boxes = boxes_from_masks(torch.from_numpy(masks))
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        occluded += int((torch.from_numpy(masks.sum(axis=(1, 2))) < 0.3 * area).sum())
    assert occluded > 0


def _check_instances(sample: dict, num_classes: int) -> None:
    masks, labels, boxes = sample["instance_masks"], sample["labels"], sample["boxes"]
    assert masks.dtype == torch.bool and labels.dtype == torch.int64
    assert boxes.dtype == torch.float32 and boxes.shape == (len(labels), 4)
    assert len(masks) == len(labels) > 0
    assert ((labels >= 1) & (labels < num_classes)).all()
    assert masks.flatten(1).any(dim=1).all()
    for class_id in range(1, num_classes):
        union = masks[labels == class_id].any(dim=0)
        assert torch.equal(union, sample["mask"] == class_id)
    for box, mask in zip(boxes, masks, strict=True):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        expected = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
        assert box.tolist() == [float(v) for v in expected]


def test_instances_match_semantic_mask() -> None:
    dataset = ShapesDataset("train", 6, image_size=SIZE, with_instances=True)
    for index in range(len(dataset)):
        _check_instances(dataset[index], dataset.num_classes)


def test_instances_follow_geometric_transforms() -> None:
    pipeline = Compose(
        [
            RandomResize((SIZE, SIZE), (0.5, 2.0)),
            RandomCrop(64, cat_max_ratio=0.75),
            RandomFlip(0.5),
            Normalize(),
            Pad(64),
            ToTensor(),
        ]
    )
    dataset = ShapesDataset("train", 8, image_size=SIZE, with_instances=True, transforms=pipeline, aug_seed=0)
    for index in range(len(dataset)):
        sample = dataset[index]
        assert sample["image"].shape == (3, 64, 64)
        assert not sample["instance_masks"][:, sample["mask"] == 255].any()
        _check_instances(sample, dataset.num_classes)


def test_write_to_folder_round_trips(tmp_path: Path) -> None:
    shapes = ShapesDataset("val", 3, image_size=32)
    folder = FolderDataset(shapes.write_to_folder(tmp_path / "shapes"), split="val")
    assert folder.classes == shapes.classes and folder.palette == shapes.palette
    for index in range(3):
        for array, expected in zip(folder.load_raw(index), shapes.load_raw(index), strict=True):
            np.testing.assert_array_equal(array, expected)


def test_generation_is_fast() -> None:
    dataset = ShapesDataset("train", 30, image_size=128)
    dataset.load_raw(0)
    start = time.perf_counter()
    for index in range(len(dataset)):
        dataset.load_raw(index)
    assert (time.perf_counter() - start) / len(dataset) < 0.05


def test_colour_is_informative_but_not_a_giveaway() -> None:
    """Nearest class-hue accuracy on object pixels: a strong cue, but not a complete one."""
    dataset = ShapesDataset("train", 24, image_size=SIZE)
    hues = np.array([0.0, 60.0, 120.0, 180.0, 240.0, 300.0])
    correct = total = 0
    for index in range(len(dataset)):
        image, mask = dataset.load_raw(index)
        rgb = image[mask > 0].astype(np.float64)
        hue = np.degrees(np.arctan2(np.sqrt(3) * (rgb[:, 1] - rgb[:, 2]),
                                    2 * rgb[:, 0] - rgb[:, 1] - rgb[:, 2])) % 360  # fmt: skip
        distance = np.abs((hue[:, None] - hues[None] + 180) % 360 - 180)
        correct += int((distance.argmin(axis=1) + 1 == mask[mask > 0]).sum())
        total += rgb.shape[0]
    assert 0.8 < correct / total < 0.99


@pytest.mark.parametrize("kwargs", [{"split": "training"}, {"num_images": 0}, {"image_size": 8}])
def test_rejects_bad_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        ShapesDataset(**kwargs)
