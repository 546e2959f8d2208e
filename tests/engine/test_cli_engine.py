"""Smoke tests of ``msfusion train / eval / predict / export / demo`` and their error messages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from msfusion.cli import main

RECIPE = """\
model: {name: test_segnext}
data:
  train: {type: shapes, split: train, num_images: 8, image_size: 48}
  val: {type: shapes, split: val, num_images: 2, image_size: 48}
  batch_size: 4
  num_workers: 0
  crop_size: [32, 32]
  scale: [48, 48]
  eval_scale: null
schedule: {iters: 2, warmup_iters: 1}
train: {log_interval: 1, eval_interval: 2, ckpt_interval: 2, progress: false, tensorboard: true}
"""


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one thread


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run shared by the eval / predict / export tests."""
    root = tmp_path_factory.mktemp("run")
    config = root / "tiny.yaml"
    config.write_text(RECIPE)
    torch.set_num_threads(1)
    assert main(["train", str(config), "--work-dir", str(root / "work"), "--seed", "1"]) == 0
    return config, root / "work"


def test_train_writes_checkpoints_config_and_tensorboard(trained):
    _, work = trained
    names = {p.name for p in (work / "checkpoints").iterdir()}
    assert {
        "best.safetensors",
        "best.json",
        "iter_0000002.safetensors",
        "iter_0000002.state.pt",
        "latest.json",
    } <= names
    assert (work / "config.yaml").exists() and list((work / "tensorboard").glob("events.*"))
    meta = json.loads((work / "checkpoints" / "best.json").read_text())
    assert meta["classes"][0] == "background" and meta["model"]["name"] == "test_segnext"


