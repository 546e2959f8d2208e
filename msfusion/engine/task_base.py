"""The task interface: what the trainer and the commands ask of a task.

A :class:`Task` owns everything that differs between segmentation, detection
and panoptic segmentation, so that the trainer and the commands never ask
which task they run: its dataset types, batches and loss (training), its
:class:`~msfusion.engine.evaluation.DatasetEvaluator` (the shared evaluation
loop does the rest), the files ``msfusion eval`` writes, what ``msfusion
predict`` writes, and the embedded demo. The task is chosen once, from a
recipe's ``task`` key or a checkpoint sidecar's, with ``get_task``.

Tasks register by name in ``msfusion.engine.tasks`` (``register_task``,
``get_task``). The interface is in a module of its own so that the tasks
(``segmentation``, ``detection``, ``panoptic``) import it without importing
each other.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from msfusion.engine.distributed import DistInfo

__all__ = ["PredictOptions", "Task"]


@dataclass(frozen=True)
class PredictOptions:
    """What ``msfusion predict`` was asked for; a task refuses the options it cannot honour.

    Attributes:
        tta: test-time augmentation (the task's kind).
        slide: ``(crop, stride)`` of a sliding-window test, or None.
        resize: ``"recipe"`` (the training recipe's test scale), None (keep
            the size) or ``(long, short)``.
        fast: run an inference-optimised copy (:func:`msfusion.optimize_for_inference`).
        device: the torch device.
        on_bad_file: "raise" or "skip" unreadable images.
        progress: show a progress bar.
    """

    tta: bool = False
    slide: tuple[int, int] | None = None
    resize: str | tuple[int, int] | None = "recipe"
    fast: bool = False
    device: str = "cpu"
    on_bad_file: str = "raise"
    progress: bool = True

    def given(self) -> dict[str, bool]:
        """The command-line spelling of each option and whether it was asked for."""
        return {
            "--tta": self.tta,
            "--slide": self.slide is not None,
            "--resize": self.resize != "recipe",
            "--fast": self.fast,
        }


class Task(ABC):
    """What the trainer and the commands ask of a task. Subclasses implement the abstract methods.

    Attributes:
        name: the ``task`` value of a recipe.
        primary_metric: the metric that selects the best checkpoint (higher is better).
        dataset_example: a ``data.train`` value shown when a recipe has none.
        compose_keys: ``model.compose`` keys the task's composer takes besides the parts.
        demo_dir: the default report folder of ``msfusion demo --task <name>`` (None: no demo).
        demo_entry: ``"module:function"`` of the demo, called as
            ``function(out_dir, overrides, progress=..., overwrite=...)``. Named,
            not imported: a demo trains through the trainer, which imports the tasks.
        predict_refusals: ``{option: why}`` for ``msfusion predict`` options the task cannot honour.
    """

    name = "task"
    primary_metric = "score"
    dataset_example = "{type: folder, root: data/mine, split: train}"
    compose_keys: frozenset[str] = frozenset()
    demo_dir: str | None = None
    demo_entry: str | None = None
    predict_refusals: Mapping[str, str] = {}

    # ---- data ---------------------------------------------------------------------------------------------

    def dataset_types(self) -> Mapping[str, Callable[..., Any]]:
        """The dataset classes a ``data.<split>.type`` may name, by name: the data registry's for this task."""
        from msfusion.data.registry import datasets

        return datasets(self.name)

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

    # ---- model and training -------------------------------------------------------------------------------

    @staticmethod
    @abstractmethod
    def compose(**kwargs: Any) -> nn.Module:
        """The model of a recipe's ``model.compose`` (its parts by name) and ``model.kwargs``."""

    def model_kwargs(self, dataset: Any) -> dict[str, Any]:
        """Model constructor arguments the data decides (e.g. the class count)."""
        return {}

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

    # ---- evaluation ---------------------------------------------------------------------------------------

    def check_test_options(self, eval_cfg: Mapping[str, Any], fast: bool = False) -> None:
        """Refuse test options (a recipe's ``eval`` section, ``--fast``) the task would ignore silently."""
        return None

    @abstractmethod
    def evaluator(self, dataset: Any, cfg: Mapping[str, Any], dist_info: DistInfo) -> Any:
        """The :class:`~msfusion.engine.evaluation.DatasetEvaluator` of ``dataset`` under a recipe."""

    @abstractmethod
    def eval_loader(self, dataset: Any, cfg: Mapping[str, Any], dist_info: DistInfo) -> Any:
        """The loader of this rank's share of ``dataset`` (:func:`~msfusion.engine.evaluation.shard_loader`)."""

    def evaluate(
        self,
        model: nn.Module,
        dataset: Any,
        cfg: Mapping[str, Any],
        device: torch.device,
        dist_info: DistInfo,
    ) -> dict[str, Any]:
        """Metrics on ``dataset`` (with ``primary_metric``), the same on every rank: the shared loop."""
        from msfusion.engine.evaluation import evaluate

        evaluator = self.evaluator(dataset, cfg, dist_info)
        metrics = evaluate(
            model,
            self.eval_loader(dataset, cfg, dist_info),
            evaluator,
            device=device,
            amp=cfg["train"]["amp"],
            progress=cfg["train"]["progress"],
            dist_info=dist_info,
        )
        self.finish_evaluation(evaluator)
        return metrics

    def finish_evaluation(self, evaluator: Any) -> None:
        """Keep what an evaluation produced besides its metrics (e.g. detections), if any."""
        return None

    @abstractmethod
    def write_eval_outputs(
        self, metrics: dict[str, Any], cfg: Mapping[str, Any], checkpoint: str | Path, out_dir: str | Path
    ) -> list[Path]:
        """Write the files of ``msfusion eval`` (named by the checkpoint and the test options); their paths."""

    @abstractmethod
    def format_metrics(self, metrics: Mapping[str, Any]) -> str:
        """The text ``msfusion eval`` prints."""

    # ---- prediction ---------------------------------------------------------------------------------------

    def check_predict_options(self, options: PredictOptions) -> None:
        """Refuse ``msfusion predict`` options this task cannot honour (:attr:`predict_refusals`).

        Raises:
            ValueError: naming the option, the reason and the fix.
        """
        given = options.given()
        for option, reason in self.predict_refusals.items():
            if given[option]:
                raise ValueError(
                    f"{option} is not available for a {self.name} checkpoint: {reason}. Run without {option}."
                )

    def predict_files(
        self,
        model: nn.Module,
        inputs: Iterable[str | Path],
        out_dir: str | Path,
        meta: Mapping[str, Any],
        options: PredictOptions,
    ) -> list[Any]:
        """Predict image files with a checkpoint's model (``meta``: its sidecar); what was written, per image.

        Every task's writer (:meth:`file_writer`) takes the sidecar's class
        names and palette and the run options (device, unreadable files,
        progress); the task adds the options only it takes.
        """
        write, task_options = self.file_writer(meta, options)
        return write(
            model,
            inputs,
            out_dir,
            classes=meta.get("classes"),
            palette=meta.get("palette") or None,
            device=options.device,
            on_bad_file=options.on_bad_file,
            progress=options.progress,
            **task_options,
        )

    @abstractmethod
    def file_writer(
        self, meta: Mapping[str, Any], options: PredictOptions
    ) -> tuple[Callable[..., list[Any]], dict[str, Any]]:
        """The function that predicts and writes image files for this task, and the keyword options only it takes.

        The function is called as ``write(model, inputs, out_dir, classes=...,
        palette=..., device=..., on_bad_file=..., progress=..., **options)``
        (see :meth:`predict_files`); ``meta`` is the checkpoint's sidecar.
        """

    @abstractmethod
    def describe_predictions(self, written: Sequence[Path], out_dir: str | Path) -> str:
        """The line ``msfusion predict`` prints after writing."""

    # ---- demo ---------------------------------------------------------------------------------------------

    def run_demo(
        self, out_dir: str | Path, overrides: Iterable[str] = (), progress: bool = True, overwrite: bool = False
    ) -> dict[str, Any]:
        """Train on synthetic shapes, evaluate, write a report folder; returns ``metrics``, ``table``, times, paths."""
        if not self.demo_entry:
            raise ValueError(f"the {self.name} task has no embedded demo")
        module, function = self.demo_entry.split(":")
        demo = getattr(importlib.import_module(module), function)
        return demo(out_dir, overrides, progress=progress, overwrite=overwrite)

    def describe_demo(self, result: Mapping[str, Any]) -> str:
        """The lines ``msfusion demo`` prints after :meth:`run_demo`: its table, score, times and report folder."""
        metrics = result["metrics"]
        return (
            f"{result['table']}\n"
            f"{self.demo_score(metrics)} on {metrics['num_images']} held-out images; "
            f"training {result['train_time_s']:.0f} s, total {result['wall_time_s']:.0f} s\n"
            f"report: {result['out_dir']} (start with README.txt)"
        )

    def demo_score(self, metrics: Mapping[str, Any]) -> str:
        """The demo's headline score in words (``mIoU 80.12 %``), for :meth:`describe_demo`."""
        raise ValueError(f"the {self.name} task has no embedded demo")
