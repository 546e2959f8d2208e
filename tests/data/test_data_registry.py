"""The data registry: every registered dataset of every task builds from a recipe dict, one base, one box helper."""

from __future__ import annotations

import re

import pytest
import torch

from msfusion.data import (
    DATASET_TYPES,
    BaseDataset,
    SegmentationDataset,
    boxes_from_masks,
    build_dataset,
    dataset_types,
    register_dataset,
    registry,
    transform_types,
)
from msfusion.data.coco_panoptic import PanopticDataset
from msfusion.data.detection import DetectionDataset
from msfusion.data.detection_transforms import build_detection_transforms

BASES = {"segmentation": SegmentationDataset, "detection": DetectionDataset, "panoptic": PanopticDataset}
REGISTERED = [(task, name) for task in registry.TASKS for name in dataset_types(task)]
# Small pipelines named the way a recipe names them, one per task.
TRANSFORMS = {
    "segmentation": {"type": "train", "crop_size": 24, "scale": (32, 32)},
    "detection": {"kind": "train", "flip_prob": 1.0},
    "panoptic": {"kind": "train", "flip_prob": 1.0},
}


def test_every_task_registers_its_datasets_and_pipelines() -> None:
    assert set(dataset_types("segmentation")) == {
        *("shapes", "folder", "ade20k", "cityscapes", "voc", "coco_stuff", "pascal_context", "isaid")
    }
    assert set(dataset_types("detection")) == {"shapes", "coco", "voc", "visdrone"}
    assert set(dataset_types("panoptic")) == {"shapes", "coco_panoptic"}
    assert set(transform_types("segmentation")) == {"train", "eval"}
    assert set(transform_types("detection")) == {"train", "eval", "lsj"}


@pytest.mark.parametrize(("task", "name"), REGISTERED, ids=[f"{t}-{n}" for t, n in REGISTERED])
def test_every_registered_dataset_builds_from_a_recipe_dict(task: str, name: str) -> None:
    dataset_cls = registry.get_dataset(name, task)
    # One base and one loading hook for every task.
    assert issubclass(dataset_cls, BASES[task]) and issubclass(dataset_cls, BaseDataset)
    assert not hasattr(dataset_cls, "_load")
    if name != "shapes":
        return  # the public formats need files on disk; their readers have their own tests
    recipe = {"type": "shapes", "root": None, "split": "val", "num_images": 2, "image_size": 32, "seed": 1}
    dataset = build_dataset({**recipe, "transforms": TRANSFORMS[task]}, task=task)
    assert type(dataset) is dataset_cls and len(dataset) == 2
    sample = dataset[1]
    if task == "segmentation":
        assert sample["image"].shape == (3, 24, 24) and sample["mask"].shape == (24, 24)
    else:
        target = sample["target"]
        assert sample["image"].shape == (3, 32, 32) and target["boxes"].shape == (len(target["labels"]), 4)
        # The same image, flipped by the pipeline the dict named.
        plain = torch.from_numpy(dataset.load(1).image).permute(2, 0, 1) / 255
        assert torch.allclose(sample["image"], plain.flip(-1))


@pytest.mark.parametrize("task", registry.TASKS)
def test_unknown_type_lists_the_registered_ones(task: str) -> None:
    with pytest.raises(ValueError, match=f"unknown {task} dataset type 'shapez'.*Did you mean 'shapes'") as error:
        build_dataset({"type": "shapez"}, task=task)
    for name in dataset_types(task):
        assert repr(name) in str(error.value)
    with pytest.raises(ValueError, match="unknown task 'detektion'.*Did you mean 'detection'"):
        build_dataset({"type": "shapes"}, task="detektion")


def test_unknown_pipeline_and_key_are_named_per_task() -> None:
    with pytest.raises(ValueError, match=r"unknown detection transforms type 'jitter'.*\['eval', 'lsj', 'train'\]"):
        build_detection_transforms("jitter")
    # Each pipeline takes its own keys: an LSJ size given to the "train" pipeline was silently unused.
    with pytest.raises(ValueError, match="unknown key 'size' for detection transforms 'train'"):
        build_dataset({"type": "shapes", "num_images": 1, "transforms": {"kind": "train", "size": 64}}, "detection")


