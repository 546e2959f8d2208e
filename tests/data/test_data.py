"""Real dataset formats: tiny fixtures written in each official layout.

Every format is checked for: opening and the sample contract, the raw-label
-> train-id mapping, a missing folder named in the error, bad label values,
image/label size mismatch, and corrupt images (raise, or skip with a warning).
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from msfusion.data import InvalidSampleError, build_dataset
from msfusion.data.class_names import ISAID_PALETTE, pascal_colormap

H, W = 32, 48


def save_image(path: Path, seed: int, image_format: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=image_format)


def save_label(path: Path, label: np.ndarray, palette: bool = False) -> None:
    """Write ``label`` as an 'L' PNG, or a 'P' PNG with the VOC palette."""
    path.parent.mkdir(parents=True, exist_ok=True)
    label = np.ascontiguousarray(label, dtype=np.uint8)
    size = (label.shape[1], label.shape[0])
    image = Image.frombytes("P" if palette else "L", size, label.tobytes())
    if palette:
        image.putpalette([v for color in pascal_colormap(256) for v in color])
    image.save(path)


def banded(raw_values: list[int]) -> np.ndarray:
    """A label image with one vertical band per raw value."""
    label = np.zeros((H, W), dtype=np.uint8)
    for band, value in enumerate(raw_values):
        label[:, band * W // len(raw_values) : (band + 1) * W // len(raw_values)] = value
    return label


def band_values(mask: np.ndarray, count: int) -> list[int]:
    return [int(mask[H // 2, band * W // count + 1]) for band in range(count)]


@dataclass
class Format:
    """A dataset format, its fixture writer and what its labels must map to."""

    type: str
    num_classes: int
    mapping: list[tuple[int, int]]  # raw value -> train id
    bad_value: int
    image: Callable[[Path, int], Path]  # root, index -> image file (train split)
    label: Callable[[Path, int], Path]
    required_dir: Callable[[Path], Path]
    split_file: Callable[[Path], Path] | None = None
    image_format: str | None = None
    palette_labels: bool = False

    def write(self, root: Path, count: int = 3, label: np.ndarray | None = None) -> Path:
        raw = banded([raw for raw, _ in self.mapping]) if label is None else label
        for index in range(count):
            save_image(self.image(root, index), index, self.image_format)
            save_label(self.label(root, index), raw, self.palette_labels)
        if self.split_file is not None:
            path = self.split_file(root)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(f"{self.image(root, i).stem}\n" for i in range(count)))
        if self.type == "folder":
            (root / "classes.yaml").write_text("names: [background, cat, dog]\n")
        return root


ADE = "ADEChallengeData2016"
CITY = "leftImg8bit/train/aachen"
GT = "gtFine/train/aachen"
VOC = "VOCdevkit/VOC2012"
CTX = "VOCdevkit/VOC2010"

FORMATS = {
    "ade20k": Format(
        "ade20k", 150, [(0, 255), (1, 0), (150, 149), (255, 255)], 151,
        lambda r, i: r / ADE / f"images/training/ADE_train_{i:08d}.jpg",
        lambda r, i: r / ADE / f"annotations/training/ADE_train_{i:08d}.png",
        lambda r: r / ADE / "annotations/training",
    ),
    "cityscapes": Format(
        "cityscapes", 19, [(7, 0), (0, 255), (33, 18), (9, 255), (26, 13)], 34,
        lambda r, i: r / CITY / f"aachen_000000_{i:06d}_leftImg8bit.png",
        lambda r, i: r / GT / f"aachen_000000_{i:06d}_gtFine_labelIds.png",
        lambda r: r / "gtFine/train",
    ),
    "voc": Format(
        "voc", 21, [(0, 0), (1, 1), (20, 20), (255, 255)], 21,
        lambda r, i: r / VOC / f"JPEGImages/2007_{i:06d}.jpg",
        lambda r, i: r / VOC / f"SegmentationClass/2007_{i:06d}.png",
        lambda r: r / VOC / "SegmentationClass",
        split_file=lambda r: r / VOC / "ImageSets/Segmentation/train.txt",
        palette_labels=True,
    ),
    "coco_stuff": Format(
        "coco_stuff", 171, [(0, 0), (170, 170), (255, 255)], 171,
        lambda r, i: r / f"images/train2017/{i:012d}.jpg",
        lambda r, i: r / f"annotations/train2017/{i:012d}_labelTrainIds.png",
        lambda r: r / "annotations/train2017",
    ),
    "pascal_context": Format(
        "pascal_context", 59, [(0, 255), (1, 0), (59, 58)], 60,
        lambda r, i: r / CTX / f"JPEGImages/2008_{i:06d}.jpg",
        lambda r, i: r / CTX / f"SegmentationClassContext/2008_{i:06d}.png",
        lambda r: r / CTX / "SegmentationClassContext",
        split_file=lambda r: r / CTX / "ImageSets/SegmentationContext/train.txt",
    ),
    "isaid": Format(
        "isaid", 16, [(0, 0), (15, 15), (255, 255)], 16,
        lambda r, i: r / f"img_dir/train/P{i:04d}_0_896_0_896.png",
        lambda r, i: r / f"ann_dir/train/P{i:04d}_0_896_0_896_instance_color_RGB.png",
        lambda r: r / "ann_dir/train",
        image_format="BMP",  # mmseg's converter writes BMP data under .png names
        palette_labels=True,
    ),
    "folder": Format(
        "folder", 3, [(0, 0), (2, 2), (255, 255)], 3,
        lambda r, i: r / f"images/train/img{i}.jpg",
        lambda r, i: r / f"masks/train/img{i}.png",
        lambda r: r / "masks/train",
    ),
}  # fmt: skip


@pytest.fixture(params=sorted(FORMATS))
def fmt(request: pytest.FixtureRequest) -> Format:
    return FORMATS[request.param]


def open_dataset(fmt: Format, root: Path, **kwargs) -> torch.utils.data.Dataset:
    return build_dataset({"type": fmt.type, "root": str(root), "split": "train", **kwargs})


def test_opens_and_returns_the_contract(fmt: Format, tmp_path: Path) -> None:
    dataset = open_dataset(fmt, fmt.write(tmp_path))
    assert len(dataset) == 3
    assert dataset.num_classes == len(dataset.classes) == fmt.num_classes
    assert len(dataset.palette) == fmt.num_classes
    assert all(len(color) == 3 for color in dataset.palette)
    assert dataset.ignore_index == 255
    sample = dataset[1]
    assert sample["image"].dtype == torch.float32 and sample["image"].shape == (3, H, W)
    assert sample["mask"].dtype == torch.int64 and sample["mask"].shape == (H, W)
    assert sample["path"] == str(fmt.image(tmp_path, 1))
    assert abs(float(sample["image"].mean())) < 1.0  # normalised, not 0..255
    image, mask = dataset.load_raw(1)
    assert image.shape == (H, W, 3) and image.dtype == np.uint8
    assert mask.shape == (H, W) and mask.dtype == np.uint8


def test_labels_map_to_train_ids(fmt: Format, tmp_path: Path) -> None:
    dataset = open_dataset(fmt, fmt.write(tmp_path))
    _, mask = dataset.load_raw(0)
    assert band_values(mask, len(fmt.mapping)) == [train_id for _, train_id in fmt.mapping]
    assert torch.equal(dataset[0]["mask"], torch.from_numpy(mask).long())


def test_missing_folder_is_named(fmt: Format, tmp_path: Path) -> None:
    root = fmt.write(tmp_path)
    shutil.rmtree(fmt.required_dir(root))
    with pytest.raises(FileNotFoundError, match="Expected layout") as error:
        open_dataset(fmt, root)
    assert str(fmt.required_dir(root)) in str(error.value)


def test_missing_root_is_named(fmt: Format, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        open_dataset(fmt, tmp_path / "nowhere")


def test_bad_label_values_name_file_and_values(fmt: Format, tmp_path: Path) -> None:
    root = fmt.write(tmp_path)
    save_label(fmt.label(root, 2), banded([0, fmt.bad_value]), fmt.palette_labels)
    dataset = open_dataset(fmt, root)
    dataset.load_raw(1)
    with pytest.raises(ValueError, match=rf"\b{fmt.bad_value}\b") as error:
        dataset[2]
    assert str(fmt.label(root, 2)) in str(error.value)


def test_size_mismatch_names_both_files(fmt: Format, tmp_path: Path) -> None:
    root = fmt.write(tmp_path)
    save_label(fmt.label(root, 0), np.zeros((H, W + 2), np.uint8), fmt.palette_labels)
    with pytest.raises(ValueError, match=f"{H}x{W}.*{H}x{W + 2}") as error:
        open_dataset(fmt, root)[0]
    assert str(fmt.image(root, 0)) in str(error.value)
    assert str(fmt.label(root, 0)) in str(error.value)


def test_corrupt_image_raises_naming_it(fmt: Format, tmp_path: Path) -> None:
    root = fmt.write(tmp_path)
    fmt.image(root, 0).write_bytes(b"this is not an image")
    with pytest.raises(InvalidSampleError, match="cannot read image") as error:
        open_dataset(fmt, root)[0]
    assert str(fmt.image(root, 0)) in str(error.value)


def test_skip_mode_warns_once_and_uses_next_sample(fmt: Format, tmp_path: Path) -> None:
    root = fmt.write(tmp_path)
    fmt.image(root, 0).write_bytes(b"\x89PNG truncated")
    dataset = open_dataset(fmt, root, on_bad_file="skip")
    with pytest.warns(UserWarning, match=fmt.image(root, 0).name):
        sample = dataset[0]
    assert sample["path"] == str(fmt.image(root, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert dataset[0]["path"] == str(fmt.image(root, 1))
        assert dataset[2]["path"] == str(fmt.image(root, 2))


def test_grayscale_and_rgba_images_become_rgb(tmp_path: Path) -> None:
    fmt = FORMATS["folder"]
    root = fmt.write(tmp_path, count=2)
    Image.fromarray(np.full((H, W), 77, np.uint8)).save(root / "images/train/img0.png")
    (root / "images/train/img0.jpg").unlink()
    Image.new("RGBA", (W, H), (10, 20, 30, 0)).save(root / "images/train/img1.png")
    (root / "images/train/img1.jpg").unlink()
    dataset = open_dataset(fmt, root)
    gray, _ = dataset.load_raw(0)
    rgba, _ = dataset.load_raw(1)
    assert gray.shape == rgba.shape == (H, W, 3)
    assert (gray == 77).all() and (rgba == [10, 20, 30]).all()


def test_cityscapes_prefers_label_train_ids(tmp_path: Path) -> None:
    fmt = FORMATS["cityscapes"]
    root = fmt.write(tmp_path)
    train_ids = fmt.label(root, 0).with_name(fmt.label(root, 0).name.replace("labelIds", "labelTrainIds"))
    save_label(train_ids, banded([5, 255]))
    dataset = open_dataset(fmt, root)
    assert band_values(dataset.load_raw(0)[1], 2) == [5, 255]
    assert band_values(dataset.load_raw(1)[1], 5) == [0, 255, 18, 255, 13]


def test_coco_stuff_maps_raw_ids_like_mmseg_converter(tmp_path: Path) -> None:
    fmt = FORMATS["coco_stuff"]
    image = fmt.image(tmp_path, 0)
    save_image(image, 0)
    raw_label = tmp_path / "annotations/train2017" / f"{image.stem}.png"
    save_label(raw_label, banded([0, 12, 26, 91, 181, 255]))
    dataset = open_dataset(fmt, tmp_path)
    assert band_values(dataset.load_raw(0)[1], 6) == [0, 11, 24, 80, 170, 255]
    save_label(raw_label, banded([0, 11]))  # COCO id 12 (0-based 11) is unused
    with pytest.raises(ValueError, match=r"\b11\b"):
        dataset.load_raw(0)


@pytest.mark.parametrize(("name", "folder"), [("ade20k", "training"), ("coco_stuff", "train2017")])
def test_mmseg_layout_split_aliases_and_unknown_split(name: str, folder: str, tmp_path: Path) -> None:
    """ADE20K and COCO-Stuff take the split or its folder name; another name is refused with the choices."""
    fmt = FORMATS[name]
    root = fmt.write(tmp_path)
    by_alias, by_folder = open_dataset(fmt, root), build_dataset({"type": name, "root": str(root), "split": folder})
    assert by_alias.split == by_folder.split == folder
    assert [(s.image, s.label) for s in by_alias.samples] == [(s.image, s.label) for s in by_folder.samples]
    assert len(by_alias) == 3
    with pytest.raises(ValueError, match=r"split must be one of \[.*'train'.*\], got 'trian'"):
        build_dataset({"type": name, "root": str(root), "split": "trian"})


def test_isaid_decodes_raw_colour_masks(tmp_path: Path) -> None:
    fmt = FORMATS["isaid"]
    root = fmt.write(tmp_path, count=1)
    colours = np.zeros((H, W, 3), np.uint8)
    colours[:, W // 2 :] = ISAID_PALETTE[15]
    Image.fromarray(colours).save(fmt.label(root, 0))
    assert band_values(open_dataset(fmt, root).load_raw(0)[1], 2) == [0, 15]
    colours[0, 0] = (1, 2, 3)
    Image.fromarray(colours).save(fmt.label(root, 0))
    with pytest.raises(ValueError, match=r"\(1, 2, 3\)"):
        open_dataset(fmt, root).load_raw(0)


def test_voc_aug_adds_sbd_ids(tmp_path: Path) -> None:
    fmt = FORMATS["voc"]
    root = fmt.write(tmp_path, count=2)
    save_image(root / VOC / "JPEGImages/2008_000001.jpg", 5)
    save_label(root / VOC / "SegmentationClassAug/2008_000001.png", banded([3]))
    (root / VOC / "ImageSets/Segmentation/aug.txt").write_text("2007_000000\n2008_000001\n")
    dataset = open_dataset(fmt, root, aug=True)
    assert len(dataset) == 3
    assert dataset[2]["path"].endswith("2008_000001.jpg")
    assert (dataset.load_raw(2)[1] == 3).all()
    assert len(open_dataset(fmt, root)) == 2


def test_folder_flat_layout_and_palette_masks(tmp_path: Path) -> None:
    (tmp_path / "classes.yaml").write_text("names: [background, cat]\npalette: [[0, 0, 0], [200, 10, 10]]\n")
    save_image(tmp_path / "images/a.png", 0)
    colours = np.zeros((H, W, 3), np.uint8)
    colours[:, W // 2 :] = (200, 10, 10)
    (tmp_path / "masks").mkdir()
    Image.fromarray(colours).save(tmp_path / "masks/a.png")
    dataset = build_dataset({"type": "folder", "root": str(tmp_path), "split": "val"})
    assert dataset.palette == [(0, 0, 0), (200, 10, 10)]
    assert band_values(dataset.load_raw(0)[1], 2) == [0, 1]


def test_folder_errors_name_missing_pieces(tmp_path: Path) -> None:
    fmt = FORMATS["folder"]
    root = fmt.write(tmp_path)
    with pytest.raises(FileNotFoundError, match="images/val.*splits found: \\['train'\\]"):
        build_dataset({"type": "folder", "root": str(root), "split": "val"})
    fmt.label(root, 1).unlink()
    with pytest.raises(FileNotFoundError, match="img1.png"):
        open_dataset(fmt, root)
    (root / "classes.yaml").unlink()
    with pytest.raises(FileNotFoundError, match="classes.yaml"):
        open_dataset(fmt, root)


def test_folder_rejects_malformed_classes_yaml(tmp_path: Path) -> None:
    root = FORMATS["folder"].write(tmp_path)
    (root / "classes.yaml").write_text("names: [a, b]\npalette: [[0, 0, 0]]\n")
    with pytest.raises(ValueError, match="palette"):
        open_dataset(FORMATS["folder"], root)
