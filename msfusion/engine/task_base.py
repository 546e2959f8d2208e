"""The task interface of the trainer: what it asks of a task (data, batches, loss, evaluation).

In a module of its own so that the tasks (segmentation in ``tasks.py``,
detection, panoptic) import it without importing each other.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from msfusion.engine.distributed import DistInfo

__all__ = ["Task"]


class Task(ABC):
    """The interface the trainer uses. Subclasses implement the abstract methods.

    Attributes:
        name: the ``task`` value of a recipe.
        primary_metric: the metric that selects the best checkpoint (higher is better).
    """

    name = "task"
    primary_metric = "score"
    #: A ``data.train`` value shown when a recipe has none.
    dataset_example = "{type: folder, root: data/mine, split: train}"

    @abstractmethod
    def dataset_config(self, data: Mapping[str, Any], split: str, seed: int) -> dict[str, Any]:
        """The description of ``data.<split>`` with the recipe's defaults filled in ({} if there is none)."""

    @abstractmethod
    def build_dataset(self, description: dict[str, Any]) -> Any:
        """The dataset a description from :meth:`dataset_config` names."""

    def build_datasets(self, cfg: Mapping[str, Any]) -> tuple[Any, Any | None]:
        """The training set and the validation set (None if the recipe has none)."""
        data, seed = cfg["data"], cfg["train"]["seed"]
        if not data["train"]:
            raise ValueError(f"the recipe has no data.train dataset (e.g. {self.dataset_example})")
        train = self.build_dataset(self.dataset_config(data, "train", seed))
        val_description = self.dataset_config(data, "val", seed)
        val = self.build_dataset(val_description) if val_description else None
        if val is not None and list(val.classes) != list(train.classes):
            raise ValueError(f"train and val datasets have different classes: {train.classes} vs {val.classes}")
        return train, val

    def build_eval_dataset(self, cfg: Mapping[str, Any]) -> Any:
        """The validation set of a recipe (for ``msfusion eval``)."""
        description = self.dataset_config(cfg["data"], "val", cfg["train"]["seed"])
        if not description:
            raise ValueError("the recipe has no data.val dataset to evaluate on")
        return self.build_dataset(description)

    @abstractmethod
    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        """Batch samples for the DataLoader."""

    def to_device(self, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        """Move the tensors of a batch to ``device``."""
        return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}

    def setup(self, model: nn.Module) -> None:
        """Read what the loss needs from the (unwrapped) model, once before training (optional)."""
        return None

    @abstractmethod
    def loss(self, forward: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """The scalar training loss of a batch and the values to log.

        ``forward(images)`` returns the model's training outputs (its
        ``forward_train``); it may be wrapped in DistributedDataParallel, so a
        task calls it rather than the model's methods, and gradients are then
        synchronised over ranks.
        """

    @abstractmethod
    def evaluate(
        self,
        model: nn.Module,
        dataset: Any,
        cfg: Mapping[str, Any],
        device: torch.device,
        dist_info: DistInfo,
    ) -> dict[str, Any]:
        """Metrics on ``dataset`` (must contain ``primary_metric``), the same on every rank."""

    def model_kwargs(self, dataset: Any) -> dict[str, Any]:
        """Model constructor arguments the data decides (e.g. the class count)."""
        return {}
