"""The semantic segmentation task (``task: segmentation``, the default).

What the task-neutral trainer and commands ask of it (``msfusion.engine.task_base``):
its datasets, batches and loss; its evaluator (``msfusion.engine.segmentation_eval``);
the files ``msfusion eval`` and ``msfusion predict`` write; the SegNeXt demo.

Segmentation (as in the official SegNeXt configs, after mmsegmentation): cross-entropy with ignore index 255,
averaged over labelled pixels (``train.avg_non_ignore``; the paper recipes divide by all pixels, as
mmsegmentation's default and the official trainings do), plus each auxiliary head's cross-entropy times
its weight (``model.auxiliary_weights``; SegNeXt has none).
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from msfusion.engine.distributed import DistInfo
from msfusion.engine.task_base import PredictOptions, Task
from msfusion.engine.tasks import register_task
from msfusion.layers import is_channels_last

__all__ = ["SegmentationTask"]


def _dataset_kwargs(data_cfg: Mapping[str, Any], split: str, seed: int, types: Mapping[str, Any]) -> dict[str, Any]:
    """The dataset description of ``split`` with the recipe's transforms and policies filled in."""
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


@register_task
class SegmentationTask(Task):
    """Semantic segmentation: CE (ignore 255) + weighted auxiliary CE; mIoU evaluation.

    Evaluation uses the recipe's test mode (``eval``: whole or slide windows,
    multi-scale + flip TTA); ``msfusion eval`` writes the metrics JSON, the
    per-class CSV and the confusion-matrix picture; ``msfusion predict``
    writes label, colour and overlay PNGs.
    """

    name = "segmentation"
    primary_metric = "mIoU"
    demo_dir = "msfusion_demo"
    demo_entry = "msfusion.engine.demo:run_demo"

    def __init__(self, ignore_index: int = 255) -> None:
        self.ignore_index = ignore_index
        self.avg_non_ignore = True
        self.auxiliary_weights: tuple[float, ...] = ()

    def setup(self, model: nn.Module) -> None:
        self.auxiliary_weights = tuple(getattr(model, "auxiliary_weights", ()) or ())

    def dataset_config(self, data: Mapping[str, Any], split: str, seed: int) -> dict[str, Any]:
        return _dataset_kwargs(data, split, seed, self.dataset_types())

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

    @staticmethod
    def compose(**kwargs: Any) -> nn.Module:
        """``model.compose`` of a segmentation recipe: ``build_segmentor(backbone=..., neck=..., head=...)``."""
        from msfusion.models.meta_arch.segmentor import build_segmentor

        return build_segmentor(**kwargs)

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

    def evaluator(self, dataset: Any, cfg: Mapping[str, Any], dist_info: DistInfo) -> Any:
        from msfusion.engine.segmentation_eval import SegmentationEvaluator

        return SegmentationEvaluator(
            dataset.num_classes,
            getattr(dataset, "ignore_index", 255),
            getattr(dataset, "classes", None),
            cfg["eval"],
            dist_info.device,
        )

    def eval_loader(self, dataset: Any, cfg: Mapping[str, Any], dist_info: DistInfo) -> Any:
        from msfusion.engine.evaluation import shard_loader

        return shard_loader(dataset, dist_info)  # one image at a time: each is scored at its own size

    def write_eval_outputs(
        self, metrics: dict[str, Any], cfg: Mapping[str, Any], checkpoint: str | Path, out_dir: str | Path
    ) -> list[Path]:
        """``<ckpt>_eval_<mode>[_tta].json`` (with the checkpoint and test options), ``..._per_class.csv`` and
        ``..._confusion.png``; ``confusion_matrix`` is taken out of ``metrics`` into the picture."""
        from msfusion.engine.segmentation_metrics import save_metrics
        from msfusion.engine.visualize import plot_confusion_matrix

        ecfg = cfg["eval"]
        setting = {"mode": ecfg["mode"], "tta": ecfg["tta"]}
        if ecfg["mode"] == "slide":
            setting.update(crop_size=list(ecfg["crop_size"]), stride=list(ecfg["stride"]))
        if ecfg["tta"]:
            setting.update(scales=list(ecfg["scales"]), flip=ecfg["flip"])
        confusion = metrics.pop("confusion_matrix", None)
        record = {"checkpoint": str(Path(checkpoint).resolve()), "eval": setting, **metrics}
        stem = f"{Path(checkpoint).stem}_eval_{ecfg['mode']}" + ("_tta" if ecfg["tta"] else "")
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        paths = list(save_metrics(record, out_dir, stem))
        if confusion is not None:
            names = [r["class"] for r in metrics["per_class"]]
            paths.append(plot_confusion_matrix(confusion, names, Path(out_dir) / f"{stem}_confusion.png"))
        return paths

    def format_metrics(self, metrics: Mapping[str, Any]) -> str:
        """The per-class IoU / Acc table, then aAcc, mIoU, mAcc as one JSON line (for scripts)."""
        from msfusion.engine.segmentation_metrics import format_metrics_table

        summary = json.dumps({k: metrics[k] for k in ("aAcc", "mIoU", "mAcc")})
        return f"{format_metrics_table(dict(metrics))}\n{summary}"

    def check_predict_options(self, options: PredictOptions) -> None:
        from msfusion.engine.segmentation_eval import check_slide_window

        if options.slide is not None:
            crop, stride = options.slide
            check_slide_window((crop, crop), (stride, stride))

    def file_writer(
        self, meta: Mapping[str, Any], options: PredictOptions
    ) -> tuple[Callable[..., list[Any]], dict[str, Any]]:
        """Label, colour and overlay PNGs, with the test options of the checkpoint's recipe unless overridden."""
        from msfusion.engine.segmentation_predict import predict_files

        recipe = meta.get("config") or {}
        eval_cfg = dict(recipe.get("eval") or {})
        if options.tta:
            eval_cfg["tta"] = True
        if options.slide:
            crop, stride = options.slide
            eval_cfg.update(mode="slide", crop_size=[crop, crop], stride=[stride, stride])
        resize = options.resize
        if resize == "recipe":
            resize = (recipe.get("data") or {}).get("eval_scale")
        return predict_files, {"eval_cfg": eval_cfg, "resize": resize}

    def describe_predictions(self, written: Sequence[Path], out_dir: str | Path) -> str:
        return f"wrote {len(written)} x 3 PNGs (label, color, overlay) to {out_dir}"

    def demo_score(self, metrics: Mapping[str, Any]) -> str:
        return f"mIoU {100 * metrics['mIoU']:.2f} %"
