"""build_dataset from config dicts, and collate_segmentation for DataLoaders."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from msfusion.data import (
    DATASET_TYPES,
    ShapesDataset,
    build_dataset,
    collate_segmentation,
)


def test_builds_shapes_with_transform_config() -> None:
    dataset = build_dataset(
        {
            "type": "shapes",
            "root": None,
            "split": "val",
            "num_images": 3,
            "image_size": 64,
            "transforms": {"type": "train", "crop_size": 32, "scale": (64, 64)},
        }
    )
    assert isinstance(dataset, ShapesDataset) and len(dataset) == 3
    assert dataset[0]["image"].shape == (3, 32, 32)


def test_every_documented_type_is_registered() -> None:
    expected = {"shapes", "folder", "ade20k", "cityscapes", "voc", "coco_stuff"}
    assert expected | {"pascal_context", "isaid"} == set(DATASET_TYPES)


def test_unknown_type_lists_types_and_suggests() -> None:
    with pytest.raises(ValueError, match="Did you mean 'cityscapes'") as error:
        build_dataset({"type": "citiscapes", "root": "x"})
    assert "ade20k" in str(error.value) and "isaid" in str(error.value)
    with pytest.raises(ValueError, match="unknown segmentation dataset type None"):
        build_dataset({"root": "x"})


def test_unknown_key_is_named_with_allowed_keys() -> None:
    with pytest.raises(ValueError, match="'num_image'.*num_images.*Did you mean 'num_images'"):
        build_dataset({"type": "shapes", "num_image": 3})
    with pytest.raises(ValueError, match="'crop'.*crop_size"):
        build_dataset({"type": "shapes", "transforms": {"type": "train", "crop": 3}})
    with pytest.raises(ValueError, match="unknown segmentation transforms type 'test'"):
        build_dataset({"type": "shapes", "transforms": {"type": "test"}})


def test_collate_pads_to_the_largest_sample() -> None:
    small = {"image": torch.ones(3, 4, 5), "mask": torch.zeros(4, 5, dtype=torch.long), "path": "a"}
    large = {"image": torch.ones(3, 6, 3), "mask": torch.ones(6, 3, dtype=torch.long), "path": "b"}
    batch = collate_segmentation([small, large])
    assert batch["image"].shape == (2, 3, 6, 5) and batch["mask"].shape == (2, 6, 5)
    assert batch["path"] == ["a", "b"]
    assert (batch["image"][0, :, 4:] == 0).all() and (batch["mask"][0, 4:] == 255).all()
    assert (batch["image"][1, :, :, 3:] == 0).all() and (batch["mask"][1, :, 3:] == 255).all()
    assert (batch["mask"][0, :4, :5] == 0).all() and (batch["image"][1, :, :6, :3] == 1).all()


def test_dataloader_batches_instances_as_lists() -> None:
    dataset = ShapesDataset("train", 4, image_size=48, with_instances=True)
    loader = DataLoader(dataset, batch_size=2, collate_fn=collate_segmentation)
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 3, 48, 48) and batch["mask"].dtype == torch.int64
    assert len(batch["boxes"]) == len(batch["labels"]) == len(batch["instance_masks"]) == 2
    assert batch["boxes"][0].shape[1] == 4
    assert batch["instance_masks"][1].shape[1:] == (48, 48)
