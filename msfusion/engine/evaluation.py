"""One evaluation loop for every task: ``evaluate(model, loader, evaluator)``.

The loop is task-neutral, as detectron2's ``inference_on_dataset``: it puts
the model in eval mode (and restores its mode afterwards), turns gradients
off, runs each batch under autocast (``amp``), shows a progress bar on the
main rank, and hands every batch and its outputs to a
:class:`DatasetEvaluator`. What is task-specific lives in the evaluator: how a
batch is run through the model (:meth:`DatasetEvaluator.run`: a segmentation
test mode, a detector with flip TTA, a panoptic model), what is accumulated
(:meth:`~DatasetEvaluator.process`) and how ranks are combined into the
metrics (:meth:`~DatasetEvaluator.evaluate`).

Under DDP each rank reads its share of the images (``rank::world_size``,
:func:`shard_loader`) and the evaluator sums or gathers over ranks, so every
rank returns the metrics of the whole dataset.

Example::

    from msfusion.engine.evaluation import evaluate, shard_loader
    from msfusion.engine.segmentation_eval import SegmentationEvaluator

    loader = shard_loader(dataset)                  # one sample at a time, this rank's share
    metrics = evaluate(model, loader, SegmentationEvaluator(dataset.num_classes), amp="bf16")
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from msfusion.engine.distributed import DistInfo

__all__ = ["DatasetEvaluator", "autocast_context", "evaluate", "shard_indices", "shard_loader"]


class DatasetEvaluator(ABC):
    """What a task computes over a dataset (detectron2's ``DatasetEvaluator``, plus how to run a batch).

    :func:`evaluate` calls :meth:`reset` once, then for every batch
    ``outputs = run(model, batch, device)`` (under autocast and ``no_grad``)
    and ``process(batch, outputs)``, and finally :meth:`evaluate`, which
    combines the ranks and returns the metrics.
    """

    def reset(self) -> None:
        """Forget what earlier evaluations accumulated."""
        return None

    @abstractmethod
    def run(self, model: nn.Module, batch: Any, device: torch.device) -> Any:
        """The model's outputs for one batch of the loader; ``len(outputs)`` is its number of images."""

    @abstractmethod
    def process(self, batch: Any, outputs: Any) -> None:
        """Accumulate one batch and its outputs."""

    @abstractmethod
    def evaluate(self) -> dict[str, Any]:
        """The metrics of everything processed, over all ranks (every rank gets the same)."""


def autocast_context(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``amp`` in {"none", "bf16", "fp16"}; fp16 needs CUDA."""
    if amp == "none":
        return contextlib.nullcontext()
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp 'fp16' needs CUDA; use amp=bf16 on CPU")
    return torch.autocast(device_type=device.type, dtype=torch.float16 if amp == "fp16" else torch.bfloat16)


def shard_indices(length: int, dist_info: DistInfo | None = None) -> list[int]:
    """The dataset indices this rank evaluates: ``rank::world_size`` (all of them in one process)."""
    dist_info = dist_info or DistInfo()
    return list(range(dist_info.rank, length, dist_info.world_size))


def shard_loader(
    dataset: Any,
    dist_info: DistInfo | None = None,
    *,
    batch_size: int | None = None,
    num_workers: int = 0,
    collate_fn: Callable[[list[Any]], Any] | None = None,
) -> DataLoader:
    """A loader over this rank's share of ``dataset`` (:func:`shard_indices`), in order.

    ``batch_size=None`` yields single samples (segmentation scores images one
    by one, each at its own size); detection and panoptic batch lists of
    images with ``collate_fn``.
    """
    subset = Subset(dataset, shard_indices(len(dataset), dist_info))
    return DataLoader(subset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_fn)


def _model_device(model: nn.Module) -> torch.device:
    weight = next(iter(model.parameters()), None)
    return weight.device if weight is not None else torch.device("cpu")


def _total(loader: Iterable[Any]) -> int | None:
    try:
        return len(loader.dataset)  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        return None


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    evaluator: DatasetEvaluator,
    *,
    device: torch.device | str | None = None,
    amp: str = "none",
    progress: bool = False,
    dist_info: DistInfo | None = None,
) -> dict[str, Any]:
    """Run ``model`` over ``loader`` and return ``evaluator``'s metrics.

    Args:
        model: put in eval mode here; its training mode is restored afterwards,
            also when a batch fails.
        loader: batches of this rank's share (:func:`shard_loader`).
        evaluator: the task's :class:`DatasetEvaluator`.
        device: where the evaluator puts the inputs (default: the model's).
        amp: autocast dtype: "none", "bf16" or "fp16" (CUDA only).
        progress: show a tqdm bar of images (main rank only).
        dist_info: this process's rank (only the main rank shows progress).

    Returns:
        ``evaluator.evaluate()``: the same metrics on every rank.
    """
    device = torch.device(device) if device is not None else _model_device(model)
    dist_info = dist_info or DistInfo(device=device)
    evaluator.reset()
    was_training = model.training
    model.eval()
    bar = None
    if progress and dist_info.is_main:
        from tqdm import tqdm

        bar = tqdm(total=_total(loader), desc="eval", unit="img", dynamic_ncols=True, leave=False)
    try:
        for batch in loader:
            with autocast_context(device, amp):
                outputs = evaluator.run(model, batch, device)
            evaluator.process(batch, outputs)
            if bar is not None:
                bar.update(len(outputs))
    finally:
        if bar is not None:
            bar.close()
        model.train(was_training)
    return evaluator.evaluate()
