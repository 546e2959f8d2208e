"""Tasks: what the task-neutral trainer asks of a task (data, loss, evaluation).

The trainer (``msfusion.engine.trainer``) knows nothing about segmentation: it
asks a :class:`Task` for the datasets, the batch layout, the loss of a batch
and an evaluation. A detection task adds a subclass here (``loss`` = the
torchvision detector's loss dict summed; ``evaluate`` = COCO AP) and registers
it in ``TASKS``; no second loop.

Segmentation (as in the official SegNeXt configs, after mmsegmentation): cross-entropy with ignore index 255,
averaged over labelled pixels (``train.avg_non_ignore``; the paper recipes divide by all pixels, as
mmsegmentation's default and the official trainings do), plus each auxiliary head's cross-entropy times
its weight (``model.auxiliary_weights``; SegNeXt has none).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msfusion.engine.distributed import DistInfo
from msfusion.engine.task_base import Task
from msfusion.layers import is_channels_last

__all__ = ["Task", "SegmentationTask", "TASKS", "build_task"]


def _dataset_kwargs(data_cfg: Mapping[str, Any], split: str, seed: int) -> dict[str, Any]:
    """The dataset description of ``split`` with the recipe's transforms and policies filled in."""
    from msfusion.data.registry import datasets

    types = datasets("segmentation")
    cfg = dict(data_cfg[split])
    if not cfg:
        return {}
    if "type" not in cfg:
        raise ValueError(f"data.{split} needs a 'type' (one of {sorted(types)})")
    accepted = set(inspect.signature(types[cfg["type"]]).parameters) if cfg["type"] in types else set()
    if "transforms" not in cfg:
        if split == "train":
            cfg["transforms"] = {
                "type": "train",
                "crop_size": list(data_cfg["crop_size"]),
                "scale": list(data_cfg["scale"]),
                "ratio_range": tuple(data_cfg["ratio_range"]),
                "cat_max_ratio": data_cfg["cat_max_ratio"],
                "photometric": data_cfg["photometric"],
            }
        else:
            scale = data_cfg["eval_scale"]
            cfg["transforms"] = {"type": "eval", "scale": list(scale) if scale else None}
    if split == "train" and "aug_seed" in accepted and cfg.get("aug_seed") is None:
        # Augmentation drawn from (seed, epoch, index): independent of worker count, exact on resume.
        cfg["aug_seed"] = seed
    if "on_bad_file" in accepted and "on_bad_file" not in cfg:
        cfg["on_bad_file"] = data_cfg["on_bad_file"]
    return cfg


class SegmentationTask(Task):
    """Semantic segmentation: CE (ignore 255) + weighted auxiliary CE; mIoU evaluation."""

    name = "segmentation"
    primary_metric = "mIoU"

    def __init__(self, ignore_index: int = 255) -> None:
        self.ignore_index = ignore_index
        self.avg_non_ignore = True
        self.auxiliary_weights: tuple[float, ...] = ()

    def setup(self, model: nn.Module) -> None:
        self.auxiliary_weights = tuple(getattr(model, "auxiliary_weights", ()) or ())

    def dataset_config(self, data: Mapping[str, Any], split: str, seed: int) -> dict[str, Any]:
        return _dataset_kwargs(data, split, seed)

    def build_dataset(self, description: dict[str, Any]) -> Any:
        from msfusion.data import build_dataset

        return build_dataset(description)

    def build_datasets(self, cfg: Mapping[str, Any]) -> tuple[Any, Any | None]:
        train, val = super().build_datasets(cfg)
        self.ignore_index = getattr(train, "ignore_index", self.ignore_index)
        self.avg_non_ignore = bool(cfg["train"].get("avg_non_ignore", True))
        return train, val

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        from msfusion.data import collate_segmentation

        return collate_segmentation(samples)

    def model_kwargs(self, dataset: Any) -> dict[str, Any]:
        return {"num_classes": dataset.num_classes}

    def _ce(self, logits: Tensor, mask: Tensor) -> Tensor:
        if is_channels_last(logits):
            # Channels-last logits (a channels-last model): the classes are the innermost axis, so CE runs over
            # (pixel, class) rows without an NCHW copy; with the NHWC upsample's backward the loss costs 0.8 s
            # instead of 1.4 s per SegNeXt batch of 2x150x512x512 on one CPU thread. Same sum, same gradient.
            logits = logits.permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
            mask = mask.reshape(-1)
        if not self.avg_non_ignore:
            # mmsegmentation's default (avg_non_ignore=False), used by the papers' official trainings:
            # ignored pixels add zero but still count in the mean's denominator.
            summed = F.cross_entropy(logits.float(), mask, ignore_index=self.ignore_index, reduction="sum")
            return summed / mask.numel()
        if not (mask != self.ignore_index).any():
            # Every pixel ignored: a zero loss that keeps the graph, instead of CE's NaN.
            return logits.sum() * 0.0
        return F.cross_entropy(logits.float(), mask, ignore_index=self.ignore_index)

    def loss(self, forward: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        out = forward(batch["image"])
        mask = batch["mask"]
        num_classes = out["logits"].shape[1]
        bad = (mask != self.ignore_index) & ((mask < 0) | (mask >= num_classes))
        if bad.any():
            values = sorted(set(mask[bad].unique().tolist()))
            raise ValueError(
                f"mask values {values} outside [0, {num_classes}) and not the ignore index {self.ignore_index} "
                f"in a batch of {batch.get('path', '?')}"
            )
        loss_main = self._ce(out["logits"], mask)
        logs = {"loss_ce": loss_main.item()}
        total = loss_main
        aux_logits = out.get("aux_logits") or []
        if len(aux_logits) != len(self.auxiliary_weights):
            raise ValueError(f"{len(aux_logits)} auxiliary outputs but {len(self.auxiliary_weights)} weights")
        for i, (aux, weight) in enumerate(zip(aux_logits, self.auxiliary_weights, strict=True)):
            aux_loss = self._ce(aux, mask) * weight
            logs[f"loss_aux{i}"] = aux_loss.item()
            total = total + aux_loss
        logs["loss"] = total.item()
        return total, logs

    def evaluate(
        self,
        model: nn.Module,
        dataset: Any,
        cfg: Mapping[str, Any],
        device: torch.device,
        dist_info: DistInfo,
    ) -> dict[str, Any]:
        from msfusion.engine.evaluator import evaluate_segmentation

        return evaluate_segmentation(
            model,
            dataset,
            eval_cfg=cfg["eval"],
            device=device,
            amp=cfg["train"]["amp"],
            dist_info=dist_info,
            progress=cfg["train"]["progress"],
        )


TASKS: dict[str, type[Task]] = {"segmentation": SegmentationTask}


def build_task(name: str) -> Task:
    """The task of a recipe's ``task`` key."""
    if name == "detection" and name not in TASKS:
        from msfusion.engine.detection import DetectionTask  # loaded on demand: it needs torchvision's detectors

        TASKS[name] = DetectionTask
    if name == "panoptic" and name not in TASKS:
        from msfusion.engine.panoptic import PanopticTask  # loaded on demand, as detection

        TASKS[name] = PanopticTask
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]()
