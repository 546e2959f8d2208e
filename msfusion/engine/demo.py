"""The embedded demo: train SegNeXt-T on synthetic shapes on CPU and write a report folder.

The embedded default: no download, a few minutes on a CPU. The
recipe is :data:`DEMO_RECIPE` (the same as ``configs/demo_shapes.yaml``):
SegNeXt-T from scratch (no pretrained weights exist offline) at 128x128 on
the shapes dataset, AdamW lr 2e-3 with the official parameter groups (head
lr x10), 50 warm-up iterations then poly decay, batch 8, bf16 autocast.
Measured on 2 CPU cores: see the ``README.txt`` of a report.

The report folder holds:

- ``metrics.json``, ``metrics_per_class.csv``, ``per_class.txt``: held-out scores;
- ``training_curve.png``: loss, learning rate and validation mIoU / mAcc / aAcc (%);
- ``predictions.png``: image | ground truth | prediction | overlay for
  validation images;
- ``README.txt``: what to look at;
- ``run/``: the training run (config, checkpoints incl. ``best.safetensors``,
  TensorBoard logs).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

__all__ = ["DEMO_RECIPE", "run_demo"]

DEMO_RECIPE: dict[str, Any] = {
    "task": "segmentation",
    "model": {"name": "segnext_t", "kwargs": {"drop_path_rate": 0.0, "in_strides": [4, 8, 16, 32]}},
    "data": {
        "train": {
            "type": "shapes",
            "split": "train",
            "num_images": 4000,
            "image_size": 128,
            "seed": 0,
        },
        "val": {"type": "shapes", "split": "val", "num_images": 100, "image_size": 128, "seed": 0},
        "batch_size": 8,
        "num_workers": 0,
        "crop_size": [128, 128],
        "scale": [128, 128],
        "ratio_range": [0.75, 1.5],
        "photometric": False,
        "eval_scale": None,
    },
    "optim": {"lr": 1.0e-3, "weight_decay": 0.01},
    "schedule": {"iters": 600, "warmup_iters": 50},
    "train": {
        "work_dir": "work_dirs/demo",
        "seed": 0,
        "amp": "bf16",
        "log_interval": 10,
        "eval_interval": 200,
        "ckpt_interval": 600,
        "keep_checkpoints": 1,
    },
    "eval": {"mode": "whole"},
}

_README = """msfusion demo report
====================

What happened: {iters} training steps of {model} (trained from scratch, no
pretrained weights) on {num_train} synthetic "shapes" images of {size}x{size}
pixels, batch {batch}, on {device}; {train_time:.0f} s of training, {wall:.0f} s in all.
Held-out evaluation on {num_val} images of the "val" split (never seen in training):

    mIoU {miou:.2f} %   mAcc {macc:.2f} %   aAcc {aacc:.2f} %

What to look at:
- predictions.png: each row is image | ground truth | prediction | overlay.
  Large shapes should be clean; the smallest ones (a few pixels) and shapes
  hidden behind others are the hard cases. Colours are listed on the right.
- training_curve.png: left, the training loss (log scale) falling while the
  learning rate warms up then decays linearly (poly schedule); right,
  validation mIoU / mAcc / aAcc at each evaluation.
- per_class.txt (also metrics_per_class.csv, metrics.json): IoU and accuracy
  per class. "background" is the easiest class; thin or small shapes
  ("bar", "cross", "star") usually score lowest.
- run/: the training run. run/checkpoints/best.safetensors can be used with
    msfusion predict --checkpoint {best} IMAGE --out preds/
    msfusion export --checkpoint {best} --onnx demo.onnx
  and run/tensorboard with `tensorboard --logdir {tb}`.
