"""SegNeXt's training/eval transforms: alignment, label safety, padding, crops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from msfusion.data import (
    IMAGENET_MEAN,
    Normalize,
    Pad,
    PhotoMetricDistortion,
    RandomCrop,
    RandomFlip,
    RandomResize,
    ShapesDataset,
    ToTensor,
    build_eval_transforms,
    build_train_transforms,
    denormalize,
)
from msfusion.data.segmentation_transforms import rescale_size


def square_sample(height: int = 60, width: int = 80) -> dict:
    """A bright square off the centre (flips matter) on black, label 1 on 0."""
    image = np.zeros((height, width, 3), np.uint8)
    mask = np.zeros((height, width), np.uint8)
    image[10:40, 45:75] = 255
    mask[10:40, 45:75] = 1
    return {"image": image, "mask": mask}


@pytest.mark.parametrize("seed", range(12))
def test_image_and_mask_stay_aligned(seed: int) -> None:
    pipeline = build_train_transforms(
        crop_size=48, scale=(80, 60), ratio_range=(0.5, 2.0), cat_max_ratio=0.75,
        photometric=False,
    )  # fmt: skip
    out = pipeline(square_sample(), np.random.default_rng(seed))
    bright = denormalize(out["image"]).mean(axis=2) > 127
    label = out["mask"].numpy()
    assert out["image"].shape == (3, 48, 48) and label.shape == (48, 48)
    if (label == 1).sum() < 20:
        return
    agreement = (bright == (label == 1))[label != 255].mean()
    assert agreement > 0.97


def test_flip_moves_image_and_mask_together() -> None:
    sample = square_sample()
    flipper = RandomFlip(prob=1.0)
    out = flipper(sample, np.random.default_rng(0))
    assert out["mask"][20, 10] == 1 and out["mask"][20, 70] == 0
    assert (out["image"][..., 0] == 255).sum() == (out["mask"] == 1).sum()
    assert ((out["image"][..., 0] == 255) == (out["mask"] == 1)).all()
    assert RandomFlip(prob=0.0)(sample, np.random.default_rng(0)) is sample


def test_masks_use_nearest_neighbour() -> None:
    rng = np.random.default_rng(0)
    mask = rng.choice(np.array([0, 3, 7], np.uint8), size=(37, 53))
    sample = {"image": rng.integers(0, 256, (37, 53, 3), dtype=np.uint8), "mask": mask}
    resize = RandomResize(scale=(53, 37), ratio_range=(0.3, 3.0))
    shapes = set()
    for seed in range(10):
        out = resize(sample, np.random.default_rng(seed))
        assert set(np.unique(out["mask"]).tolist()) <= {0, 3, 7}
        assert out["mask"].shape == out["image"].shape[:2]
        shapes.add(out["mask"].shape)
    assert len(shapes) > 5


def test_pad_fills_mask_with_ignore_and_image_with_zero() -> None:
    pipeline = build_train_transforms(crop_size=(64, 72), scale=(30, 20), ratio_range=(1.0, 1.0))
    sample = {"image": np.full((20, 30, 3), 200, np.uint8), "mask": np.ones((20, 30), np.uint8)}
    out = pipeline(sample, np.random.default_rng(0))
    assert out["image"].shape == (3, 64, 72) and out["mask"].shape == (64, 72)
    assert (out["mask"][:20, :30] == 1).all()
    assert (out["mask"][20:] == 255).all() and (out["mask"][:, 30:] == 255).all()
    assert (out["image"][:, 20:] == 0).all() and (out["image"][:, :, 30:] == 0).all()


def test_pad_keeps_larger_inputs() -> None:
    sample = {"image": np.zeros((10, 90, 3), np.float32), "mask": np.zeros((10, 90), np.uint8)}
    out = Pad(32)(sample, np.random.default_rng(0))
    assert out["image"].shape == (32, 90, 3) and out["mask"].shape == (32, 90)


def _balanced_share(cat_max_ratio: float, mask: np.ndarray) -> float:
    crop = RandomCrop(20, cat_max_ratio=cat_max_ratio)
    sample = {"image": np.zeros((*mask.shape, 3), np.uint8), "mask": mask}
    balanced = 0
    for seed in range(200):
        out = crop(sample, np.random.default_rng(seed))
        assert out["mask"].shape == (20, 20)
        counts = np.bincount(out["mask"][out["mask"] != 255].ravel(), minlength=2)
        balanced += int((counts > 0).sum() > 1 and counts.max() / counts.sum() < 0.75)
    return balanced / 200


def test_cat_max_ratio_retries_dominated_crops() -> None:
    mask = np.zeros((20, 100), np.uint8)
    mask[:, 80:] = 1  # only crops starting at 66 <= x <= 74 hold < 75 % of one class
    assert _balanced_share(1.0, mask) < 0.25
    assert _balanced_share(0.75, mask) > 0.6


def test_cat_max_ratio_ignores_ignore_index_and_gives_up() -> None:
    mask = np.full((20, 100), 255, np.uint8)
    mask[:, 88:90] = 0
    mask[:, 90:92] = 1  # balanced among labelled pixels, though 255 covers 80 %
    assert _balanced_share(0.75, mask) > 0.6
    uniform = {"image": np.zeros((50, 50, 3), np.uint8), "mask": np.zeros((50, 50), np.uint8)}
    out = RandomCrop(20, cat_max_ratio=0.75)(uniform, np.random.default_rng(0))
    assert out["mask"].shape == (20, 20)  # no balanced crop exists: keeps the last draw


def test_random_resize_follows_mmseg_keep_ratio_rule() -> None:
    assert rescale_size((375, 500), (2048, 512)) == (512, 683)
    assert rescale_size((1024, 2048), (2048, 512)) == (512, 1024)
    resize = RandomResize(scale=(2048, 512), ratio_range=(0.5, 2.0))
    sample = {"image": np.zeros((40, 40, 3), np.uint8), "mask": np.zeros((40, 40), np.uint8)}
    sides = {resize(sample, np.random.default_rng(s))["image"].shape[0] for s in range(40)}
    assert min(sides) >= 256 and max(sides) <= 1024 and len(sides) > 20


def test_photometric_distortion_changes_only_the_image() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    mask = rng.integers(0, 5, (16, 16)).astype(np.uint8)
    distort = PhotoMetricDistortion()
    outs = [distort({"image": image, "mask": mask}, np.random.default_rng(s)) for s in range(8)]
    assert all(o["mask"] is mask and o["image"].dtype == np.uint8 for o in outs)
    assert sum(not np.array_equal(o["image"], image) for o in outs) >= 6
    again = distort({"image": image, "mask": mask}, np.random.default_rng(3))
    np.testing.assert_array_equal(again["image"], outs[3]["image"])


def test_hue_shift_keeps_gray_and_rotates_colour() -> None:
    distort = PhotoMetricDistortion(brightness_delta=0, contrast_range=(1, 1),
                                    saturation_range=(1, 1), hue_delta=18)  # fmt: skip
    image = np.zeros((4, 4, 3), np.uint8)
    image[:2] = (255, 0, 0)
    image[2:] = (128, 128, 128)
    shifted = [distort({"image": image, "mask": None}, np.random.default_rng(s)) for s in range(30)]
    assert all((o["image"][2:] == 128).all() for o in shifted)
    reds = {tuple(o["image"][0, 0]) for o in shifted}
    assert len(reds) > 3 and all(max(r) == 255 for r in reds)


def test_normalize_and_denormalize_round_trip() -> None:
    image = np.random.default_rng(0).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    normalised = Normalize()({"image": image, "mask": np.zeros((8, 9), np.uint8)}, None)
    tensor = ToTensor()(normalised, None)["image"]
    assert tensor.shape == (3, 8, 9)
    expected = (image[0, 0, 0] - IMAGENET_MEAN[0]) / 58.395
    assert tensor[0, 0, 0].item() == pytest.approx(expected, abs=1e-5)
    np.testing.assert_array_equal(denormalize(tensor), image)


def test_to_tensor_requires_normalize() -> None:
    with pytest.raises(TypeError, match="Normalize"):
        ToTensor()(square_sample(), None)


def test_eval_transforms_resize_image_and_keep_mask_by_default() -> None:
    sample = square_sample(60, 80)
    out = build_eval_transforms(scale=(40, 30))(sample, np.random.default_rng(0))
    assert out["image"].shape == (3, 30, 40) and out["mask"].shape == (60, 80)
    out = build_eval_transforms(scale=(40, 30), resize_mask=True)(sample, None)
    assert out["mask"].shape == (30, 40)
    out = build_eval_transforms()(sample, None)
    assert out["image"].shape == (3, 60, 80) and out["mask"].dtype == torch.int64


def test_training_is_reproducible_given_aug_seed() -> None:
    pipeline = build_train_transforms(crop_size=48, scale=(64, 64))
    first = ShapesDataset("train", 2, image_size=64, transforms=pipeline, aug_seed=1)
    second = ShapesDataset("train", 2, image_size=64, transforms=pipeline, aug_seed=1)
    assert torch.equal(first[0]["image"], second[0]["image"])
    assert torch.equal(first[0]["mask"], second[0]["mask"])
    first.set_epoch(1)
    assert not torch.equal(first[0]["image"], second[0]["image"])


def test_training_is_reproducible_given_torch_seed() -> None:
    pipeline = build_train_transforms(crop_size=48, scale=(64, 64))
    dataset = ShapesDataset("train", 2, image_size=64, transforms=pipeline)
    torch.manual_seed(0)
    first = dataset[0]["image"]
    torch.manual_seed(0)
    assert torch.equal(first, dataset[0]["image"])
    assert not torch.equal(first, dataset[0]["image"])


class ScriptedRng:
    """Replays fixed draws, to pin the order in which a transform draws."""

    def __init__(self, integers: list[int], uniforms: list[float]) -> None:
        self._integers, self._uniforms = list(integers), list(uniforms)

    def integers(self, low: int, high: int | None = None) -> int:
        return self._integers.pop(0)

    def uniform(self, low: float, high: float) -> float:
        return self._uniforms.pop(0)


def test_photometric_distortion_follows_mmseg_draw_order() -> None:
    image = np.array([[[100, 50, 20]]], np.uint8)
    distort = PhotoMetricDistortion()
    # brightness on (+10); mode 0 = contrast last; saturation, hue off; contrast on (x2)
    rng = ScriptedRng(integers=[1, 0, 0, 0, 1], uniforms=[10.0, 2.0])
    out = distort({"image": image, "mask": None}, rng)["image"]
    np.testing.assert_array_equal(out, [[[220, 120, 60]]])
    # brightness off; mode 1 = contrast second, here off; saturation on (x0)
    rng = ScriptedRng(integers=[0, 1, 0, 1, 0], uniforms=[0.0])
    out = distort({"image": image, "mask": None}, rng)["image"]
    np.testing.assert_array_equal(out, [[[100, 100, 100]]])
