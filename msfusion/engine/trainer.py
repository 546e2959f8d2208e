"""The iteration-based training loop, task-neutral, for one process or many (DDP).

Recipe (the official SegNeXt ADE20K configs; SegNeXt paper appendix
Table 1): AdamW with the mmcv custom-key parameter groups
(``msfusion.engine.optim``), linear warm-up then poly decay stepped every
iteration, a total batch of ``data.batch_size`` images per optimiser step
(16 officially) split over processes and gradient-accumulation steps.

What the loop guarantees:

- **Exact resume.** The data order is a function of (seed, epoch) only and
  each optimiser step takes a fixed slice of that epoch's permutation, so a
  resumed run re-creates the same batches without replaying data;
  augmentation is seeded per (seed, epoch, index) by the dataset; the
  checkpoint holds the optimiser, scheduler, grad-scaler and every rank's
  RNG state. A run resumed at step k reaches the same weights as an
  uninterrupted one (tested on CPU).
- **DDP = one process with the same total batch.** Each step's global batch is
  dealt to ranks as ``batch[rank::world_size]``; gradients are averaged by
  DistributedDataParallel, so with a per-image mean loss the update equals
  the single-process one (tested with 2 gloo processes).
- **Nothing is lost.** Checkpoints are atomic (``msfusion.engine.checkpointing``);
  a non-finite loss stops training with the step number and leaves the last
  good checkpoint in place.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from msfusion.checkpoint import CheckpointError, load_checkpoint
from msfusion.engine.checkpointing import (
    capture_rng_state,
    check_same_model,
    latest_checkpoint,
    load_training_state,
    non_finite_tensors,
    prepare_work_dir,
    restore_rng_state,
    save_best,
    save_training_checkpoint,
)
from msfusion.engine.config import dump_config
from msfusion.engine.distributed import DistInfo, all_reduce_sum, barrier, init_distributed
from msfusion.engine.evaluation import autocast_context
from msfusion.engine.optim import build_optimizer, build_scheduler
from msfusion.engine.tasks import Task, build_task

__all__ = [
    "NonFiniteLossError",
    "StepBatches",
    "TrainingForward",
    "Trainer",
    "build_model",
    "set_seed",
    "train",
]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stopped (the message names the step)."""


