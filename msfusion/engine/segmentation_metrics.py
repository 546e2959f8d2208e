"""Semantic-segmentation metrics from a confusion matrix: aAcc, mIoU, mAcc, per-class IoU/Acc.

Definitions follow mmseg's ``IoUMetric`` (the evaluator of the official
SegNeXt results): pixels whose label is the ignore index
are dropped; per class, ``IoU = TP / (TP + FP + FN)`` and ``Acc = TP / (TP + FN)``;
a class absent from both labels and predictions has IoU NaN, a class absent
from the labels has Acc NaN, and the means skip NaN (``nanmean``);
``aAcc = sum(TP) / labelled pixels``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["confusion_matrix", "metrics_from_confusion", "format_metrics_table", "save_metrics"]


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """Count (label, prediction) pairs.

    Args:
        pred: predicted class ids, any shape.
        target: labels, same shape; ``ignore_index`` pixels are skipped.
        num_classes: K.
        ignore_index: label value to skip.

    Returns:
        (K, K) int64 matrix, rows = label, columns = prediction.

    Raises:
        ValueError: shapes differ, or a label outside [0, K) that is not the ignore index.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} differs from label shape {tuple(target.shape)}")
    pred = pred.reshape(-1).long()
    target = target.reshape(-1).long()
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    bad = (target < 0) | (target >= num_classes)
    if bad.any():
        values = sorted(set(target[bad].unique().tolist()))
        raise ValueError(
            f"label values {values} are outside [0, {num_classes}) and not the ignore index {ignore_index}"
        )
    index = target * num_classes + pred.clamp(0, num_classes - 1)
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return sum(finite) / len(finite) if finite else float("nan")


def metrics_from_confusion(confusion: Tensor, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """aAcc, mIoU, mAcc and the per-class table from a (K, K) confusion matrix.

    Returns:
        ``{"aAcc", "mIoU", "mAcc"}`` as fractions in [0, 1] and ``"per_class"``:
        a list of ``{"class", "IoU", "Acc", "pixels"}`` (NaN where undefined).
    """
    cm = confusion.double()
    tp = cm.diag()
    label_area = cm.sum(dim=1)
    pred_area = cm.sum(dim=0)
    union = label_area + pred_area - tp
    iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))
    acc = torch.where(label_area > 0, tp / label_area.clamp(min=1), torch.full_like(tp, float("nan")))
    total = label_area.sum().item()
    names = list(class_names) if class_names is not None else [str(i) for i in range(cm.shape[0])]
    if len(names) != cm.shape[0]:
        raise ValueError(f"{len(names)} class names for a {cm.shape[0]}-class confusion matrix")
    per_class = [
        {
            "class": names[i],
            "IoU": iou[i].item(),
            "Acc": acc[i].item(),
            "pixels": int(label_area[i].item()),
        }
        for i in range(cm.shape[0])
    ]
    return {
        "aAcc": tp.sum().item() / total if total > 0 else float("nan"),
        "mIoU": _nanmean(iou.tolist()),
        "mAcc": _nanmean(acc.tolist()),
        "per_class": per_class,
    }


def _pct(value: float) -> str:
    return "  n/a" if math.isnan(value) else f"{100 * value:6.2f}"


def format_metrics_table(metrics: dict[str, Any]) -> str:
    """A plain-text table: one row per class (IoU, Acc in %), then the summary line."""
    rows = metrics["per_class"]
    width = max([5] + [len(r["class"]) for r in rows])
    lines = [f"{'class':<{width}}  {'IoU':>6}  {'Acc':>6}", f"{'-' * width}  ------  ------"]
    lines += [f"{r['class']:<{width}}  {_pct(r['IoU'])}  {_pct(r['Acc'])}" for r in rows]
    lines.append(f"aAcc {_pct(metrics['aAcc'])}  mIoU {_pct(metrics['mIoU'])}  mAcc {_pct(metrics['mAcc'])}")
    return "\n".join(lines)


def save_metrics(metrics: dict[str, Any], out_dir: str | Path, stem: str = "metrics") -> tuple[Path, Path]:
    """Write ``<stem>.json`` (NaN as null) and ``<stem>_per_class.csv``; returns both paths."""
    from msfusion.checkpoint import atomic_write
    from msfusion.engine.results import write_json

    out_dir = Path(out_dir)
    json_path = out_dir / f"{stem}.json"
    csv_path = out_dir / f"{stem}_per_class.csv"
    write_json(json_path, metrics, indent=2)

    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["class", "IoU", "Acc", "pixels"])
            for row in metrics["per_class"]:
                writer.writerow(
                    [
                        row["class"],
                        "" if math.isnan(row["IoU"]) else f"{row['IoU']:.6f}",
                        "" if math.isnan(row["Acc"]) else f"{row['Acc']:.6f}",
                        row["pixels"],
                    ]
                )

    atomic_write(csv_path, write_csv)
    return json_path, csv_path
