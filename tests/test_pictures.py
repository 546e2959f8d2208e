"""The pictures users look at: overlays, legends, the training curve and metrics.csv, the confusion matrix."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from msfusion.cli import main as cli
from msfusion.engine.config import load_config
from msfusion.engine.trainer import train
from msfusion.engine.visualize import (
    add_legend,
    colorize,
    default_palette,
    legend_font_size,
    overlay,
    plot_confusion_matrix,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one thread


def test_overlay_leaves_background_and_ignored_pixels_untouched():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    label = np.zeros((40, 60), dtype=np.uint8)  # class 0: background, black in the VOC colour map
    label[10:20, 10:30] = 1
    label[30:, :5] = 255  # ignored
    palette = default_palette(3)
    out = overlay(image, colorize(label, palette), alpha=0.5)
    untouched = (label == 0) | (label == 255)
    assert np.array_equal(out[untouched], image[untouched])
    drawn = np.round(image[label == 1] * 0.5 + np.array(palette[1]) * 0.5)
    assert np.abs(out[label == 1].astype(int) - drawn).max() <= 1  # torchvision blends in float, then rounds


def _text_height(canvas: Image.Image, picture_width: int, swatch: int) -> int:
    """Height of the dark text pixels of the legend's first row (right of the swatch)."""
    legend = np.asarray(canvas.convert("L"))[:, picture_width + 2 * swatch + 2 :]
    rows = np.where((legend < 100).any(axis=1))[0]
    first = rows[rows < rows[0] + 2 * swatch]
    return int(first.max() - first.min() + 1)


def test_legend_text_scales_with_the_picture():
    palette = default_palette(2)
    small = add_legend(np.zeros((120, 160, 3), np.uint8), ["background", "Building"], palette)
    large = add_legend(np.zeros((1200, 1600, 3), np.uint8), ["background", "Building"], palette)
    assert legend_font_size(120) == 11 and legend_font_size(1200) == 30
    h_small = _text_height(small, 160, legend_font_size(120))
    h_large = _text_height(large, 1600, legend_font_size(1200))
    assert h_small >= 8 and h_large >= 2.2 * h_small, (h_small, h_large)
    # A long list wraps into columns instead of running off the picture.
    many = add_legend(np.zeros((100, 100, 3), np.uint8), [f"class {i}" for i in range(40)], default_palette(40))
    assert many.height == 100 and many.width > 100 + 2 * 60


def test_confusion_matrix_picture(tmp_path):
    cm = np.array([[50, 5, 0], [10, 30, 0], [0, 0, 0]])
    path = plot_confusion_matrix(cm, ["road", "car", "never seen"], tmp_path / "cm.png")
    image = Image.open(path)
    assert image.size[0] > 300 and image.size[1] > 300
    with pytest.raises(ValueError, match="does not fit 2 class names"):
        plot_confusion_matrix(cm, ["road", "car"], tmp_path / "bad.png")


def test_train_writes_pictures_and_run_record_and_eval_draws_the_confusion_matrix(tmp_path):
    cfg = load_config(
        None,
        [
            "model.name=test_segnext",
            "data.train={type: shapes, split: train, num_images: 8, image_size: 48}",
            "data.val={type: shapes, split: val, num_images: 2, image_size: 48}",
            "data.batch_size=4",
            "data.crop_size=[32, 32]",
            "data.scale=[48, 48]",
            "data.eval_scale=null",
            "data.num_workers=0",
            "schedule.iters=4",
            "schedule.warmup_iters=1",
            "train.log_interval=1",
            "train.eval_interval=2",
            "train.ckpt_interval=0",
            "train.progress=false",
            "train.tensorboard=false",
            "train.grad_checkpointing=true",
            f"train.work_dir={tmp_path / 'run'}",
        ],
    )
    summary = train(cfg)
    run = tmp_path / "run"
    # Every run records versions, device, seed and the exact recipe; the log carries peak memory.
    record = json.loads((run / "run.json").read_text())
    assert record["torch"] == torch.__version__ and record["seed"] == 0 and record["device"].startswith("cpu")
    assert record["config"]["train"]["grad_checkpointing"] is True
    assert all(h["peak_mem_mb"] > 0 for h in summary["history"])
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [2, 4]
    assert {"mIoU", "mAcc", "aAcc"} <= set(rows[0])
    assert Image.open(run / "training_curve.png").size == (1100, 418)

    best = run / "checkpoints" / "best.safetensors"
    assert cli(["eval", str(run / "config.yaml"), "--checkpoint", str(best), "--out", str(tmp_path / "ev")]) == 0
    pictures = list(Path(tmp_path / "ev").glob("*_confusion.png"))
    assert len(pictures) == 1 and Image.open(pictures[0]).size[0] > 300


def test_grad_checkpointing_switch_gives_the_same_gradients():
    import msfusion as mf
    from msfusion.engine.trainer import enable_grad_checkpointing

    for name in ("test_segnext", "test_upernet_cednet"):
        torch.manual_seed(0)
        model = mf.create_model(name).train()
        x = torch.randn(2, 3, 64, 64)
        torch.manual_seed(1)  # the same dropout masks and NMF initialisation in both passes
        model(x).sum().backward()
        plain = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        model.zero_grad()
        enable_grad_checkpointing(model)
        assert model.backbone.grad_checkpointing
        torch.manual_seed(1)
        model(x).sum().backward()
        for k, p in model.named_parameters():
            if k in plain:
                torch.testing.assert_close(p.grad, plain[k], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="has no set_grad_checkpointing"):
        enable_grad_checkpointing(torch.nn.Conv2d(3, 3, 1))
