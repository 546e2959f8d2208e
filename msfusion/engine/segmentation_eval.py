"""Segmentation test modes and the segmentation evaluator (mIoU family) of the shared evaluation loop.

Test modes (as in the official SegNeXt test configs): ``whole`` (the full image at once; the
segmentor pads to a multiple of 32 inside, as mmseg's ``size_divisor=32``),
``slide`` (crop/stride windows averaged where they overlap; Cityscapes uses
crop 1024, stride 768) and multi-scale + flip (ratios 0.5-1.75, softmax
scores averaged; the ``_ms`` test of the SegNeXt tables). Scores are
resized to the label's size before the arg-max, as mmseg scores predictions
at the original label resolution.

Under DDP every rank scores its share of the images (``rank::world_size``)
and the confusion matrices are summed over ranks, so every rank returns the
metrics of the whole dataset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msfusion.engine.distributed import DistInfo, all_reduce_sum
from msfusion.engine.evaluation import DatasetEvaluator, evaluate, shard_loader
from msfusion.engine.segmentation_metrics import confusion_matrix, metrics_from_confusion

__all__ = [
    "segment",
    "segment_with_config",
    "check_slide_window",
    "check_test_images",
    "SegmentationEvaluator",
    "evaluate_segmentation",
]


@torch.no_grad()
def segment(
    model: nn.Module,
    images: Tensor,
    *,
    mode: str = "whole",
    crop_size: Sequence[int] = (512, 512),
    stride: Sequence[int] = (341, 341),
    tta: bool = False,
    scales: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75),
    flip: bool = True,
) -> Tensor:
    """Class scores (B, K, H, W) for normalised images (B, 3, H, W) with the chosen test mode.

    ``whole`` and ``slide`` return logits; ``tta=True`` returns softmax
    probabilities averaged over ``scales`` (and flips). Either way the arg-max
    over dim 1 is the prediction. The model must be in eval mode.

    Raises:
        ValueError: an unknown mode; a crop or stride that is not positive, or a
            stride larger than the crop (windows would leave pixels uncovered);
            images of another dtype than the weights; NaN or infinite input
            values (one such pixel spreads to every output through attention
            and global pooling).
        FloatingPointError: the scores are not finite although the input is.
    """
    if mode not in ("whole", "slide"):
        raise ValueError(f"test mode must be 'whole' or 'slide', got {mode!r}")
    crop = step = None
    if mode == "slide":
        crop, step = check_slide_window(crop_size, stride)
    check_test_images(model, images)
    if tta:
        scales = tuple(float(s) for s in scales)
        if not scales or min(scales) <= 0:
            raise ValueError(f"test scales must be positive numbers, got {scales}")
        scores = model.aug_inference(images, scales=scales, flip=flip, crop_size=crop, stride=step)
    elif mode == "slide":
        scores = model.slide_inference(images, crop, step)
    else:
        scores = model(images)
    if not bool(torch.isfinite(scores).all()):
        raise FloatingPointError(
            "the model produced NaN or infinite scores for a finite input; are its weights finite "
            "(a diverged training run)?"
        )
    return scores


def check_slide_window(crop_size: Sequence[int], stride: Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """``(crop, stride)`` as (H, W) pairs after checking that sliding windows cover every pixel.

    Windows start every ``stride`` pixels and the last one is moved back to the
    image edge, so a stride no larger than the crop covers every pixel.
    """
    try:
        crop = tuple(int(c) for c in crop_size)
        step = tuple(int(s) for s in stride)
    except (TypeError, ValueError):
        raise ValueError(f"slide crop and stride must be integer pairs, got {crop_size!r} and {stride!r}") from None
    if len(crop) != 2 or len(step) != 2 or min(crop) < 1 or min(step) < 1:
        raise ValueError(f"slide crop {crop} and stride {step} must be pairs of positive integers (H, W)")
    if step[0] > crop[0] or step[1] > crop[1]:
        raise ValueError(
            f"slide stride {step} is larger than the crop {crop}: windows would leave pixels uncovered. "
            "Use a stride no larger than the crop, e.g. 2/3 of it."
        )
    return crop, step


def check_test_images(model: nn.Module, images: Tensor) -> None:
    """Reject inputs that would give a wrong or cryptic result: another dtype than the weights, NaN/inf."""
    weight = next((p for p in model.parameters() if p.is_floating_point()), None)
    if weight is not None and torch.is_floating_point(images) and images.dtype != weight.dtype:
        raise ValueError(
            f"images are {images.dtype} but the model's weights are {weight.dtype}; convert the input "
            f"(images.to({weight.dtype})) or the model (model.to({images.dtype}))"
        )
    if torch.is_floating_point(images):
        bad = ~torch.isfinite(images)
        if bool(bad.any()):
            where = [int(i) for i in bad.nonzero()[0].tolist()]
            raise ValueError(
                f"the input holds {int(bad.sum())} NaN or infinite value(s), first at index {where} of a "
                f"{tuple(images.shape)} batch; one such pixel turns every output into NaN. Clean the image "
                "(e.g. torch.nan_to_num) before testing"
            )


def segment_with_config(model: nn.Module, images: Tensor, cfg: Mapping[str, Any]) -> Tensor:
    """``segment`` with the test options of a recipe's ``eval`` section (defaults as ``segment``)."""
    return segment(
        model,
        images,
        mode=cfg.get("mode", "whole"),
        crop_size=cfg.get("crop_size", (512, 512)),
        stride=cfg.get("stride", (341, 341)),
        tta=bool(cfg.get("tta", False)),
        scales=cfg.get("scales", (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)),
        flip=bool(cfg.get("flip", True)),
    )