def test_a_registered_dataset_is_buildable_by_name() -> None:
    @register_dataset("tiny_test_only", task="segmentation")
    class Tiny(SegmentationDataset):
        def __init__(self, size: int = 4) -> None:
            super().__init__(["a", "b"], [(0, 0, 0), (9, 9, 9)])
            self.size = size

        def __len__(self) -> int:
            return 1

        def load(self, index: int):
            from msfusion.data import RawSample

            image = torch.zeros(self.size, self.size, 3, dtype=torch.uint8).numpy()
            return RawSample(image, image[..., 0], "tiny/0")

    try:
        assert "tiny_test_only" in DATASET_TYPES  # the package's view follows the registry
        dataset = build_dataset({"type": "tiny_test_only", "size": 6})
        assert dataset[0]["image"].shape == (3, 6, 6)
        assert register_dataset("tiny_test_only")(Tiny) is Tiny  # the same class again (a re-import): a no-op
        with pytest.raises(
            ValueError, match="segmentation dataset type 'tiny_test_only' is already registered to .*Tiny"
        ):
            register_dataset("tiny_test_only")(SegmentationDataset)
    finally:
        registry._DATASETS.get("segmentation")._table.pop("tiny_test_only")
    assert "tiny_test_only" not in DATASET_TYPES


@pytest.mark.parametrize("task", registry.TASKS)
def test_a_type_that_is_not_a_name_is_refused_with_the_registered_ones(task: str) -> None:
    # A YAML slip (`type: [shapes]`, `type:` left empty) used to fail as "unhashable type: 'list'".
    for bad in (["shapes"], None, {"shapes": 1}):
        with pytest.raises(
            ValueError, match=rf"unknown {task} dataset type {re.escape(repr(bad))}; choose one of .*'shapes'"
        ):
            build_dataset({"type": bad, "num_images": 1}, task=task)
    # Panoptic datasets run the detection pipelines.
    with pytest.raises(ValueError, match=r"unknown (segmentation|detection) transforms type \['train'\]; choose one"):
        build_dataset({"type": "shapes", "num_images": 1, "transforms": {"type": ["train"]}}, task=task)


def test_boxes_from_masks_pixel_edges_and_empty_masks() -> None:
    masks = torch.zeros(3, 5, 7, dtype=torch.uint8)
    masks[0, 2, 3] = 1  # one pixel
    masks[1, 1:4, 0:7] = 1  # a full-width band
    # masks[2] is empty: the zero box (which every caller drops), never the full image
    boxes = boxes_from_masks(masks)
    assert boxes.dtype == torch.float32
    assert boxes.tolist() == [[3, 2, 4, 3], [0, 1, 7, 4], [0, 0, 0, 0]]
    assert torch.equal(boxes_from_masks(masks.bool()), boxes)
    assert boxes_from_masks(torch.zeros(0, 5, 7, dtype=torch.bool)).shape == (0, 4)


def test_panoptic_dataset_types_is_a_live_view_of_the_registry() -> None:
    from msfusion.data.shapes_panoptic import ShapesPanoptic
    from msfusion.engine.panoptic import PANOPTIC_DATASET_TYPES

    assert {"coco_panoptic", "shapes"} <= set(PANOPTIC_DATASET_TYPES)
    assert PANOPTIC_DATASET_TYPES["shapes"] is ShapesPanoptic
    register_dataset("tiny_panoptic_test_only", task="panoptic")(ShapesPanoptic)
    try:
        assert "tiny_panoptic_test_only" in PANOPTIC_DATASET_TYPES  # registered after the import: it shows
    finally:
        registry._DATASETS.get("panoptic")._table.pop("tiny_panoptic_test_only")
    assert "tiny_panoptic_test_only" not in PANOPTIC_DATASET_TYPES