def set_seed(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; ``deterministic`` also selects deterministic kernels."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        # cuBLAS needs this workspace setting for deterministic matmuls (PyTorch reproducibility notes).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def enable_grad_checkpointing(model: nn.Module) -> nn.Module:
    """Switch on activation recomputation in ``model``'s backbone (``train.grad_checkpointing``).

    Uses the backbone's ``set_grad_checkpointing`` (MSCAN, CEDNet, and timm
    models behind the timm adapter; a torchvision detector's backbone wrapper
    passes it on to the backbone it wraps), or the model's own; ``ValueError``
    names the backbone when it has none.
    """
    backbone = getattr(model, "backbone", model)
    for part in (backbone, getattr(backbone, "model", None), model):
        switch = getattr(part, "set_grad_checkpointing", None)
        if callable(switch):
            switch(True)
            return model
    raise ValueError(
        f"train.grad_checkpointing: the backbone {type(backbone).__name__} has no set_grad_checkpointing(); "
        "MSCAN, CEDNet and timm backbones have one. Set train.grad_checkpointing=false."
    )


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory so far, in MiB: allocated CUDA memory on a GPU, the process's peak resident set on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:  # not on Windows
        return float("nan")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def git_commit(folder: str | Path | None = None) -> dict[str, Any] | None:
    """The git commit of the msfusion source in use and whether it has local changes; None outside git.

    Asks ``git`` about the folder of the package (a source checkout, an
    editable install); an installed wheel, a missing ``git`` or any git error
    gives None, never an exception.
    """
    import subprocess

    folder = Path(folder) if folder is not None else Path(__file__).resolve().parent

    def ask(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=10, check=True)
        return done.stdout.strip()

    try:
        commit = ask("rev-parse", "HEAD")
        dirty = bool(ask("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}


def write_run_record(path: Path, cfg: Mapping[str, Any], device: torch.device, world_size: int) -> None:
    """``run.json``: versions (msfusion and its git commit, torch, torchvision, timm, numpy, Python), the device
    model and threads, seed, command line and the exact recipe of this run."""
    import sys

    import timm

    from msfusion.analysis.benchmark import environment
    from msfusion.version import __version__

    env = environment(device)
    record = {
        "msfusion": __version__,
        "git": git_commit(),
        "torch": env["torch"],
        "torchvision": env["torchvision"],
        "timm": timm.__version__,
        "numpy": env["numpy"],
        "python": env["python"],
        "device": env["device"],
        "cpu": env["cpu"],
        "gpu": env["gpu"],
        "threads": env["threads"],
        "cpu_count": env["cpu_count"],
        "world_size": world_size,
        "seed": cfg["train"]["seed"],
        "command": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": json.loads(json.dumps(cfg, default=str)),
    }
    path.write_text(json.dumps(record, indent=2))


class StepBatches:
    """Indices of this rank's micro-batches for optimiser steps ``start, start+1, ...`` of one epoch.

    Epoch ``e`` shuffles the dataset with ``torch.Generator().manual_seed(seed + e)``
    and drops the incomplete last global batch; step ``s`` of the epoch takes
    ``perm[s*B:(s+1)*B]``, split into ``accum`` chunks, and rank ``r`` takes
    ``chunk[r::world_size]`` of each chunk.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int,
        accum: int,
        rank: int,
        world_size: int,
        seed: int,
        shuffle: bool = True,
    ) -> None:
        if batch_size % (accum * world_size):
            raise ValueError(
                f"data.batch_size {batch_size} must be divisible by train.grad_accum x processes "
                f"({accum} x {world_size})"
            )
        if num_samples < batch_size:
            raise ValueError(f"the training set has {num_samples} images, fewer than one batch of {batch_size}")
        self.num_samples, self.batch_size, self.accum = num_samples, batch_size, accum
        self.rank, self.world_size, self.seed, self.shuffle = rank, world_size, seed, shuffle
        self.steps_per_epoch = num_samples // batch_size
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start_step: int) -> None:
        self.epoch, self.start = epoch, start_step

    def __iter__(self) -> Iterator[list[int]]:
        if self.shuffle:
            perm = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            perm = torch.arange(self.num_samples)
        chunk = self.batch_size // self.accum
        for step in range(self.start, self.steps_per_epoch):
            batch = perm[step * self.batch_size : (step + 1) * self.batch_size]
            for a in range(self.accum):
                yield batch[a * chunk : (a + 1) * chunk][self.rank :: self.world_size].tolist()

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start) * self.accum


class TrainingForward(nn.Module):
    """Calls the model's ``forward_train`` (or ``forward``), so DDP can wrap the training call."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        forward_train = getattr(self.model, "forward_train", None)
        return forward_train(*args, **kwargs) if callable(forward_train) else self.model(*args, **kwargs)


def build_model(cfg: Mapping[str, Any], task: Task, dataset: Any) -> nn.Module:
    """The recipe's model, with what the data decides (class count) filled in.

    ``model.name`` builds a registered model; ``model.compose`` composes a
    segmentor from parts by name (``build_segmentor``), ``model.kwargs`` going
    to the composer.
    """
    from msfusion.models.meta_arch.segmentor import build_segmentor
    from msfusion.registry import create_model

    kwargs = dict(cfg["model"]["kwargs"] or {})
    for key, value in task.model_kwargs(dataset).items():
        if key in kwargs and kwargs[key] != value:
            raise ValueError(f"model.kwargs.{key}={kwargs[key]} but the training data gives {value}")
        kwargs[key] = value
    compose = cfg["model"].get("compose")
    if compose:
        composer = getattr(task, "compose", None) or build_segmentor  # a detection task composes detectors
        model = composer(**dict(compose), **kwargs)
    else:
        model = create_model(cfg["model"]["name"], **kwargs)
    if cfg["model"]["pretrained"]:
        from msfusion.weights import load_pretrained

        # The loader of create_model(pretrained=...): a weights name (``mscan_t.in1k``) resolves through the
        # hub caches, hash-checked, a path stays a path; the report lists every skipped tensor and why.
        report = load_pretrained(
            model, cfg["model"]["pretrained"], cfg["model"]["name"], partial=cfg["model"].get("pretrained_partial")
        )
        if os.environ.get("RANK", "0") == "0":
            print(f"model.pretrained: {report}", flush=True)
    return model


def _set_train_mode(model: nn.Module, norm_eval: bool) -> None:
    model.train()
    if norm_eval:
        # Frozen BatchNorm statistics (mmseg's norm_eval): per-image independent, hence
        # identical in 1 or N processes, and stable with tiny per-GPU batches.
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


class Trainer:
    """Trains ``model`` on ``train_set`` for ``schedule.iters`` optimiser steps.

    Args:
        cfg: a validated recipe (``msfusion.engine.config.load_config``).
        task: what to compute (``msfusion.engine.tasks``).
        model: the unwrapped model (built by :func:`build_model`).
        train_set, val_set: datasets; ``val_set`` may be None (no evaluation).
        dist_info: from :func:`~msfusion.engine.distributed.init_distributed`.
    """

    def __init__(
        self,
        cfg: Mapping[str, Any],
        task: Task,
        model: nn.Module,
        train_set: Any,
        val_set: Any | None = None,
        dist_info: DistInfo | None = None,
    ) -> None:
        self.cfg = cfg
        self.task = task
        self.dist = dist_info or DistInfo()
        self.device = self.dist.device
        self.work_dir = Path(cfg["train"]["work_dir"])
        self.train_set, self.val_set = train_set, val_set
        tcfg = cfg["train"]
        self.amp = tcfg["amp"]
        if self.amp == "fp16" and self.device.type != "cuda":
            raise ValueError("train.amp=fp16 needs CUDA; use train.amp=bf16 on CPU")
        if cfg["model"]["sync_bn"] and self.dist.distributed:
            if self.device.type != "cuda":
                raise ValueError(
                    "model.sync_bn needs CUDA (SyncBatchNorm has no CPU kernel); use model.norm_eval on CPU"
                )
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(self.device)
        if tcfg["channels_last"]:
            # In place: the optimiser and checkpoints see the same (NHWC-strided) parameters.
            self.model.to(memory_format=torch.channels_last)
        task.setup(self.model)
        if tcfg.get("grad_checkpointing"):
            enable_grad_checkpointing(self.model)
        self.forward: nn.Module = TrainingForward(self.model)
        if self.dist.distributed:
            self.forward = nn.parallel.DistributedDataParallel(
                self.forward, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if tcfg["compile"]:
            self.forward = torch.compile(self.forward)
        if tcfg["keep_freed_memory"] and self.device.type == "cpu":
            from msfusion.engine.fast_inference import keep_freed_memory

            keep_freed_memory()
        self.optimizer = build_optimizer(self.model, cfg["optim"])
        self.scheduler = build_scheduler(self.optimizer, cfg["schedule"])
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == "fp16")
        self.accum = tcfg["grad_accum"]
        self.batches = StepBatches(
            len(train_set),
            cfg["data"]["batch_size"],
            self.accum,
            self.dist.rank,
            self.dist.world_size,
            tcfg["seed"],
        )
        self.step = 0
        # Seconds spent in train_step, and the part of it blocked waiting for the next batch.
        self.step_time_s = 0.0
        self.data_wait_s = 0.0
        self.history: list[dict[str, float]] = []
        self.evals: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {}
        self.last_checkpoint: Path | None = None
        self._writer = None

    # ---- checkpoints -------------------------------------------------------------------------

    def _metadata(self) -> dict[str, Any]:
        return {
            "task": self.task.name,
            "classes": list(getattr(self.train_set, "classes", []) or []),
            # COCO-style data: the category id of each label, compared by ``msfusion eval`` with its data's.
            "category_ids": [int(c) for c in getattr(self.train_set, "label_to_category", None) or []],
            "palette": [list(c) for c in getattr(self.train_set, "palette", []) or []],
            "config": json.loads(json.dumps(self.cfg, default=str)),
        }

    def _check_finite_weights(self, action: str) -> None:
        """Stop before ``action`` when a weight is NaN or infinite: such weights are never kept as good."""
        bad_names = non_finite_tensors(self.model)
        bad = torch.tensor([float(len(bad_names))], device=self.device)
        if self.dist.distributed:
            all_reduce_sum(bad)
        if bad.item() > 0:
            kept = (
                f"the last good checkpoint is kept: {self.last_checkpoint}"
                if self.last_checkpoint
                else "no checkpoint was written yet"
            )
            shown = ", ".join(bad_names[:3]) + (", ..." if len(bad_names) > 3 else "")
            raise NonFiniteLossError(
                f"weights became NaN or infinite by step {self.step} ({shown or 'on another process'}); "
                f"training stopped before {action} ({kept}). Lower optim.lr, set train.clip_grad, or check the data."
            )

    def save(self) -> Path | None:
        """Write a resumable checkpoint of the current step (rank 0 writes; every rank waits)."""
        self._check_finite_weights("writing a checkpoint")
        rng = capture_rng_state()
        if self.dist.distributed:
            gathered: list[Any] = [None] * self.dist.world_size
            dist.all_gather_object(gathered, rng)
            rng_states = gathered
        else:
            rng_states = [rng]
        path = None
        if self.dist.is_main:
            state = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "rng": rng_states,
                "history": self.history,
                "evals": json.loads(json.dumps(self.evals)),
                "best": dict(self.best),
                "world_size": self.dist.world_size,
            }
            path = save_training_checkpoint(
                self.work_dir,
                self.step,
                self.model,
                state,
                self._metadata(),
                self.cfg["train"]["keep_checkpoints"],
            )
            self.last_checkpoint = path
        barrier()
        return path

    def resume(self) -> bool:
        """Continue from ``<work_dir>/checkpoints/latest.json``; False when there is nothing to resume."""
        found = latest_checkpoint(self.work_dir)
        if found is None:
            return False
        weights, state_path = found
        check_same_model(weights, self.model)
        load_checkpoint(self.model, weights, strict=True)
        state = load_training_state(state_path)
        # The recipe's optimiser settings (--set optim.lr=... on resume) win over the saved ones, as the
        # schedule does below: config.yaml records them, so they must be what trains.
        recipe_groups = [
            {k: v for k, v in group.items() if k not in ("params", "lr")} for group in self.optimizer.param_groups
        ]
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as err:
            raise CheckpointError(f"{state_path}: optimiser state does not fit this model ({err})") from err
        changed = sorted(
            key.removeprefix("initial_")
            for group, recipe in zip(self.optimizer.param_groups, recipe_groups, strict=True)
            for key, value in recipe.items()
            if group.get(key) != value
        )
        for group, recipe in zip(self.optimizer.param_groups, recipe_groups, strict=True):
            group.update(recipe)
        configured = [dict(vars(f)) for f in self.scheduler.lr_lambdas]
        configured_base = list(self.scheduler.base_lrs)
        self.scheduler.load_state_dict(state["scheduler"])
        if list(self.scheduler.base_lrs) != configured_base:
            changed = sorted({*changed, "lr"})
        self.scheduler.base_lrs = configured_base
        # The schedule is a function of the recipe: a resumed run with more iterations
        # (--set schedule.iters=...) follows the new recipe rather than the saved one.
        for factor, values in zip(self.scheduler.lr_lambdas, configured, strict=True):
            vars(factor).update(values)
        step = self.scheduler.last_epoch
        for group, base, factor in zip(
            self.optimizer.param_groups, self.scheduler.base_lrs, self.scheduler.lr_lambdas, strict=True
        ):
            group["lr"] = base * factor(step)
        self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        self.scaler.load_state_dict(state["scaler"])
        rng_states = state["rng"]
        if state.get("world_size", 1) == self.dist.world_size:
            restore_rng_state(rng_states[self.dist.rank])
        else:
            # Another process count: data order and weights carry on exactly; per-rank random draws are re-seeded.
            torch.manual_seed(self.cfg["train"]["seed"] + 1000 * state["step"] + self.dist.rank)
        self.step = int(state["step"])
        self.history = list(state.get("history", []))
        self.evals = list(state.get("evals", []))
        self.best = dict(state.get("best", {}))
        self.last_checkpoint = weights
        if self.dist.is_main:
            news = f", with the recipe's new optimiser settings: {', '.join(changed)}" if changed else ""
            print(f"resumed from step {self.step} ({weights}){news}", flush=True)
        return True

    # ---- the loop ------------------------------------------------------------------------------

    def _loader(self, epoch: int, start: int) -> DataLoader:
        if hasattr(self.train_set, "set_epoch"):
            self.train_set.set_epoch(epoch)
        self.batches.set_position(epoch, start)
        workers = self.cfg["data"]["num_workers"]
        return DataLoader(
            self.train_set,
            batch_sampler=self.batches,
            num_workers=workers,
            collate_fn=self.task.collate,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            # Own generator: creating a loader mid-epoch on resume must not consume the global RNG.
            generator=torch.Generator().manual_seed(self.cfg["train"]["seed"] + epoch),
        )

    def _micro_batches(self) -> Iterator[dict[str, Any]]:
        per_epoch = self.batches.steps_per_epoch
        epoch, start = divmod(self.step, per_epoch)
        while True:
            yield from self._loader(epoch, start)
            epoch, start = epoch + 1, 0

    def _check_finite(self, loss: torch.Tensor) -> None:
        bad = torch.tensor([0.0 if torch.isfinite(loss).item() else 1.0], device=self.device)
        if self.dist.distributed:
            all_reduce_sum(bad)  # every rank stops together instead of hanging in the next all-reduce
        if bad.item() > 0:
            kept = (
                f"the last good checkpoint is kept: {self.last_checkpoint}"
                if self.last_checkpoint
                else "no checkpoint was written yet"
            )
            raise NonFiniteLossError(
                f"loss is {loss.item()} at step {self.step + 1}; training stopped ({kept}). "
                "Lower optim.lr, set train.clip_grad, or check the data."
            )

    def train_step(self, batches: Iterator[dict[str, Any]]) -> dict[str, float]:
        """One optimiser step over ``grad_accum`` micro-batches; returns the logged values."""
        step_start = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        for a in range(self.accum):
            wait_start = time.perf_counter()
            batch = next(batches)
            self.data_wait_s += time.perf_counter() - wait_start
            batch = self.task.to_device(batch, self.device)
            sync = a == self.accum - 1 or not self.dist.distributed
            ctx = contextlib.nullcontext() if sync else self.forward.no_sync()
            with ctx:
                with autocast_context(self.device, self.amp):
                    loss, logs = self.task.loss(self.forward, batch)
                self._check_finite(loss)
                self.scaler.scale(loss / self.accum).backward()
            for key, value in logs.items():
                totals[key] = totals.get(key, 0.0) + value / self.accum
        clip = self.cfg["train"]["clip_grad"]
        if clip:
            self.scaler.unscale_(self.optimizer)
            totals["grad_norm"] = float(nn.utils.clip_grad_norm_(self.model.parameters(), clip))
        totals["lr"] = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        self.step_time_s += time.perf_counter() - step_start
        return totals

    def evaluate(self) -> dict[str, Any] | None:
        """Score the validation set (same metrics on every rank); keeps the best checkpoint."""
        if self.val_set is None:
            return None
        self._check_finite_weights("evaluating (and keeping the best checkpoint)")
        # Evaluation must not change the training random stream (exact resume).
        with torch.random.fork_rng(devices=[]):
            metrics = self.task.evaluate(self.model, self.val_set, self.cfg, self.device, self.dist)
        _set_train_mode(self.model, self.cfg["model"]["norm_eval"])
        key = self.task.primary_metric
        value = metrics[key]
        self.evals.append({"step": self.step, **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}})
        if self._writer is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
                    self._writer.add_scalar(f"val/{k}", v, self.step)
        if not self.best or value > self.best["value"]:
            self.best = {"metric": key, "value": value, "step": self.step}
            if self.dist.is_main:
                save_best(self.work_dir, self.model, {**self._metadata(), "step": self.step, key: value})
        if self.dist.is_main:
            # The pictures of the run so far, rewritten at every evaluation.
            from msfusion.engine.visualize import plot_training_curve, write_metrics_csv

            plot_training_curve(self.history, self.evals, self.work_dir / "training_curve.png", self.task.name)
            write_metrics_csv(self.evals, self.work_dir / "metrics.csv")
        barrier()
        return metrics

    def fit(self) -> dict[str, Any]:
        """Train to ``schedule.iters`` (from the current step); returns a summary."""
        cfg, tcfg = self.cfg, self.cfg["train"]
        iters = cfg["schedule"]["iters"]
        main = self.dist.is_main
        if main:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            dump_config(cfg, self.work_dir / "config.yaml")
            write_run_record(self.work_dir / "run.json", cfg, self.device, self.dist.world_size)
            if tcfg["tensorboard"]:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(self.work_dir / "tensorboard"))
        bar = None
        if main and tcfg["progress"]:
            from tqdm import tqdm

            bar = tqdm(total=iters, initial=self.step, desc="train", unit="it", dynamic_ncols=True)
        _set_train_mode(self.model, cfg["model"]["norm_eval"])
        batches = self._micro_batches()
        start_time = time.perf_counter()
        last_metrics: dict[str, Any] | None = None
        try:
            window: dict[str, list[float]] = {}
            window_start = (self.step_time_s, self.data_wait_s)
            while self.step < iters:
                logs = self.train_step(batches)
                for key, value in logs.items():
                    window.setdefault(key, []).append(value)
                if self.step % tcfg["log_interval"] == 0 or self.step == iters or self.step == 1:
                    # Losses are averaged over the steps since the last record (a readable curve);
                    # lr and grad norm are the current values.
                    averaged = {k: sum(v) / len(v) for k, v in window.items() if k.startswith("loss")}
                    # Seconds per step over the window: the whole step and its wait for data.
                    steps = len(window["lr"])
                    averaged["step_time"] = (self.step_time_s - window_start[0]) / steps
                    averaged["data_time"] = (self.data_wait_s - window_start[1]) / steps
                    window, window_start = {}, (self.step_time_s, self.data_wait_s)
                    record = {"step": self.step, "time": time.perf_counter() - start_time, **logs, **averaged}
                    record["peak_mem_mb"] = peak_memory_mb(self.device)
                    self.history.append(record)
                    if self._writer is not None:
                        for k, v in record.items():
                            if k not in ("step", "time"):
                                self._writer.add_scalar(f"train/{k}", v, self.step)
                if main and bar is None and self.history and self.history[-1]["step"] == self.step:
                    print(
                        f"step {self.step}/{iters} loss {self.history[-1]['loss']:.4f} lr {logs['lr']:.2e} "
                        f"time {self.history[-1]['step_time']:.3f}s data {self.history[-1]['data_time']:.3f}s",
                        flush=True,
                    )
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}", refresh=False)
                eval_now = tcfg["eval_interval"] and (self.step % tcfg["eval_interval"] == 0 or self.step == iters)
                if eval_now:
                    last_metrics = self.evaluate()
                    if main and last_metrics is not None:
                        key = self.task.primary_metric
                        message = f"step {self.step}: {key} {100 * last_metrics[key]:.2f}"
                        bar.write(message) if bar is not None else print(message, flush=True)
                if tcfg["ckpt_interval"] and (self.step % tcfg["ckpt_interval"] == 0 or self.step == iters):
                    self.save()
        finally:
            if bar is not None:
                bar.close()
            if self._writer is not None:
                self._writer.close()
        data_wait_share = self.data_wait_s / self.step_time_s if self.step_time_s > 0 else 0.0
        if main and self.step_time_s > 0:
            print(
                f"waited for data {self.data_wait_s:.1f} s of {self.step_time_s:.1f} s in training steps "
                f"({100 * data_wait_share:.1f} %; data.num_workers={cfg['data']['num_workers']})",
                flush=True,
            )
        return {
            "step": self.step,
            "best": dict(self.best),
            "metrics": last_metrics,
            "history": self.history,
            "evals": self.evals,
            "train_time_s": time.perf_counter() - start_time,
            "step_time_s": self.step_time_s,
            "data_wait_s": self.data_wait_s,
            "data_wait_share": data_wait_share,
            "last_checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
            "work_dir": str(self.work_dir),
        }