"""


def refuse_earlier_run(out_dir: Path, overwrite: bool) -> None:
    """A demo writes into ``out_dir/run``: an earlier run there is replaced only when asked."""
    from msfusion.engine.checkpointing import existing_checkpoints

    if not overwrite and existing_checkpoints(out_dir / "run"):
        raise ValueError(
            f"{out_dir} holds an earlier demo run; pass --overwrite to replace it, or --out DIR for a new folder"
        )


def train_demo_recipe(
    recipe: dict[str, Any], out_dir: Path, overrides: Iterable[str], progress: bool, overwrite: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train a demo recipe (with ``overrides``) into ``out_dir/run``; returns the config and the training summary.

    An earlier run in ``out_dir`` is an error unless ``overwrite``.
    """
    from msfusion.engine.config import apply_overrides, validate_config
    from msfusion.engine.trainer import train

    refuse_earlier_run(out_dir, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    recipe = copy.deepcopy(recipe)
    recipe["train"]["work_dir"] = str(out_dir / "run")
    recipe["train"]["progress"] = progress
    cfg = validate_config(apply_overrides(recipe, overrides))
    return cfg, train(cfg, overwrite=overwrite)


def demo_result(
    out_dir: Path, summary: dict[str, Any], metrics: dict[str, Any], table: str, wall: float, **extra: Any
) -> dict[str, Any]:
    """What a demo returns (:meth:`~msfusion.engine.task_base.Task.describe_demo` prints it).

    ``metrics`` and their ``table`` on the held-out images, the report folder,
    the training time of ``summary`` (:func:`train_demo_recipe`'s), the
    ``wall`` time of the whole demo in seconds, and the demo's ``extra`` keys.
    """
    return {
        "metrics": metrics,
        "table": table,
        "out_dir": str(out_dir),
        "train_time_s": summary["train_time_s"],
        "wall_time_s": wall,
        **extra,
    }


def run_demo(
    out_dir: str | Path = "msfusion_demo",
    overrides: Iterable[str] = (),
    progress: bool = True,
    num_examples: int = 6,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train, evaluate and write the report folder; returns the final metrics and paths.

    Args:
        out_dir: the report folder (created).
        overrides: ``key=value`` changes to :data:`DEMO_RECIPE` (e.g. ``schedule.iters=100``).
        progress: show progress bars.
        num_examples: validation images in ``predictions.png``.
        overwrite: replace an earlier demo run in ``out_dir``; without it that is an error.
    """
    from msfusion.data.segmentation_transforms import denormalize
    from msfusion.engine.segmentation_eval import segment
    from msfusion.engine.segmentation_metrics import format_metrics_table, save_metrics
    from msfusion.engine.visualize import plot_training_curve, prediction_grid

    out_dir = Path(out_dir)
    start = time.perf_counter()
    cfg, summary = train_demo_recipe(DEMO_RECIPE, out_dir, overrides, progress, overwrite)
    metrics = summary["metrics"]
    if metrics is None:
        raise ValueError("the demo recipe must evaluate at the last step (train.eval_interval > 0)")

    from msfusion.engine.tasks import build_task
    from msfusion.registry import load_model

    best = Path(cfg["train"]["work_dir"]) / "checkpoints" / "best.safetensors"
    # The report describes the final model (the metrics above); best.safetensors is kept for reuse.
    last = Path(summary["last_checkpoint"]) if summary["last_checkpoint"] else best
    model = load_model(last).eval()
    val = build_task(cfg["task"]).build_eval_dataset(cfg)
    save_metrics(metrics, out_dir, "metrics")
    table = format_metrics_table(metrics)
    (out_dir / "per_class.txt").write_text(table + "\n")
    plot_training_curve(summary["history"], summary["evals"], out_dir / "training_curve.png", "segmentation")
    images, labels, preds = [], [], []
    for index in range(min(num_examples, len(val))):
        sample = val[index]
        with torch.no_grad():
            pred = segment(model, sample["image"].unsqueeze(0), **cfg["eval"]).argmax(1)[0]
        images.append(denormalize(sample["image"]))
        labels.append(sample["mask"].numpy())
        preds.append(pred.numpy())
    prediction_grid(images, labels, preds, val.classes, val.palette, out_dir / "predictions.png")
    wall = time.perf_counter() - start
    data = cfg["data"]
    size = data["crop_size"][0]
    (out_dir / "README.txt").write_text(
        _README.format(
            iters=summary["step"],
            model=cfg["model"]["name"],
            num_train=len_or(data["train"].get("num_images")),
            size=size,
            batch=data["batch_size"],
            device=f"{'CPU' if not torch.cuda.is_available() else 'GPU'} ({torch.get_num_threads()} threads)",
            train_time=summary["train_time_s"],
            wall=wall,
            num_val=metrics["num_images"],
            miou=100 * metrics["mIoU"],
            macc=100 * metrics["mAcc"],
            aacc=100 * metrics["aAcc"],
            best=best,
            tb=Path(cfg["train"]["work_dir"]) / "tensorboard",
        )
    )
    return demo_result(out_dir, summary, metrics, table, wall, best=summary["best"])


def len_or(value: Any) -> Any:
    return value if value is not None else "?"
