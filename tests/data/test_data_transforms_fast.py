"""The fast paths of the training transforms: continuous HSV, exact brightness/contrast, torch resizing."""

from __future__ import annotations

import colorsys
import warnings

import numpy as np
import pytest
from PIL import Image
from test_data_transforms import ScriptedRng

from msfusion.data import Normalize, Pad, PhotoMetricDistortion, RandomCrop, RandomFlip, ToTensor
from msfusion.data.segmentation_transforms import (
    _resize_image,
    _resize_labels,
    adjust_saturation_hue,
    build_train_transforms,
)


def _colorsys_reference(image: np.ndarray, saturation: float | None, hue: float | None) -> np.ndarray:
    """The exact continuous HSV transform, pixel by pixel (hue in sextants)."""
    out = np.zeros(image.shape, np.float64)
    for index in np.ndindex(image.shape[:2]):
        h, s, v = colorsys.rgb_to_hsv(*(image[index] / 255.0))
        if saturation is not None:
            s = min(s * saturation, 1.0)
        if hue is not None:
            h = (h + hue / 6.0) % 1.0
        out[index] = np.array(colorsys.hsv_to_rgb(h, s, v)) * 255.0
    return out


@pytest.mark.parametrize(
    ("saturation", "hue"), [(1.3, None), (0.5, None), (None, 0.4), (None, -0.6), (1.5, -0.2), (0.7, 2.5), (1.1, -3.0)]
)
def test_saturation_and_hue_follow_continuous_hsv(saturation: float | None, hue: float | None) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    image[0] = 77  # grey
    image[1, :, :2] = 200  # two channels tie for the maximum
    image[2, :8] = (255, 0, 0)
    out = adjust_saturation_hue(image, saturation, hue)
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_allclose(out, _colorsys_reference(image, saturation, hue), atol=0.5 + 1e-6)
    assert (out[0] == 77).all()  # grey stays grey
    assert (out.max(axis=2) == image.max(axis=2)).all()  # V is kept


def test_identity_settings_leave_the_image_unchanged() -> None:
    image = np.random.default_rng(1).integers(0, 256, (9, 11, 3), dtype=np.uint8)
    np.testing.assert_array_equal(adjust_saturation_hue(image, 1.0, None), image)
    np.testing.assert_array_equal(adjust_saturation_hue(image, None, 0.0), image)
    np.testing.assert_array_equal(adjust_saturation_hue(image, None, 6.0), image)


def _mmseg_convert(image: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    return np.clip(image.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("saturation_on", [0, 1])
def test_brightness_and_contrast_match_mmseg_convert_exactly(saturation_on: int) -> None:
    """The lookup-table path (no HSV) and the float path (HSV at factor 1) both equal mmseg's arithmetic."""
    image = np.random.default_rng(2).integers(0, 256, (10, 13, 3), dtype=np.uint8)
    distort = PhotoMetricDistortion(saturation_range=(1.0, 1.0))
    # brightness +23.7, contrast first x1.37, saturation (x1) on or off, hue off
    rng = ScriptedRng([1, 1, 1, saturation_on, 0], [23.7, 1.37] + [1.0] * saturation_on)
    out = distort({"image": image}, rng)["image"]
    np.testing.assert_array_equal(out, _mmseg_convert(_mmseg_convert(image, beta=23.7), alpha=1.37))
    # brightness -31.2, contrast last x0.61, saturation (x1) on or off, hue off
    rng = ScriptedRng([1, 0, saturation_on, 0, 1], [-31.2] + [1.0] * saturation_on + [0.61])
    out = distort({"image": image}, rng)["image"]
    np.testing.assert_array_equal(out, _mmseg_convert(_mmseg_convert(image, beta=-31.2), alpha=0.61))


def test_image_resize_is_antialiased_bilinear_like_pil() -> None:
    image = np.random.default_rng(3).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for height, width in [(20, 25), (74, 106), (13, 90)]:
        ours = _resize_image(image, (height, width)).astype(int)
        pil = np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR)).astype(int)
        assert ours.shape == (height, width, 3)
        assert np.abs(ours - pil).max() <= 1
    assert _resize_image(image, (37, 53)) is image


def test_label_resize_samples_pixel_centres() -> None:
    labels = np.arange(12, dtype=np.uint8).reshape(3, 4)
    up = _resize_labels(labels, (6, 8))
    np.testing.assert_array_equal(up, labels.repeat(2, 0).repeat(2, 1))
    down = _resize_labels(up, (3, 4))  # centre of each 2x2 block falls in its lower-right pixel
    np.testing.assert_array_equal(down, labels)
    masks = np.stack([labels == 5, labels == 6])  # (N, H, W) bool instance masks
    np.testing.assert_array_equal(_resize_labels(masks, (6, 8)), masks.repeat(2, 1).repeat(2, 2))


def test_read_only_and_flipped_inputs_need_no_copy_or_warning() -> None:
    image = np.random.default_rng(4).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    mask = np.zeros((40, 50), np.uint8)
    mask[:, 25:] = 1
    image.flags.writeable = False
    mask.flags.writeable = False
    pipeline = build_train_transforms(crop_size=32, scale=(50, 40), ratio_range=(0.8, 1.2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for seed in range(6):
            out = pipeline({"image": image, "mask": mask}, np.random.default_rng(seed))
            assert out["image"].shape == (3, 32, 32) and out["image"].is_contiguous()
    flipped = RandomFlip(prob=1.0)({"image": image, "mask": mask}, np.random.default_rng(0))
    np.testing.assert_array_equal(flipped["image"], image[:, ::-1])
    np.testing.assert_array_equal(adjust_saturation_hue(image[:, ::-1], None, 0.0), image[:, ::-1])


def test_normalize_feeds_to_tensor_without_a_transpose_copy() -> None:
    image = np.random.default_rng(5).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    sample = Normalize()({"image": image, "mask": np.zeros((6, 7), np.uint8)}, None)
    expected = (image.astype(np.float32) - np.float32([123.675, 116.28, 103.53])) / np.float32([58.395, 57.12, 57.375])
    np.testing.assert_array_equal(sample["image"], expected)
    tensor = ToTensor()(sample, None)["image"]
    assert tensor.data_ptr() == sample["image"].__array_interface__["data"][0]
    padded = ToTensor()(Pad(8)(sample, None), None)
    assert padded["image"].shape == (3, 8, 8) and (padded["mask"][6:] == 255).all()


def test_crop_check_is_the_same_for_uint8_and_wider_masks() -> None:
    mask = np.zeros((30, 100), np.uint8)
    mask[:, 80:] = 1
    mask[:5] = 255
    crop = RandomCrop(20, cat_max_ratio=0.75)
    image = np.zeros((30, 100, 3), np.uint8)
    for seed in range(20):
        narrow = crop({"image": image, "mask": mask}, np.random.default_rng(seed))["mask"]
        wide = crop({"image": image, "mask": mask.astype(np.int32)}, np.random.default_rng(seed))["mask"]
        np.testing.assert_array_equal(narrow, wide)
