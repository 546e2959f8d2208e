"""Nothing wrong without a word, no raw tracebacks: labels, images, test windows and inputs.

Each test is one case a careless or hostile user hits, met where the user meets it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import msfusion as mf
from msfusion.checkpoint import save_checkpoint
from msfusion.cli import main
from msfusion.data import FolderDataset
from msfusion.data.image_io import read_image
from msfusion.data.label_maps import InvalidSampleError
from msfusion.engine.segmentation_eval import segment
from msfusion.engine.segmentation_predict import predict_array, predict_files

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one thread


def _folder(root, masks: dict[str, np.ndarray], names=("background", "thing"), suffix=".png"):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    (root / "classes.yaml").write_text(f"names: [{', '.join(names)}]\n")
    for stem, mask in masks.items():
        Image.fromarray(np.zeros((*mask.shape, 3), np.uint8)).save(root / "images" / f"{stem}{suffix}")
        Image.fromarray(mask).save(root / "masks" / f"{stem}.png")
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "m.safetensors"
    torch.manual_seed(0)
    return save_checkpoint(mf.create_model("test_segnext", num_classes=7), path)


# ---- 5. masks that would train on background only, or on nothing -----------------------------------------


def test_binary_masks_stored_as_0_255_are_detected_with_the_fix(tmp_path, capsys):
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255  # the foreground, which the identity table reads as "ignore"
    root = _folder(tmp_path / "bin", {"a": mask, "b": mask})
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{name: test_segnext}}\ndata: {{train: {{type: folder, root: {root}}}}}\n")
    assert main(["train", str(recipe), "--work-dir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "only the values 0 and 255" in err and "value_map: {0: 0, 255: 1}" in err and "reduce_zero_label" in err
    counts = FolderDataset(root, value_map={0: 0, 255: 1}).check_labels("data.train")
    assert counts["pixels"].tolist() == [2 * (256 - 64), 2 * 64]


def test_all_ignored_labels_fail_and_a_class_without_pixels_warns(tmp_path):
    ignored = np.full((16, 16), 255, np.uint8)
    with pytest.raises(ValueError, match="every pixel is ignored"):
        FolderDataset(_folder(tmp_path / "ign", {"a": ignored})).check_labels("data.train")
    some = np.zeros((16, 16), np.uint8)
    some[0, 0] = 1
    root = _folder(tmp_path / "three", {"a": some}, names=("background", "cat", "dog"))
    with pytest.warns(UserWarning, match=r"data.val.*1 of 3 classes have no labelled pixel: dog"):
        FolderDataset(root).check_labels("data.val")
    with pytest.warns(UserWarning, match="cat, dog"):  # reduce_zero_label: raw 0 ignored, raw 1 -> train id 0
        FolderDataset(root, reduce_zero_label=True).check_labels("data.val")


# ---- 6. 16-bit images ---------------------------------------------------------------------------------------


def test_16_bit_images_are_scaled_not_clipped(tmp_path):
    ramp = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode == "I;16"
    rgb = read_image(tmp_path / "deep.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (32, 32, 3)
    np.testing.assert_array_equal(rgb[..., 0], np.rint(ramp / 257.0).astype(np.uint8))
    assert (rgb == 255).mean() < 0.01  # PIL's convert("RGB") made 99.6% of it white


# ---- 7. sliding windows that leave pixels uncovered ---------------------------------------------------------


@pytest.mark.parametrize(("slide", "message"), [("32,-5", "two positive integers"), ("0,0", "two positive integers"),
                                                ("32,64", "leave pixels uncovered")])  # fmt: skip
def test_bad_slide_windows_are_refused_before_any_work(checkpoint, tmp_path, slide, message, capsys):
    Image.new("RGB", (40, 40)).save(tmp_path / "a.png")
    code = main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "a.png"), "--out", str(tmp_path / "o"),
                 "--slide", slide, "--no-progress"])  # fmt: skip
    assert code == 2 and message in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_slide_windows_cover_every_pixel_or_are_refused():
    model = mf.create_model("test_segnext", num_classes=3).eval()
    x = torch.randn(1, 3, 45, 37)
    scores = segment(model, x, mode="slide", crop_size=(32, 32), stride=(32, 32))
    assert scores.shape == (1, 3, 45, 37) and torch.isfinite(scores).all()
    with pytest.raises(ValueError, match="uncovered"):
        segment(model, x, mode="slide", crop_size=(16, 16), stride=(24, 8))
    with pytest.raises(ValueError, match="positive integers"):
        segment(model, x, mode="slide", crop_size=(0, 0), stride=(0, 0))
    with pytest.raises(ValueError, match="stride <= crop"):  # the model's own method checks too
        model.slide_inference(x, (16, 16), (24, 8))


# ---- 11. same stems, 300 classes, NaN pixels, class counts --------------------------------------------------


def test_two_images_with_one_stem_are_refused(tmp_path):
    root = _folder(tmp_path / "d", {"a": np.zeros((8, 8), np.uint8)})
    Image.new("RGB", (8, 8)).save(root / "images" / "a.jpg")
    with pytest.raises(ValueError, match=r"share a stem.*a\.jpg and .*a\.png"):
        FolderDataset(root)


class _Constant(nn.Module):
    """A 300-class 'segmentor' that predicts class 299 everywhere."""

    num_classes = 300

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = images.new_zeros((images.shape[0], 300, *images.shape[-2:]))
        logits[:, 299] = self.scale
        return logits


def test_label_pngs_of_more_than_256_classes_are_16_bit(tmp_path):
    Image.new("RGB", (12, 10)).save(tmp_path / "a.png")
    written = predict_files(_Constant(), [tmp_path / "a.png"], tmp_path / "out", progress=False)
    label = Image.open(written[0]["label"])
    assert label.mode == "I;16" and np.asarray(label).max() == 299 and np.asarray(label).min() == 299


def test_nan_or_inf_pixels_are_refused_not_spread(tmp_path):
    model = mf.create_model("test_segnext", num_classes=3).eval()
    x = torch.randn(1, 3, 32, 32)
    x[0, 1, 5, 7] = float("nan")
    with pytest.raises(ValueError, match=r"1 NaN or infinite value\(s\), first at index \[0, 1, 5, 7\]"):
        segment(model, x)
    image = np.zeros((16, 16, 3), np.float32)
    image[3, 3, 0] = np.inf
    with pytest.raises(ValueError, match="1 NaN or infinite value"):
        predict_array(model, image)
    tiff = np.full((8, 8), 0.5, np.float32)
    tiff[0, 0] = np.nan
    Image.fromarray(tiff).save(tmp_path / "f.tif")
    with pytest.raises(InvalidSampleError, match=r"f\.tif has 1 NaN or infinite pixel"):
        read_image(tmp_path / "f.tif")


# ---- 12. no raw tracebacks from torch or PIL -----------------------------------------------------------------


def test_predict_options_and_impossible_resizes_are_named(checkpoint, tmp_path, capsys):
    Image.new("RGB", (200, 1)).save(tmp_path / "strip.png")  # resized to scale 64,32 it would be 0 pixels high
    base = ["predict", "--checkpoint", str(checkpoint), str(tmp_path / "strip.png"), "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "o"), "--resize", "64,32"]) == 2
    err = capsys.readouterr().err
    assert "strip.png" in err and "0x64 pixels" in err and "Traceback" not in err
    assert main([*base, "--out", str(tmp_path / "o"), "--resize", "abc"]) == 2
    assert "--resize expects two positive integers like 2048,512 or none, got 'abc'" in capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "strip.png")]) == 2
    assert "is an existing file; give a folder path" in capsys.readouterr().err


def test_a_dataset_image_that_a_resize_makes_empty_is_named(tmp_path):
    from msfusion.data import build_eval_transforms

    root = _folder(tmp_path / "d", {"strip": np.zeros((1, 200), np.uint8)})
    dataset = FolderDataset(root, transforms=build_eval_transforms(scale=(64, 32)))
    with pytest.raises(InvalidSampleError, match=r"strip\.png: a 1x200 \(HxW\) image .* would be 0x64 pixels"):
        dataset[0]


def test_python_api_inputs_are_checked_with_the_fix():
    with pytest.raises(ValueError, match="model name must be a string"):
        mf.create_model(None)
    with pytest.raises(ValueError, match="num_classes must be a positive integer, got '7'"):
        mf.create_model("test_segnext", num_classes="7")
    with pytest.raises(ValueError, match="num_classes must be a positive integer, got 0"):
        mf.create_model("test_segnext", num_classes=0)
    model = mf.create_model("test_segnext", num_classes=3).eval()
    with pytest.raises(ValueError, match=r"torch.float64 but the model's weights are torch.float32"):
        segment(model, torch.zeros(1, 3, 32, 32, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"input is torch.float64 but the model's weights are torch.float32"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.float64))
    for size in ((3, 64, 64), (1, 3, 0, 64), "64x64"):
        with pytest.raises(ValueError, match=r"input_size must be four positive integers \(B, C, H, W\)"):
            mf.count_macs(model, size)
