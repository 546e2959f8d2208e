"""``msfusion demo --task detection``: train a small detector on the shapes data on CPU, evaluate, draw.

The embedded detection default: no download, minutes on a CPU. The recipe
is :data:`DETECTION_DEMO_RECIPE` (the same as ``configs/demo_shapes_detection.yaml``):
FCOS (Tian et al., arXiv 1904.01355) on a ResNet-18 (timm, from scratch: no
pretrained weights exist offline) with an FPN of 96 channels over strides
4-32 plus one extra level (stride 4 because the smallest shapes are a few
pixels wide), 128x128 images (the detector does not resize them), random
horizontal flips, AdamW lr 1e-3 with a 50-step warm-up then poly decay, batch
8, 800 steps. Measured with torch 2.11 on 2 otherwise idle CPU threads: 75 s of
training, 82 s in all, 45.5 box AP / 70.8 AP50 / 50.0 AP75 on the 100
held-out images (TP 372, FP 103, FN 179 at IoU 0.5, score 0.5); a busy
machine takes several times longer. The report folder holds:

- ``metrics.json``: COCO box AP / AP50 / AP75 / APs / APm / APl and the error
  analysis at IoU 0.5, score 0.5, on held-out images;
- ``detections.json``: the held-out detections in COCO result format;
- ``predictions.png``: held-out images with the predicted boxes, class names
  and scores (``torchvision.utils.draw_bounding_boxes``) beside the ground truth;
- ``training_curve.png``: training loss and learning rate, and the held-out
  box AP / AP50 / AP75 (%) of the final evaluation;
- ``run/``: the training run (checkpoints, config).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

__all__ = ["DETECTION_DEMO_RECIPE", "run_detection_demo"]

DETECTION_DEMO_RECIPE: dict[str, Any] = {
    "task": "detection",
    "model": {
        "name": "fcos_resnet18_shapes",
        "compose": {
            "arch": "fcos",
            "backbone": "resnet18",
            "backbone_kwargs": {"out_indices": [1, 2, 3, 4]},
            "neck": "fpn",
            "neck_kwargs": {"out_chs": 64, "in_strides": [4, 8, 16, 32], "extra_levels": 1},
        },
        "kwargs": {"min_size": 128, "max_size": 128, "head_convs": 2, "score_thresh": 0.05, "detections_per_img": 100},
    },
    "data": {
        "train": {
            "type": "shapes",
            "split": "train",
            "num_images": 4000,
            "image_size": 128,
            "seed": 0,
            "transforms": {"kind": "train"},
        },
        "val": {"type": "shapes", "split": "val", "num_images": 100, "image_size": 128, "seed": 0},
        "batch_size": 8,
        "num_workers": 0,
    },
    "optim": {"lr": 1.0e-3, "weight_decay": 0.05, "custom_keys": {}},
    "schedule": {"iters": 800, "warmup_iters": 50},
    "train": {
        "work_dir": "work_dirs/demo_detection",
        "seed": 0,
        "log_interval": 20,
        "eval_interval": 0,  # the demo evaluates the final checkpoint once
        "ckpt_interval": 800,
        "keep_checkpoints": 1,
        "clip_grad": 10.0,
        "tensorboard": False,
    },
}


def run_detection_demo(
    out_dir: str | Path = "msfusion_demo_detection",
    overrides: Iterable[str] = (),
    progress: bool = True,
    num_examples: int = 6,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train, evaluate and write the report folder; returns the metrics and paths.

    Args:
        out_dir: the report folder (created).
        overrides: ``key=value`` changes to :data:`DETECTION_DEMO_RECIPE`.
        progress: show progress bars.
        num_examples: held-out images drawn in ``predictions.png``.
        overwrite: replace an earlier demo run in ``out_dir``; without it that is an error.
    """
    from PIL import Image

    from msfusion.engine.demo import demo_result, train_demo_recipe
    from msfusion.engine.detection import DetectionTask, draw_detections, format_detection_metrics
    from msfusion.engine.results import write_json
    from msfusion.engine.visualize import plot_training_curve
    from msfusion.registry import load_model

    out_dir = Path(out_dir)
    start = time.perf_counter()
    cfg, summary = train_demo_recipe(DETECTION_DEMO_RECIPE, out_dir, overrides, progress, overwrite)
    task = DetectionTask()
    val = task.build_eval_dataset(cfg)
    last = Path(summary["last_checkpoint"]) if summary["last_checkpoint"] else None
    if last is None:
        raise ValueError("the demo recipe must write a checkpoint at the last step (train.ckpt_interval > 0)")
    model = load_model(last).eval()
    metrics = task.evaluate(model, val, cfg, torch.device("cpu"), _single())
    write_json(out_dir / "metrics.json", metrics)
    (out_dir / "detections.json").write_text(json.dumps(task.last_results))
    # The demo evaluates once, at the end: the validation panel shows that evaluation (box AP / AP50 / AP75).
    evaluation = {"step": summary["step"], **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
    plot_training_curve(summary["history"], [evaluation], out_dir / "training_curve.png", "detection")
    rows = []
    for index in range(min(num_examples, len(val))):
        sample = val[index]
        with torch.no_grad():
            output = model([sample["image"]])[0]
        truth = {**sample["target"], "scores": torch.ones(len(sample["target"]["labels"]))}
        predicted = draw_detections(sample["image"], output, val.classes, val.palette)
        expected = draw_detections(sample["image"], truth, val.classes, val.palette)
        rows.append(torch.cat([expected, predicted], dim=2))
    grid = torch.cat(rows, dim=1) if rows else torch.zeros(3, 1, 1, dtype=torch.uint8)
    Image.fromarray(grid.permute(1, 2, 0).numpy()).save(out_dir / "predictions.png")
    table = format_detection_metrics(metrics)
    wall = time.perf_counter() - start
    (out_dir / "README.txt").write_text(
        f"msfusion detection demo: {summary['step']} steps of {cfg['model']['name']} (from scratch) on "
        f"synthetic shapes, {summary['train_time_s']:.0f} s of training, {wall:.0f} s in all.\n"
        f"Held-out COCO metrics (%, {metrics['num_images']} images):\n{table}\n"
        "predictions.png: each row is ground truth | prediction (score >= 0.5).\n"
        f"Checkpoint: {last} (msfusion predict --checkpoint {last} IMAGE --out preds/)\n"
    )
    return demo_result(out_dir, summary, metrics, table, wall, checkpoint=str(last))


def _single() -> Any:
    from msfusion.engine.distributed import DistInfo

    return DistInfo()