def train(cfg: Mapping[str, Any], resume: bool = False, overwrite: bool = False) -> dict[str, Any]:
    """Build everything from a validated recipe and train (the ``msfusion train`` entry point).

    Under ``torchrun`` this joins the process group first (gloo on CPU, NCCL on
    CUDA). Returns :meth:`Trainer.fit`'s summary on every rank.

    Args:
        cfg: a validated recipe.
        resume: continue from the checkpoints in ``train.work_dir``.
        overwrite: delete the checkpoints of an earlier run in ``train.work_dir`` and start over;
            without it (or ``resume``) a work_dir holding checkpoints is refused.
    """
    from msfusion.engine.distributed import cleanup_distributed

    tcfg = cfg["train"]
    prepare_work_dir(tcfg["work_dir"], resume=resume, overwrite=overwrite)
    dist_info = init_distributed(tcfg["device"])
    try:
        # Same seed on every rank for the model's initial weights; DDP also broadcasts rank 0's.
        set_seed(tcfg["seed"], tcfg["deterministic"])
        task = build_task(cfg["task"])
        train_set, val_set = task.build_datasets(cfg)
        if cfg["data"].get("check_labels", True) and dist_info.is_main:
            # One pass over the label files: a split whose labels are all ignored, or a class that never
            # occurs, would otherwise train (or score) without a word.
            for split, dataset in (("data.train", train_set), ("data.val", val_set)):
                if callable(getattr(dataset, "check_labels", None)):
                    dataset.check_labels(split)
        model = build_model(cfg, task, train_set)
        set_seed(tcfg["seed"] + dist_info.rank, tcfg["deterministic"])
        trainer = Trainer(cfg, task, model, train_set, val_set, dist_info)
        if resume:
            if not trainer.resume() and dist_info.is_main:
                print(f"--resume: no checkpoint in {trainer.work_dir / 'checkpoints'}; starting from step 0")
        return trainer.fit()
    finally:
        cleanup_distributed()
