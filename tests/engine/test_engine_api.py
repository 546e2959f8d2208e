"""The engine's public face (mf.train / mf.evaluate / mf.predict), the task registry and the one evaluation loop."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import msfusion as mf
from msfusion.engine.evaluation import DatasetEvaluator

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one thread

ROOT = Path(__file__).resolve().parents[2]
RECIPE = """\
model: {name: test_segnext}
data:
  train: {type: shapes, split: train, num_images: 4, image_size: 48}
  val: {type: shapes, split: val, num_images: 2, image_size: 48}
  batch_size: 2
  num_workers: 0
  crop_size: [32, 32]
  scale: [48, 48]
  eval_scale: null
schedule: {iters: 5, warmup_iters: 1}
train: {log_interval: 1, eval_interval: 5, ckpt_interval: 5, progress: false, tensorboard: false}
"""


def test_train_evaluate_predict_from_python(tmp_path: Path) -> None:
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(RECIPE)
    # Sections merge into the YAML recipe and overrides apply last: 2 steps, not 5.
    summary = mf.train(recipe, train={"work_dir": str(tmp_path / "run")}, overrides=["schedule.iters=2",
                       "train.eval_interval=2", "train.ckpt_interval=2"])  # fmt: skip
    assert summary["step"] == 2
    checkpoint = Path(summary["last_checkpoint"])

    result = mf.evaluate(recipe, checkpoint, out=tmp_path / "eval")
    assert result.task == "segmentation" and "mIoU" in result.text
    # The same checkpoint on the same data with the same loop: the trainer's last evaluation, exactly.
    assert result.metrics["mIoU"] == summary["metrics"]["mIoU"]
    assert {p.name for p in result.files} >= {f"{checkpoint.stem}_eval_whole.json"}
    assert json.loads((tmp_path / "eval" / f"{checkpoint.stem}_eval_whole.json").read_text())["checkpoint"]
    assert mf.evaluate(recipe, checkpoint).files == []  # no out: nothing written

    image = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 41, 3), dtype=np.uint8)).save(image)
    predictions = mf.predict(checkpoint, image, tmp_path / "pred", progress=False)
    assert predictions.task == "segmentation" and "label, color, overlay" in predictions.summary
    assert Image.open(tmp_path / "pred" / "in_label.png").size == (41, 30)
    with pytest.raises(ValueError, match="stride"):
        mf.predict(checkpoint, image, tmp_path / "pred", slide=(16, 32), progress=False)


def test_recipe_sections_are_checked() -> None:
    from msfusion.engine.api import resolve_recipe
    from msfusion.engine.config import ConfigError

    assert resolve_recipe({"task": "detection"}, optim={"lr": 0.5})["optim"]["lr"] == 0.5
    with pytest.raises(ConfigError, match="optim.lr"):
        resolve_recipe({}, optim={"lrr": 1})
    with pytest.raises(ConfigError, match="task must be one of"):
        resolve_recipe({"task": "depth"})


def test_get_task_names_every_task() -> None:
    from msfusion.engine.tasks import get_task, list_tasks

    assert {"segmentation", "detection", "panoptic"} <= set(list_tasks())
    assert get_task("panoptic").primary_metric == "PQ"
    with pytest.raises(ValueError, match=r"unknown task 'detections'.*segmentation.*Did you mean 'detection'"):
        get_task("detections")


def test_no_module_branches_on_the_task() -> None:
    """The task is chosen once, by the registry; what differs lives in the Task classes (and the effects
    benchmark's per-task study settings, a table): no ``task ==`` anywhere in the package."""
    sources = sorted((ROOT / "msfusion").rglob("*.py"))
    branching = re.compile(r"""\btask\b[^\n]*?(==|!=|\bin\s*\()|["']task["']\]\s*(==|!=|in\b)""")
    found = [
        f"{p.name}: {line.strip()}" for p in sources for line in p.read_text().splitlines() if branching.search(line)
    ]
    assert found == []


class _Probe(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.autocast: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.autocast.append(torch.is_autocast_enabled("cpu"))
        return self.conv(x)


class _CountEvaluator(DatasetEvaluator):
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def reset(self) -> None:
        self.seen = 0

    def run(self, model: nn.Module, batch: torch.Tensor, device: torch.device) -> torch.Tensor:
        if self.fail:
            raise ValueError("bad batch")
        return model(batch.to(device))

    def process(self, batch: torch.Tensor, outputs: torch.Tensor) -> None:
        self.seen += len(outputs)

    def evaluate(self) -> dict:
        return {"images": self.seen}


def test_one_loop_runs_under_autocast_and_restores_the_mode() -> None:
    from msfusion.engine.evaluation import evaluate

    model = _Probe().train()
    batches = [torch.rand(2, 3, 4, 4), torch.rand(1, 3, 4, 4)]
    assert evaluate(model, batches, _CountEvaluator(), amp="bf16") == {"images": 3}
    assert model.autocast == [True, True] and model.training
    with pytest.raises(ValueError, match="bad batch"):
        evaluate(model, batches, _CountEvaluator(fail=True))
    assert model.training


def test_panoptic_evaluation_takes_amp() -> None:
    from msfusion.engine.panoptic import build_panoptic_dataset, evaluate_panoptic

    dataset = build_panoptic_dataset({"type": "shapes", "split": "val", "num_images": 1, "image_size": 64, "seed": 0})
    model = mf.create_model(
        "test_panoptic_fpn", num_classes=dataset.num_classes, num_stuff_classes=dataset.num_stuff_classes
    )
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(torch.is_autocast_enabled("cpu")))
    metrics = evaluate_panoptic(model, dataset, amp="bf16", batch_size=1)
    assert seen == [True] and {"PQ", "SQ", "RQ"} <= set(metrics)


def test_metric_files_write_nan_as_null_at_any_depth(tmp_path: Path) -> None:
    from msfusion.engine.results import write_json

    path = write_json(tmp_path / "m.json", {"PQ": 0.5, "per_class": [{"PQ": float("nan")}], "pair": (math.nan, 1)})

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    assert json.loads(path.read_text(), parse_constant=refuse) == {"PQ": 0.5, "per_class": [{"PQ": None}],
                                                                    "pair": [None, 1]}  # fmt: skip