def test_eval_prints_and_saves_json_and_csv(trained, tmp_path, capsys):
    config, work = trained
    code = main(["eval", str(config), "--checkpoint", str(work / "checkpoints" / "best.safetensors"),
                 "--out", str(tmp_path), "--no-progress"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "mIoU" in out and "background" in out
    data = json.loads((tmp_path / "best_eval_whole.json").read_text())
    assert 0.0 <= data["mIoU"] <= 1.0 and len(data["per_class"]) == 7
    assert (tmp_path / "best_eval_whole_per_class.csv").read_text().startswith("class,IoU,Acc,pixels")
    code = main(["eval", str(config), "--checkpoint", str(work / "checkpoints" / "best.safetensors"),
                 "--out", str(tmp_path), "--tta", "--mode", "slide", "--set", "eval.crop_size=[32,32]",
                 "--set", "eval.stride=[16,16]", "--set", "eval.scales=[0.75,1.0]", "--no-progress"])  # fmt: skip
    assert code == 0 and (tmp_path / "best_eval_slide_tta.json").exists()


def test_predict_any_size_grayscale_rgba_and_bad_files(trained, tmp_path, capsys):
    _, work = trained
    images = tmp_path / "in"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (37, 53), dtype=np.uint8), mode="L").save(images / "gray.png")
    Image.fromarray(rng.integers(0, 255, (40, 30, 4), dtype=np.uint8), mode="RGBA").save(images / "rgba.png")
    ckpt = str(work / "checkpoints" / "best.safetensors")
    assert main(["predict", "--checkpoint", ckpt, str(images), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    for stem, (h, w) in {"gray": (37, 53), "rgba": (40, 30)}.items():
        label = np.asarray(Image.open(tmp_path / "out" / f"{stem}_label.png"))
        assert label.shape == (h, w) and label.max() < 7
        assert Image.open(tmp_path / "out" / f"{stem}_color.png").size == (w, h)
        overlay = Image.open(tmp_path / "out" / f"{stem}_overlay.png")
        assert overlay.size[0] > w  # the legend panel is on the right
    (images / "broken.png").write_bytes(b"not a png")
    assert main(["predict", "--checkpoint", ckpt, str(images), "--out", str(tmp_path / "o2"), "--no-progress"]) == 2
    assert "cannot read image" in capsys.readouterr().err and not (tmp_path / "o2" / "rgba_label.png").exists()
    with pytest.warns(UserWarning, match="broken.png"):
        code = main(["predict", "--checkpoint", ckpt, str(images), "--out", str(tmp_path / "o3"),
                     "--no-progress", "--skip-bad"])  # fmt: skip
    assert code == 0 and len(list((tmp_path / "o3").glob("*_label.png"))) == 2


def test_export_checkpoint(trained, tmp_path, capsys):
    _, work = trained
    out = tmp_path / "m.onnx"
    code = main(["export", "--checkpoint", str(work / "checkpoints" / "best.safetensors"), "--onnx", str(out),
                 "--input", "64x64", "--exporter", "torchscript"])  # fmt: skip
    assert code == 0 and out.exists()
    assert "max |PyTorch - onnxruntime|" in capsys.readouterr().out


def test_clear_errors(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: {lrr: 1}\n")
    assert main(["train", str(bad)]) == 2
    assert "Did you mean 'optim.lr'" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    cfg = tmp_path / "nodata.yaml"
    cfg.write_text("data: {train: {type: folder, root: " + str(tmp_path / "nowhere") + "}}\n")
    assert main(["train", str(cfg), "--set", "train.progress=false"]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_demo_report_folder(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--no-progress", "--set", "model.name=test_segnext",
            "--set", "data.train={type: shapes, split: train, num_images: 8, image_size: 48}",
            "--set", "data.val={type: shapes, split: val, num_images: 3, image_size: 48}",
            "--set", "data.crop_size=[48,48]", "--set", "data.scale=[48,48]", "--set", "data.batch_size=4",
            "--set", "schedule.iters=2", "--set", "schedule.warmup_iters=1", "--set", "train.eval_interval=2",
            "--set", "train.ckpt_interval=2", "--set", "train.amp=none"]  # fmt: skip
    assert main(args) == 0
    for name in ("metrics.json", "metrics_per_class.csv", "per_class.txt", "training_curve.png",
                 "predictions.png", "README.txt"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name
    grid = Image.open(out / "predictions.png")
    assert grid.size[1] >= 3 * 48  # three validation rows
    assert "mIoU" in (out / "README.txt").read_text()
    assert Path(out / "run" / "checkpoints" / "best.safetensors").exists()
    # A second demo into the same folder keeps the first unless told to replace it.
    before = (out / "run" / "checkpoints" / "best.safetensors").read_bytes()
    assert main(args) == 2
    assert "earlier demo run; pass --overwrite" in capsys.readouterr().err
    assert (out / "run" / "checkpoints" / "best.safetensors").read_bytes() == before
    assert main([*args, "--overwrite"]) == 0


def test_detection_demo_report_folder(tmp_path, capsys):
    out = tmp_path / "demo_det"
    args = ["demo", "--task", "detection", "--out", str(out), "--no-progress",
            "--set", "data.train={type: shapes, split: train, num_images: 4, image_size: 64, seed: 0, transforms: {kind: train}}",
            "--set", "data.val={type: shapes, split: val, num_images: 2, image_size: 64, seed: 0}",
            "--set", "model.kwargs.min_size=64", "--set", "model.kwargs.max_size=64", "--set", "data.batch_size=2",
            "--set", "schedule.iters=2", "--set", "schedule.warmup_iters=1", "--set", "train.ckpt_interval=2"]  # fmt: skip
    assert main(args) == 0
    for name in ("metrics.json", "detections.json", "training_curve.png", "predictions.png", "README.txt"):
        assert (out / name).stat().st_size > 0, name
    assert Image.open(out / "predictions.png").size[1] == 2 * 64  # two held-out rows: truth | prediction
    assert "Held-out COCO metrics" in (out / "README.txt").read_text()
    assert main(args) == 2
    assert "earlier demo run; pass --overwrite" in capsys.readouterr().err