class SegmentationEvaluator(DatasetEvaluator):
    """mIoU, mAcc, aAcc and per-class IoU / Acc from a confusion matrix summed over images and ranks.

    Each sample (``"image"`` (3, H, W), ``"mask"`` (H, W)) is scored with the
    test options of a recipe's ``eval`` section (:func:`segment_with_config`);
    the scores are resized to the label's size before the arg-max.

    Args:
        num_classes: K.
        ignore_index: label value that is not scored.
        class_names: names of the K classes for the per-class table.
        eval_cfg: ``mode``, ``crop_size``, ``stride``, ``tta``, ``scales``, ``flip``.
        device: where the confusion matrix lives when this rank scored no image
            (DDP with more ranks than images); otherwise beside the scores.
    """

    def __init__(
        self,
        num_classes: int,
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        eval_cfg: Mapping[str, Any] | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names = class_names
        self.eval_cfg = dict(eval_cfg or {})
        self.device = torch.device(device) if device is not None else None
        self.reset()

    def reset(self) -> None:
        self.confusion: Tensor | None = None
        self.num_images = 0

    def run(self, model: nn.Module, batch: Mapping[str, Any], device: torch.device) -> Tensor:
        image = batch["image"].unsqueeze(0).to(device)
        try:
            return segment_with_config(model, image, self.eval_cfg)
        except (ValueError, FloatingPointError) as err:
            raise type(err)(f"{batch.get('path', '?')}: {err}") from err

    def process(self, batch: Mapping[str, Any], outputs: Tensor) -> None:
        scores = outputs.float()
        mask = batch["mask"].to(scores.device)
        if scores.shape[-2:] != mask.shape[-2:]:
            scores = F.interpolate(scores, size=mask.shape[-2:], mode="bilinear", align_corners=False)
        pred = scores.argmax(dim=1)[0]
        try:
            counts = confusion_matrix(pred, mask, self.num_classes, self.ignore_index)
        except ValueError as err:
            raise ValueError(f"{batch.get('path', '?')}: {err}") from None
        self.confusion = counts if self.confusion is None else self.confusion + counts
        self.num_images += 1

    def evaluate(self) -> dict[str, Any]:
        device = self.confusion.device if self.confusion is not None else (self.device or torch.device("cpu"))
        confusion = torch.zeros((self.num_classes, self.num_classes), dtype=torch.int64, device=device)
        if self.confusion is not None:
            confusion += self.confusion
        count = torch.tensor([self.num_images], dtype=torch.int64, device=device)
        all_reduce_sum(confusion)
        all_reduce_sum(count)
        metrics = metrics_from_confusion(confusion.cpu(), self.class_names)
        metrics["num_images"] = int(count.item())
        # (K, K) pixel counts, rows the true class: ``msfusion eval`` draws it as a picture.
        metrics["confusion_matrix"] = confusion.cpu().tolist()
        return metrics


def evaluate_segmentation(
    model: nn.Module,
    dataset: Any,
    *,
    eval_cfg: Mapping[str, Any] | None = None,
    device: torch.device | str = "cpu",
    amp: str = "none",
    dist_info: DistInfo | None = None,
    progress: bool = False,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Score ``model`` on ``dataset`` (samples with "image" and "mask"); returns metrics.

    The shared loop (:func:`msfusion.engine.evaluation.evaluate`) with a
    :class:`SegmentationEvaluator`.

    Args:
        model: a segmentor; put in eval mode here and restored afterwards.
        dataset: a msfusion dataset (``classes``, ``num_classes``, ``ignore_index``).
        eval_cfg: ``mode``, ``crop_size``, ``stride``, ``tta``, ``scales``, ``flip``
            (the ``eval`` section of a recipe).
        device: where to run.
        amp: autocast dtype ("none", "bf16", "fp16").
        dist_info: under DDP, each rank scores ``rank::world_size`` and the
            confusion matrices are summed.
        progress: show a tqdm bar (rank 0 only).
        num_workers: DataLoader workers.

    Returns:
        :func:`~msfusion.engine.segmentation_metrics.metrics_from_confusion`
        output plus ``"num_images"`` and ``"confusion_matrix"``.
    """
    device = torch.device(device)
    dist_info = dist_info or DistInfo(device=device)
    evaluator = SegmentationEvaluator(
        dataset.num_classes,
        getattr(dataset, "ignore_index", 255),
        getattr(dataset, "classes", None),
        eval_cfg,
        device,
    )
    loader = shard_loader(dataset, dist_info, num_workers=num_workers)
    return evaluate(model, loader, evaluator, device=device, amp=amp, progress=progress, dist_info=dist_info)
