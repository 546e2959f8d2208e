"""The DETR and YOLO detectors under DDP: one engine run on 2 CPU processes (gloo) per family.

What is checked: the run finishes (a parameter without a gradient would make
DDP fail at the second step), both ranks hold the same weights before and after
training (one all-reduced update), the weights moved, and both ranks report the
evaluation of the whole validation set. Unlike tests/engine/test_detection_ddp.py,
the result is not compared with one process: RT-DETR's BatchNorm sees each
rank's half batch, its denoising queries draw per-rank noise, and transformers
normalises the box losses by each rank's own box count.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_detection_ddp import ROOT, _free_port

SHAPES = {"type": "shapes", "image_size": 64, "seed": 0}
MODELS = {
    # The tiny RT-DETR of tests/models/test_detr.py (1 encoder layer, d_model 32) with FINE, on the 37 K-parameter MSCAN.
    "detr": {
        "name": "rt_detr_tiny",
        "compose": {"arch": "rt_detr", "backbone": "test_mscan", "fine": True},
        "kwargs": dict(
            encoder_layers=1,
            d_model=32,
            encoder_hidden_dim=32,
            encoder_ffn_dim=64,
            decoder_ffn_dim=64,
            decoder_layers=2,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            num_queries=12,
            num_denoising=4,
            image_size=64,
        ),
    },
    "yolo": {
        "name": "yolo_nano",
        "compose": {"arch": "yolo", "backbone": "yolov8n", "fine": True},
        "kwargs": {"image_size": 64},
    },
}
EXTRAS = {"detr": "msfusion.models.meta_arch.detr", "yolo": "ultralytics"}


def _recipe(family: str, work_dir: str) -> dict:
    return {
        "task": "detection",
        "model": MODELS[family],
        "data": {"train": dict(SHAPES, split="train", num_images=8), "val": dict(SHAPES, split="val", num_images=3),
                 "batch_size": 4, "num_workers": 0},
        "optim": {"lr": 1.0e-3},
        "schedule": {"iters": 2, "warmup_iters": 0},
        "train": {"work_dir": work_dir, "eval_interval": 2, "ckpt_interval": 2, "progress": False,
                  "tensorboard": False, "device": "cpu"},
    }  # fmt: skip


def _checksum(model: torch.nn.Module) -> list[float]:
    flat = torch.cat([p.detach().double().flatten() for p in model.parameters()])
    return [flat.sum().item(), (flat * torch.linspace(0, 1, flat.numel(), dtype=torch.float64)).sum().item()]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["detr", "yolo"])
def test_two_gloo_processes_train_in_step(family: str, tmp_path: Path) -> None:
    pytest.importorskip(EXTRAS[family], reason=f"the {family} extra is not installed")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "YOLO_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), __file__, family, str(tmp_path / "run")]  # fmt: skip
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(ranks) == 2 and all(r["loss"] > 0 for r in ranks)  # each rank logs the loss of its own half batch
    same = ("step", "num_images", "before", "after")
    assert [ranks[0][k] for k in same] == [ranks[1][k] for k in same], ranks
    report = ranks[0]
    assert report["before"] != report["after"]  # the weights moved, identically on both ranks
    assert report["step"] == 2 and report["num_images"] == 3
    assert (tmp_path / "run" / "checkpoints" / "iter_0000002.safetensors").is_file()


if __name__ == "__main__":  # one rank of the DDP run (launched by torch.distributed.run above)
    sys.path.insert(0, str(ROOT))
    torch.set_num_threads(1)
    from msfusion.engine import trainer as engine
    from msfusion.engine.config import validate_config

    fit = engine.Trainer.fit

    def fit_with_checksums(self) -> dict:
        before = _checksum(self.model)
        summary = fit(self)
        return {**summary, "before": before, "after": _checksum(self.model)}

    engine.Trainer.fit = fit_with_checksums
    summary = engine.train(validate_config(_recipe(sys.argv[1], sys.argv[2])))
    print(json.dumps({"step": summary["step"], "num_images": summary["metrics"]["num_images"],
                      "loss": round(summary["history"][-1]["loss"], 6), "before": summary["before"],
                      "after": summary["after"]}))  # fmt: skip
