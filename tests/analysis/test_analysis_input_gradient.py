"""Input-gradient maps and important-region areas (CEDNet Appendix B), and ``msfusion gradmap``."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import msfusion as mf
from msfusion.analysis.figures import clip_for_display
from msfusion.analysis.input_gradient import important_region_area, input_gradient_map
from msfusion.cli import main


@pytest.fixture(scope="module")
def segmentor():
    torch.manual_seed(0)
    return mf.create_model("test_upernet_cednet")


def test_segmentor_map_shape_and_sign(segmentor):
    segmentor.train()
    x = torch.randn(3, 45, 67)
    g = input_gradient_map(segmentor, x)
    assert g.shape == (45, 67) and g.dtype == torch.float32
    assert (g >= 0).all() and g.sum() > 0
    # the model's mode and parameter flags are restored, and no parameter gradient is left behind
    assert segmentor.training
    assert all(p.requires_grad and p.grad is None for p in segmentor.parameters())


def test_batch_maps_equal_single_maps(segmentor):
    x = torch.randn(2, 3, 40, 48)
    batch = input_gradient_map(segmentor, x)
    assert batch.shape == (2, 40, 48)
    for i in range(2):
        torch.testing.assert_close(batch[i], input_gradient_map(segmentor, x[i]), rtol=1e-4, atol=1e-9)


def test_target_and_ignore(segmentor):
    x = torch.randn(3, 40, 48)
    target = torch.randint(0, 5, (40, 48))
    g = input_gradient_map(segmentor, x, target)
    assert not torch.equal(g, input_gradient_map(segmentor, x))
    ignored = input_gradient_map(segmentor, x, torch.full((40, 48), 255))
    assert ignored.abs().sum() == 0
    with pytest.raises(ValueError, match="does not fit"):
        input_gradient_map(segmentor, x, torch.zeros(20, 20, dtype=torch.long))


def test_classifier_and_custom_loss():
    model = mf.create_model("test_cednet_next", num_classes=7)
    x = torch.randn(3, 64, 64)
    g = input_gradient_map(model, x, torch.tensor(3))
    assert g.shape == (64, 64) and g.sum() > 0
    g2 = input_gradient_map(model, x, loss_fn=lambda m, inp: m(inp)[:, 3].sum())
    assert g2.shape == (64, 64) and (g2 >= 0).all()


def test_important_region_area():
    g = torch.tensor([[0.0, 1.0], [2.0, 4.0]])  # normalised: 0, .25, .5, 1
    assert important_region_area(g, [0.0, 0.3, 0.9, 1.0]) == [0.75, 0.5, 0.25, 0.0]
    assert important_region_area(g, [1.5], normalize=False) == [0.5]
    assert important_region_area(torch.zeros(3, 3), [0.0, 0.5]) == [0.0, 0.0]
    areas = important_region_area(torch.rand(50, 60) ** 4, np.linspace(0, 1, 41))
    assert all(a >= b for a, b in zip(areas, areas[1:], strict=False))
    assert 0.0 <= min(areas) and max(areas) <= 1.0


def test_clip_for_display_saturates_at_the_percentile_or_the_maximum():
    """The ERF and input-gradient figures share one display scale (heavy-tailed maps)."""
    heavy = np.arange(1000, dtype=np.float32)
    shown = clip_for_display(heavy, 90.0)
    assert shown.dtype == np.float32 and shown.max() == 1.0
    assert np.isclose(shown[450], 450 / np.percentile(heavy, 90.0)) and (shown[900:] == 1.0).all()
    sparse = torch.zeros(40, 40)
    sparse[3, 4] = 2.0  # the 99.5th percentile is 0: scale by the maximum instead
    assert np.array_equal(clip_for_display(sparse), (sparse / 2.0).numpy())
    assert (clip_for_display(np.zeros((4, 4))) == 0).all()


def _write_image(path, h=56, w=72):
    rng = np.random.default_rng(0)
    image = np.full((h, w, 3), 40, np.uint8)
    image[10:30, 12:40] = (220, 60, 60)
    image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    Image.fromarray(image).save(path)


def test_gradmap_cli(tmp_path, capsys):
    image = tmp_path / "img.png"
    _write_image(image)
    label = tmp_path / "label.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 3, (56, 72), dtype=np.uint8)).save(label)
    ckpt = mf.save_checkpoint(mf.create_model("test_upernet_cednet", num_classes=3), tmp_path / "ckpt.safetensors")
    out = tmp_path / "out"
    rc = main(
        [
            "gradmap",
            "test_upernet_cednet",
            "--image", str(image), str(image),
            "--target", str(label), str(label),
            "--num-classes", "3",
            "--checkpoint", str(ckpt),
            "--out", str(out),
            "--thresholds", "11",
        ]
    )  # fmt: skip
    assert rc == 0
    summary = json.loads((out / "area_curve.json").read_text())
    assert summary["loss_target"] == "labels" and len(summary["thresholds"]) == 11
    assert len(summary["images"]) == 2
    assert summary["mean_area"] == summary["images"][0]["area"]
    assert all(a >= b for a, b in zip(summary["mean_area"], summary["mean_area"][1:], strict=False))
    for name in ("img_0_gradmap.png", "img_1_gradmap.png", "area_curve.png"):
        with Image.open(out / name) as im:
            assert im.size[0] > 100 and im.size[1] > 100
    assert np.load(out / "img_0_gradmap.npy").shape == (56, 72)
    assert "area_curve.json" in capsys.readouterr().out


def test_gradmap_builds_the_variant_a_checkpoint_describes(tmp_path):
    # A model trained with non-default options (here: head on stage 4 only) is rebuilt
    # from the checkpoint's sidecar; a default build would not fit its weights.
    image = tmp_path / "img.png"
    _write_image(image)
    ckpt = mf.save_checkpoint(mf.create_model("test_segnext", in_strides=(32,), num_classes=4), tmp_path / "c")
    rc = main(
        ["gradmap", "test_segnext", "--image", str(image), "--checkpoint", str(ckpt), "--out", str(tmp_path / "o")]
    )
    assert rc == 0 and (tmp_path / "o" / "img_gradmap.png").exists()


def test_gradmap_cli_errors(tmp_path, capsys):
    rc = main(
        [
            "gradmap",
            "test_upernet_cednet",
            "--image",
            str(tmp_path / "missing.png"),
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 2 and "image not found" in capsys.readouterr().err
