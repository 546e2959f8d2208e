"""Segmentation inference modes and the dataset evaluator.

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

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from msfusion.engine.distributed import DistInfo, all_reduce_sum
from msfusion.engine.metrics import confusion_matrix, metrics_from_confusion

__all__ = [
    "segment",
    "segment_with_config",
    "check_slide_window",
    "check_test_images",
    "evaluate_segmentation",
    "autocast_context",
]


def autocast_context(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``amp`` in {"none", "bf16", "fp16"}; fp16 needs CUDA."""
    if amp == "none":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp 'fp16' needs CUDA; use amp=bf16 on CPU")
    return torch.autocast(device_type=device.type, dtype=torch.float16 if amp == "fp16" else torch.bfloat16)


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


@torch.no_grad()
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
        :func:`~msfusion.engine.metrics.metrics_from_confusion` output plus
        ``"num_images"``.
    """
    cfg = dict(eval_cfg or {})
    device = torch.device(device)
    dist_info = dist_info or DistInfo(device=device)
    num_classes = dataset.num_classes
    ignore_index = getattr(dataset, "ignore_index", 255)
    indices = list(range(dist_info.rank, len(dataset), dist_info.world_size))
    loader = DataLoader(Subset(dataset, indices), batch_size=None, num_workers=num_workers)
    confusion = torch.zeros((num_classes, num_classes), dtype=torch.int64, device=device)
    was_training = model.training
    model.eval()
    bar = None
    if progress and dist_info.is_main:
        from tqdm import tqdm

        bar = tqdm(total=len(indices), desc="eval", unit="img", dynamic_ncols=True)
    try:
        for sample in loader:
            image = sample["image"].unsqueeze(0).to(device)
            mask = sample["mask"].to(device)
            try:
                with autocast_context(device, amp):
                    scores = segment_with_config(model, image, cfg)
            except (ValueError, FloatingPointError) as err:
                raise type(err)(f"{sample.get('path', '?')}: {err}") from err
            scores = scores.float()
            if scores.shape[-2:] != mask.shape[-2:]:
                scores = F.interpolate(scores, size=mask.shape[-2:], mode="bilinear", align_corners=False)
            pred = scores.argmax(dim=1)[0]
            try:
                confusion += confusion_matrix(pred, mask, num_classes, ignore_index)
            except ValueError as err:
                raise ValueError(f"{sample.get('path', '?')}: {err}") from None
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    all_reduce_sum(confusion)
    metrics = metrics_from_confusion(confusion.cpu(), getattr(dataset, "classes", None))
    metrics["num_images"] = len(dataset)
    # (K, K) pixel counts, rows the true class: ``msfusion eval`` draws it as a picture.
    metrics["confusion_matrix"] = confusion.cpu().tolist()
    return metrics
