"""Do the papers' effects show? Matched, trained ablation pairs on the hard shapes data.

Each of the four papers claims an effect of its fusion module. This module
trains, through the library's own engine (``msfusion.engine.trainer``, the
loop of ``msfusion train``), a *pair* of models per claim that differ only in
that module, with the same recipe, data, steps and seeds, and reports the
paired difference of their held-out scores:

- **FINE** ("Context-Guided Semantic Alignment for Feature Fusion Networks",
  arXiv 2606.14005; Sec. 5.3 and Tables 1 and 7): FINE at the FPN fusion steps
  whose finer map has stride 8 and 16 (r = 2) improves detection, most of all
  on small objects (AP_S), and Semantic FPN segmentation. Pairs: FCOS on a
  ResNet-18 FPN with and without FINE (box AP, AP50, AP_S; the verdict is on
  AP_S), and Semantic FPN on ResNet-18 with and without FINE (mIoU).
- **MSCSA** ("Vision Backbone Enhancement via Multi-Stage Cross-Scale
  Attention", arXiv 2308.05872; Fig. 5 and Table 3): the MSCSA add-on (Table 7's
  ResNet-18 configuration) on the same backbone improves dense prediction.
  Pair: Semantic FPN on ResNet-18 with and without MSCSA (mIoU).
- **CEDNet** ("CEDNet: A Cascade Encoder-Decoder Network for Dense
  Prediction", arXiv 2302.06052; Sec. 1 and 3.1): fusing scales early and
  repeatedly (cascade stages) beats one late FPN at about the same cost.
  Pairs: a 2-stage CEDNet (the same CED blocks split over two cascade stages,
  its own decoders as the only fusion) against a 1-stage CEDNet (a plain
  hierarchical encoder of the same blocks) followed by an FPN, both under a
  Semantic FPN head (mIoU) and under FCOS (box AP; the cascade arm uses CEDNet's
  P3-P7 pyramid, as the official detection wrappers do).
- **SegNeXt** ("SegNeXt: Rethinking Convolutional Attention Design for
  Semantic Segmentation", arXiv 2209.08575; Table 6): MSCA's three strip
  branches (7, 11, 21) beat one branch; the single-branch arm keeps the 21x21
  branch (the same receptive field, one scale), with the same Ham decoder.

Every model trains from scratch (no pretrained weights exist offline) on the
``"hard"`` shapes variant (``msfusion.data.shapes``): colours say nothing
about the class and tiny objects can be labelled only from the context of a
larger same-class neighbour, so fusion has something to do.

Statistics (per pair and metric): each seed trains both arms, so the seeds
pair the runs; the difference is ``treatment - baseline`` per seed, its mean,
sample standard deviation and 95 % t-interval ``mean +- t(0.975, n-1) * sd /
sqrt(n)``. The verdict reads the interval of the pair's main metric: above
zero, the effect *shows*; below zero, it *goes the other way*; containing
zero, it is *within noise*; with one seed there is no interval.

Outputs in the report folder: ``runs/<pair>.<arm>.s<seed>.json`` (one per
trained model, written atomically, never recomputed: an interrupted benchmark
resumes from them), ``effects.json`` (the report) and ``effects.png``.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import io
import json
import math
import shutil
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "EFFECTS",
    "PAIRS",
    "Arm",
    "Pair",
    "Budget",
    "budget_for",
    "parse_effects",
    "t_quantile_975",
    "paired_difference",
    "mean_interval",
    "verdict",
    "arm_recipe",
    "train_arm",
    "prepare_out_dir",
    "summarise_pair",
    "run_effects",
    "format_report",
    "plot_effects",
]

BENCHMARK = "msfusion effects"
FORMAT_VERSION = 2  # 2: runs keyed by task and arm (a shared arm trains once)
CONFIG_FILE = "effects_config.json"


# ---- statistics --------------------------------------------------------------------------------

# The 0.975 quantile of Student's t distribution for 1..30 degrees of freedom (two-sided 95 %),
# to three decimals as printed in standard statistical tables (e.g. NIST/SEMATECH e-Handbook of
# Statistical Methods, Sec. 1.3.6.7.2). scipy is not a core dependency, so the values are tabled.
_T_975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip
_Z_975 = 1.959964


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (for a 95 % two-sided interval).

    df 1..30 come from the table above; beyond, the Cornish-Fisher expansion
    (Abramowitz and Stegun 26.7.5) around the normal quantile, within 1e-4 there.
    """
    if df < 1:
        raise ValueError(f"a t interval needs at least 1 degree of freedom (2 paired seeds), got {df}")
    if df <= len(_T_975):
        return _T_975[df - 1]
    z = _Z_975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_interval(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample std and 95 % t-interval of ``values`` (std and interval None for one value)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("no values to summarise")
    mean = statistics.fmean(values)
    if len(values) < 2:
        return {"n": 1, "mean": mean, "std": None, "ci95": None}
    std = statistics.stdev(values)
    half = t_quantile_975(len(values) - 1) * std / math.sqrt(len(values))
    return {"n": len(values), "mean": mean, "std": std, "ci95": [mean - half, mean + half]}


def paired_difference(baseline: Sequence[float], treatment: Sequence[float]) -> dict[str, Any]:
    """``treatment - baseline`` per seed: mean, sample std and the 95 % t-interval of the mean.

    Args:
        baseline, treatment: scores of the same seeds, in the same order.

    Returns:
        ``{"n", "differences", "mean", "std", "ci95": [low, high] | None}``.
    """
    if len(baseline) != len(treatment):
        raise ValueError(f"paired scores need the same seeds: {len(baseline)} baseline vs {len(treatment)} treatment")
    differences = [float(t) - float(b) for b, t in zip(baseline, treatment, strict=True)]
    return {"differences": differences, **mean_interval(differences)}


def verdict(difference: Mapping[str, Any], metric: str, baseline: str, treatment: str) -> dict[str, str]:
    """The verdict in words on a paired difference (in points) of ``metric``.

    Returns:
        ``{"verdict": "shows" | "within noise" | "goes the other way" | "undecided", "text": ...}``.
    """
    mean = difference["mean"]
    if difference["ci95"] is None:
        return {
            "verdict": "undecided",
            "text": f"undecided: one seed gives no interval ({treatment} - {baseline} = {mean:+.2f} {metric} "
            "points); run 3 or more seeds",
        }
    low, high = difference["ci95"]
    span = f"{mean:+.2f} {metric} points, 95 % CI [{low:+.2f}, {high:+.2f}] over {difference['n']} seeds"
    if low > 0:
        return {"verdict": "shows", "text": f"shows: {treatment} beats {baseline} by {span}"}
    if high < 0:
        return {"verdict": "goes the other way", "text": f"goes the other way: {treatment} trails {baseline} by {span}"}
    return {"verdict": "within noise", "text": f"within noise: {treatment} - {baseline} = {span}; the CI holds 0"}


# ---- the pairs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arm:
    """One model of a pair: a label and the recipe's ``model`` section (``name`` and ``compose``/``kwargs``)."""

    name: str
    label: str
    model: dict[str, Any]


@dataclass(frozen=True)
class Pair:
    """A matched pair: the baseline and the treatment differ only in the paper's module.

    Attributes:
        key: file-name key (``fine_det``).
        effect: the paper (``fine``, ``mscsa``, ``cednet``, ``segnext``).
        title: one line for the report.
        claim: the paper's claim, with its section / table.
        task: ``segmentation`` or ``detection``.
        metrics: the task's metrics reported (engine names).
        primary: the metric the verdict reads.
    """

    key: str
    effect: str
    title: str
    claim: str
    task: str
    metrics: tuple[str, ...]
    primary: str
    baseline: Arm
    treatment: Arm


SEG_METRICS = ("mIoU",)
DET_METRICS = ("bbox_AP", "bbox_AP50", "bbox_APs")
METRIC_LABELS = {"mIoU": "mIoU", "bbox_AP": "box AP", "bbox_AP50": "AP50", "bbox_APs": "AP_S"}

# Widths for a CPU budget: 64-channel FPNs and heads over ResNet-18 (as the detection demo).
_FPN_CHS = 64
_SEG_HEAD = {"head": "semantic_fpn", "head_kwargs": {"channels": _FPN_CHS, "dropout": 0.1, "norm": "bn"}}
_FCOS_KWARGS = {"head_convs": 2, "score_thresh": 0.05, "detections_per_img": 100}
# The CEDNet pair: the same CED blocks (n1, n2, n3) = (2, 2, 2) per level, either as one plain encoder stage
# (followed by an FPN) or split over two cascade stages of (1, 1, 1), whose decoders are the only fusion.
_CED_COMMON = {"p2_dim": 32, "p2_blocks": 1, "dims": (64, 128, 192), "drop_path_rate": 0.0}
_CED_CASCADE = {**_CED_COMMON, "num_stages": 2, "blocks": (1, 1, 1)}
_CED_PLAIN = {**_CED_COMMON, "num_stages": 1, "blocks": (2, 2, 2)}
_CED_FPN_CHS = 64  # the baseline: 5 % fewer parameters, more MACs (its 3x3 convs run at stride 4)


def _seg(backbone: str, backbone_kwargs: dict[str, Any] | None = None, neck: dict[str, Any] | None = None) -> dict:
    compose: dict[str, Any] = {"backbone": backbone, **copy.deepcopy(_SEG_HEAD)}
    if backbone_kwargs:
        compose["backbone_kwargs"] = backbone_kwargs
    if neck is not None:
        compose["neck"] = "fpn"
        compose["neck_kwargs"] = neck
    return compose


def _fcos(backbone: str, backbone_kwargs: dict[str, Any], neck: str | None, neck_kwargs: dict | None, **extra) -> dict:
    compose: dict[str, Any] = {"arch": "fcos", "backbone": backbone, "backbone_kwargs": backbone_kwargs, "neck": neck}
    if neck_kwargs is not None:
        compose["neck_kwargs"] = neck_kwargs
    return {**compose, **extra}


def _named(name: str) -> dict:
    return {"name": name, "kwargs": {"drop_path_rate": 0.0}}  # no stochastic depth in a short from-scratch run


_R18 = {"out_indices": [1, 2, 3, 4]}  # strides 4-32 (timm's stride-2 stem output left out)
_DEMO_FPN = {"out_chs": _FPN_CHS, "in_strides": [4, 8, 16, 32], "extra_levels": 1}  # the detection demo's FPN
# FINE's and MSCSA's segmentation pairs share this baseline: it trains once per seed (runs are keyed by its key).
_SEMFPN_R18 = Arm("semfpn_r18", "Semantic FPN R18", {"compose": _seg("resnet18", neck={"out_chs": _FPN_CHS})})

PAIRS: tuple[Pair, ...] = (
    Pair(
        key="fine_det",
        effect="fine",
        title="FINE in a detector's FPN (FCOS, ResNet-18)",
        claim="FINE Sec. 5.3 / Table 1: aligning levels before fusion raises box AP, most of all AP_S",
        task="detection",
        metrics=DET_METRICS,
        primary="bbox_APs",
        baseline=Arm("fcos_r18_fpn", "FCOS R18-FPN", {"compose": _fcos("resnet18", _R18, "fpn", _DEMO_FPN)}),
        treatment=Arm(
            "fcos_r18_fpn_fine",
            "FCOS R18-FPN + FINE",
            {"compose": _fcos("resnet18", _R18, "fpn", _DEMO_FPN, fine=True)},
        ),
    ),
    Pair(
        key="fine_seg",
        effect="fine",
        title="FINE in Semantic FPN (ResNet-18)",
        claim="FINE App. D / Table 7: FINE in Semantic FPN raises mIoU (74.5 -> 76.4 on Cityscapes)",
        task="segmentation",
        metrics=SEG_METRICS,
        primary="mIoU",
        baseline=_SEMFPN_R18,
        treatment=Arm(
            "semfpn_r18_fine",
            "Semantic FPN R18 + FINE",
            {"compose": _seg("resnet18", neck={"out_chs": _FPN_CHS, "fine": True})},
        ),
    ),
    Pair(
        key="mscsa_seg",
        effect="mscsa",
        title="MSCSA add-on in Semantic FPN (ResNet-18)",
        claim="MSCSA Fig. 5 / Table 3: cross-scale attention over all stages raises Semantic FPN mIoU",
        task="segmentation",
        metrics=SEG_METRICS,
        primary="mIoU",
        baseline=_SEMFPN_R18,
        treatment=Arm(
            "semfpn_r18_mscsa",
            "Semantic FPN R18 + MSCSA",
            {"compose": _seg("resnet18_mscsa", neck={"out_chs": _FPN_CHS})},
        ),
    ),
    Pair(
        key="cednet_seg",
        effect="cednet",
        title="CEDNet cascade vs encoder + FPN (Semantic FPN head)",
        claim="CEDNet Sec. 1 / 3.1: early, repeated multi-scale fusion beats a late FPN at about equal cost",
        task="segmentation",
        metrics=SEG_METRICS,
        primary="mIoU",
        baseline=Arm(
            "ced1_fpn",
            "1-stage CED encoder + FPN",
            {"compose": _seg("cednet_next_t", {**_CED_PLAIN, "out_indices": [0, 1, 2, 3]}, {"out_chs": _CED_FPN_CHS})},
        ),
        treatment=Arm(
            "ced2_cascade",
            "2-stage CEDNet cascade",
            {"compose": _seg("cednet_next_t", {**_CED_CASCADE, "out_indices": [0, 1, 2, 3]})},
        ),
    ),
    Pair(
        key="cednet_det",
        effect="cednet",
        title="CEDNet cascade vs encoder + FPN (FCOS)",
        claim="CEDNet Sec. 1 / Table 2: the cascade's own pyramid beats backbone + FPN at about equal cost",
        task="detection",
        metrics=DET_METRICS,
        primary="bbox_AP",
        baseline=Arm(
            "fcos_ced1_fpn",
            "FCOS 1-stage CED + FPN",
            {"compose": _fcos("cednet_next_t", {**_CED_PLAIN, "out_indices": [1, 2, 3]}, "fpn", {"out_chs": 64})},
        ),
        treatment=Arm(
            "fcos_ced2_cascade",
            "FCOS 2-stage CEDNet (P3-P7)",
            {"compose": _fcos("cednet_next_t", _CED_CASCADE, "cednet_pyramid", {"out_chs": 64})},
        ),
    ),
    Pair(
        key="segnext_seg",
        effect="segnext",
        title="SegNeXt-T: MSCA vs one 21x21 strip branch",
        claim="SegNeXt Table 6: MSCA's multi-scale branches (7, 11, 21) beat any single branch",
        task="segmentation",
        metrics=SEG_METRICS,
        primary="mIoU",
        baseline=Arm("segnext_t_branch21", "SegNeXt-T, 21x21 branch only", _named("segnext_t_branch21")),
        treatment=Arm("segnext_t", "SegNeXt-T (MSCA)", _named("segnext_t")),
    ),
)
EFFECTS: dict[str, tuple[Pair, ...]] = {
    name: tuple(p for p in PAIRS if p.effect == name) for name in ("fine", "mscsa", "cednet", "segnext")
}


def parse_effects(text: str | Sequence[str] | None) -> list[str]:
    """``--only fine,mscsa`` -> ``["fine", "mscsa"]`` (all four for None); unknown names are a ``ValueError``."""
    if text is None:
        return list(EFFECTS)
    names = [n.strip().lower() for n in (text.split(",") if isinstance(text, str) else text)]
    names = [n for n in names if n]
    if not names:
        raise ValueError(f"--only needs at least one effect name of {', '.join(EFFECTS)}")
    for name in names:
        if name not in EFFECTS:
            close = difflib.get_close_matches(name, list(EFFECTS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown effect {name!r} in --only; choose from {', '.join(EFFECTS)}{hint}")
    return list(dict.fromkeys(names))


# ---- budget and recipes ------------------------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """What every arm of every pair trains with (same recipe, data, steps and seeds).

    Attributes:
        steps: optimiser steps per model.
        seeds: seeds 0..seeds-1 per arm (a seed pairs the two arms' runs).
        seg_size, det_size: square image side of the segmentation / detection pairs.
        batch_size: images per step.
        num_train, num_val: hard shapes images (generated from ``data_seed``).
        lr: AdamW learning rate (warm-up then poly decay, weight decay 0.05, grad-norm clip 10).
        device: ``"cpu"`` or ``"cuda"``.
        num_workers: data-loading processes (on a GPU the images are generated beside it).
    """

    steps: int
    seeds: int
    seg_size: int = 64
    det_size: int = 96
    batch_size: int = 8
    num_train: int = 4000
    num_val: int = 100
    max_objects: int = 6
    # 4e-3: at 240 steps on the hard shapes, 1e-3 left every probed arm near predicting background (Semantic FPN
    # R18 19 % mIoU; SegNeXt-T 17.5 %); 4e-3 reached 20 % / 20.6 % and trained FCOS without divergence.
    lr: float = 4.0e-3
    device: str = "cpu"
    num_workers: int = 0
    data_seed: int = 0

    def configuration(self) -> dict[str, Any]:
        """What a report folder's results depend on (seeds excluded: more seeds extend the same runs)."""
        return {k: v for k, v in asdict(self).items() if k != "seeds"}


# (steps, seeds) per mode: CPU full / quick, CUDA full / quick.
# CPU full: 33 models, 45 min on 2 cores (measured: docs/effects.md); CPU quick: 11 models, under 5 min.
_MODES = {("cpu", False): (240, 3), ("cpu", True): (60, 1), ("cuda", False): (1000, 5), ("cuda", True): (200, 1)}


def budget_for(device: str = "cpu", quick: bool = False, steps: int | None = None, seeds: int | None = None) -> Budget:
    """The budget of a mode; ``steps`` / ``seeds`` override its defaults (each must be >= 1)."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"--device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here; run with --device cpu")
    default_steps, default_seeds = _MODES[(device, quick)]
    if steps is not None and steps < 1:
        raise ValueError(f"--steps must be >= 1 (a budget of {steps} steps cannot train), got {steps}")
    if seeds is not None and seeds < 1:
        raise ValueError(f"--seeds must be >= 1 (each arm trains once per seed), got {seeds}")
    workers = 4 if device == "cuda" else 0
    return Budget(steps=steps or default_steps, seeds=seeds or default_seeds, device=device, num_workers=workers)


@dataclass(frozen=True)
class TaskSetup:
    """How the arms of one task's pairs train and are counted (the study's choices, the same for both arms).

    Attributes:
        size: the square image side, from the budget.
        model_kwargs: what every arm's model is given, from the image side.
        train_split: keys of the training split beyond the shapes'.
        data: keys of the recipe's ``data`` beyond the splits, from the image side.
        eval: the recipe's ``eval`` section (None: the task's defaults).
        counted: the module whose forward the MACs count (mmdetection's convention for detectors).
    """

    size: Callable[[Budget], int]
    model_kwargs: Callable[[int], dict[str, Any]]
    train_split: dict[str, Any]
    data: Callable[[int], dict[str, Any]]
    eval: dict[str, Any] | None
    counted: Callable[[torch.nn.Module], torch.nn.Module]


def _detector_view(model: torch.nn.Module) -> torch.nn.Module:
    from msfusion.models.meta_arch.detector import complexity_view

    return complexity_view(model)


TASK_SETUPS: dict[str, TaskSetup] = {
    "segmentation": TaskSetup(
        size=lambda budget: budget.seg_size,
        model_kwargs=lambda size: {},
        train_split={},
        data=lambda size: {
            "crop_size": [size, size],
            "scale": [size, size],
            "ratio_range": [0.75, 1.5],
            "photometric": False,
            "eval_scale": None,
        },
        eval={"mode": "whole"},
        counted=lambda model: model,
    ),
    "detection": TaskSetup(
        size=lambda budget: budget.det_size,
        model_kwargs=lambda size: {"min_size": size, "max_size": size, **_FCOS_KWARGS},
        train_split={"transforms": {"kind": "train"}},
        data=lambda size: {},
        eval=None,
        counted=_detector_view,
    ),
}


def arm_recipe(pair: Pair, arm: Arm, budget: Budget, seed: int, work_dir: str | Path) -> dict[str, Any]:
    """The training recipe (``msfusion train`` format) of one arm and seed; the pair's arms differ only in ``model``."""
    setup = TASK_SETUPS[pair.task]
    size = setup.size(budget)
    shapes = {
        "type": "shapes",
        "image_size": size,
        "seed": budget.data_seed,
        "variant": "hard",
        "max_objects": budget.max_objects,
    }
    model: dict[str, Any] = {
        "name": arm.model.get("name", arm.name),
        "kwargs": copy.deepcopy(arm.model.get("kwargs", {})),
    }
    if "compose" in arm.model:
        model["compose"] = copy.deepcopy(arm.model["compose"])
    model["kwargs"].update(setup.model_kwargs(size))
    data = {
        "train": {**shapes, "split": "train", "num_images": budget.num_train, **copy.deepcopy(setup.train_split)},
        "val": {**shapes, "split": "val", "num_images": budget.num_val},
        **setup.data(size),
    }
    data.update({"batch_size": budget.batch_size, "num_workers": budget.num_workers, "check_labels": False})
    recipe: dict[str, Any] = {
        "task": pair.task,
        "model": model,
        "data": data,
        # No per-name lr multipliers: a "head" key would match different modules in the two arms.
        "optim": {"lr": budget.lr, "weight_decay": 0.05, "custom_keys": {}},
        "schedule": {"iters": budget.steps, "warmup_iters": min(50, budget.steps // 5)},
        "train": {
            "work_dir": str(work_dir),
            "seed": seed,
            "device": budget.device,
            "log_interval": max(1, budget.steps // 30),
            "eval_interval": budget.steps,  # one held-out evaluation, after the last step
            "ckpt_interval": 0,
            "keep_checkpoints": 1,
            "clip_grad": 10.0,
            "progress": False,
            "tensorboard": False,
        },
    }
    if setup.eval is not None:
        recipe["eval"] = copy.deepcopy(setup.eval)
    return recipe


# ---- training one arm and seed -----------------------------------------------------------------


def _complexity(model: torch.nn.Module, task: str, size: int) -> tuple[int, int]:
    """Parameters and multiply-adds of one (1, 3, size, size) forward (detectors: mmdetection's convention)."""
    from msfusion.analysis.complexity import count_macs, count_params

    counted = TASK_SETUPS[task].counted(model)
    was_training = model.training
    macs = count_macs(counted, (1, 3, size, size))
    model.train(was_training)
    return count_params(model), macs


def train_arm(recipe: Mapping[str, Any], on_step: Callable[[], None] | None = None) -> dict[str, Any]:
    """Train and evaluate one recipe with the engine's trainer; returns the scores, the curve and the cost.

    The steps are those of ``msfusion train`` (``msfusion.engine.trainer.train``), with ``on_step`` called after
    every optimiser step (the benchmark's progress bar).
    """
    from msfusion.engine.checkpointing import prepare_work_dir
    from msfusion.engine.config import validate_config
    from msfusion.engine.distributed import init_distributed
    from msfusion.engine.tasks import build_task
    from msfusion.engine.trainer import Trainer, build_model, set_seed

    cfg = validate_config(copy.deepcopy(dict(recipe)))
    tcfg = cfg["train"]
    prepare_work_dir(tcfg["work_dir"], overwrite=True)  # a run interrupted before its result was kept
    dist_info = init_distributed(tcfg["device"])
    set_seed(tcfg["seed"])
    task = build_task(cfg["task"])
    train_set, val_set = task.build_datasets(cfg)
    model = build_model(cfg, task, train_set)
    size = cfg["data"]["train"]["image_size"]
    params, macs = _complexity(model, cfg["task"], size)
    set_seed(tcfg["seed"])

    class _Stepping(Trainer):
        def train_step(self, batches):  # noqa: ANN001, ANN202 - the trainer's own signature
            logs = super().train_step(batches)
            if on_step is not None:
                on_step()
            return logs

    # The trainer prints a line per logged step when it has no progress bar of its own; the benchmark's bar
    # (on stderr) says more, so that text is dropped.
    with contextlib.redirect_stdout(io.StringIO()):
        summary = _Stepping(cfg, task, model, train_set, val_set, dist_info).fit()
    metrics = summary["metrics"] or {}
    return {
        "scores": {k: _finite_or_none(v) for k, v in metrics.items() if isinstance(v, (int, float))},
        "curve": [[h["step"], h["loss"]] for h in summary["history"]],
        "train_time_s": summary["train_time_s"],
        "params": params,
        "macs": macs,
        "image_size": size,
    }


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


# ---- the report folder -------------------------------------------------------------------------


def _run_key(pair: Pair, arm: Arm, seed: int) -> str:
    # Keyed by the arm, not the pair: an arm two pairs share (FINE's and MSCSA's Semantic FPN R18 baseline)
    # trains once per seed and serves both (PAIRS gives one model per arm name and task: a test checks it).
    return f"{pair.task}.{arm.name}.s{seed}"


def _run_path(out_dir: Path, pair: Pair, arm: Arm, seed: int) -> Path:
    return out_dir / "runs" / f"{_run_key(pair, arm, seed)}.json"


def _write_json(path: Path, value: Any) -> None:
    from msfusion.checkpoint import atomic_write

    text = json.dumps(value, indent=1)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: unreadable benchmark result ({err}); delete it to train that run again") from err


def prepare_out_dir(out_dir: Path, budget: Budget, overwrite: bool) -> None:
    """Accept ``out_dir`` for this budget: new, or holding the same benchmark's results (resumed).

    Another benchmark's folder, or this benchmark's with another configuration, is refused unless
    ``overwrite``, which deletes this benchmark's files there (and nothing else). Results of the same
    configuration are always kept and resumed, ``overwrite`` or not: they would only be trained again.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file; give a folder (it is created if missing)")
    wanted = {"benchmark": BENCHMARK, "format": FORMAT_VERSION, "configuration": budget.configuration()}
    config_path = out_dir / CONFIG_FILE
    found = _read_json(config_path) if config_path.exists() else None
    if found == wanted:
        return
    if found is not None and not overwrite:
        theirs = found.get("configuration", {}) if isinstance(found, dict) else {}
        changed = sorted(k for k in wanted["configuration"] if theirs.get(k) != wanted["configuration"][k])
        raise ValueError(
            f"{out_dir} holds results of another configuration (differs in: {', '.join(changed) or 'format'}); "
            "resume with the same options, choose another --out, or pass --overwrite to delete them"
        )
    if found is None and out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ValueError(
            f"{out_dir} is not empty and holds no {BENCHMARK} results ({CONFIG_FILE} is missing); "
            "choose another --out, or pass --overwrite to write there anyway"
        )
    if found is not None:  # --overwrite of this benchmark's other results; another folder's files stay
        for name in ("runs", "work"):
            shutil.rmtree(out_dir / name, ignore_errors=True)
        for name in (CONFIG_FILE, "effects.json", "effects.png"):
            (out_dir / name).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_json(config_path, wanted)


def _summarise_arm(arm: Arm, runs: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> dict[str, Any]:
    scores = {m: [100 * r["scores"][m] if r["scores"].get(m) is not None else None for r in runs] for m in metrics}
    summary = {m: (mean_interval(v) if None not in v else None) for m, v in scores.items()}
    return {
        "name": arm.name,
        "label": arm.label,
        "model": arm.model,
        "params": runs[0]["params"],
        "macs": runs[0]["macs"],
        "image_size": runs[0]["image_size"],
        "seeds": [r["seed"] for r in runs],
        "scores": scores,
        "summary": summary,
        "train_time_s": [r["train_time_s"] for r in runs],
        "curves": [r["curve"] for r in runs],
    }


def summarise_pair(pair: Pair, baseline_runs: Sequence[Mapping], treatment_runs: Sequence[Mapping]) -> dict[str, Any]:
    """The report of one pair (scores in percent; differences in points, treatment - baseline)."""
    arms = {
        "baseline": _summarise_arm(pair.baseline, baseline_runs, pair.metrics),
        "treatment": _summarise_arm(pair.treatment, treatment_runs, pair.metrics),
    }
    differences: dict[str, Any] = {}
    for metric in pair.metrics:
        base, treat = arms["baseline"]["scores"][metric], arms["treatment"]["scores"][metric]
        differences[metric] = None if None in base or None in treat else paired_difference(base, treat)
    label = METRIC_LABELS.get(pair.primary, pair.primary)
    main = differences[pair.primary]
    if main is None:
        said = {"verdict": "undecided", "text": f"undecided: {label} is undefined in some run (no such objects)"}
    else:
        said = verdict(main, label, pair.baseline.label, pair.treatment.label)
    return {
        "key": pair.key,
        "effect": pair.effect,
        "title": pair.title,
        "claim": pair.claim,
        "task": pair.task,
        "metrics": list(pair.metrics),
        "primary": pair.primary,
        "unit": "% (differences in points)",
        "arms": arms,
        "difference": differences,
        **said,
    }


def run_effects(
    out_dir: str | Path,
    effects: Sequence[str] | None = None,
    budget: Budget | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
    pairs: Sequence[Pair] | None = None,
) -> dict[str, Any]:
    """Train every missing (pair, arm, seed), then write ``effects.json`` and ``effects.png``.

    Args:
        out_dir: the report folder; results already there (same configuration) are reused, never retrained.
        effects: names from :data:`EFFECTS` (all by default).
        budget: steps, seeds, sizes, device (default: :func:`budget_for` ``("cpu")``).
        overwrite: start over in a folder holding other results.
        progress: one progress bar over all the benchmark's training steps, with its ETA.
        pairs: the pairs to run instead of those of ``effects`` (tests use a tiny pair).

    Returns:
        The report (as written to ``effects.json``).
    """
    out_dir = Path(out_dir)
    budget = budget or budget_for("cpu")
    if budget.seeds < 1 or budget.steps < 1:
        raise ValueError(f"a budget needs seeds >= 1 and steps >= 1, got {budget.seeds} seeds, {budget.steps} steps")
    names = parse_effects(effects)
    chosen = list(pairs) if pairs is not None else [p for n in names for p in EFFECTS[n]]
    prepare_out_dir(out_dir, budget, overwrite)
    jobs = list(
        {
            _run_key(pair, arm, seed): (pair, arm, seed)
            for pair in chosen
            for seed in range(budget.seeds)
            for arm in (pair.baseline, pair.treatment)
        }.values()
    )
    todo = [job for job in jobs if not _run_path(out_dir, *job).exists()]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(
            total=len(jobs) * budget.steps,
            initial=(len(jobs) - len(todo)) * budget.steps,
            desc="effects",
            unit="step",
            dynamic_ncols=True,
        )
    start = time.perf_counter()
    try:
        for done, (pair, arm, seed) in enumerate(todo):
            if bar is not None:
                bar.set_postfix_str(f"{pair.key}: {arm.name} seed {seed} ({done + 1}/{len(todo)} to train)")
            work_dir = out_dir / "work" / _run_key(pair, arm, seed)
            recipe = arm_recipe(pair, arm, budget, seed, work_dir)
            result = train_arm(recipe, on_step=bar.update if bar is not None else None)
            record = {"pair": pair.key, "arm": arm.name, "seed": seed, "recipe": recipe, **result}
            _write_json(_run_path(out_dir, pair, arm, seed), record)
            shutil.rmtree(work_dir, ignore_errors=True)  # the result is kept; the weights are not needed
    finally:
        if bar is not None:
            bar.close()
    report_pairs = []
    for pair in chosen:
        runs = {
            role: [_read_json(_run_path(out_dir, pair, arm, s)) for s in range(budget.seeds)]
            for role, arm in (("baseline", pair.baseline), ("treatment", pair.treatment))
        }
        report_pairs.append(summarise_pair(pair, runs["baseline"], runs["treatment"]))
    report = {
        "benchmark": BENCHMARK,
        "configuration": {**budget.configuration(), "seeds": budget.seeds},
        "device": _device_name(budget.device),
        "threads": torch.get_num_threads(),
        "trained_now": len(todo),
        "reused": len(jobs) - len(todo),
        "wall_time_s": time.perf_counter() - start,
        "pairs": report_pairs,
    }
    shutil.rmtree(out_dir / "work", ignore_errors=True)
    _write_json(out_dir / "effects.json", report)
    plot_effects(report, out_dir / "effects.png")
    return report


def _device_name(device: str) -> str:
    import platform

    if device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"cpu ({platform.processor() or platform.machine()})"


def format_report(report: Mapping[str, Any]) -> str:
    """A plain-text table of a report: per pair, each arm's mean +- std, the difference and the verdict."""
    lines = []
    for pair in report["pairs"]:
        lines.append(f"{pair['title']}  [{pair['claim']}]")
        for role in ("baseline", "treatment"):
            arm = pair["arms"][role]
            cells = []
            for metric in pair["metrics"]:
                s = arm["summary"][metric]
                label = METRIC_LABELS.get(metric, metric)
                cells.append(
                    f"{label} n/a"
                    if s is None
                    else f"{label} {s['mean']:.2f}" + (f" +- {s['std']:.2f}" if s["std"] is not None else "")
                )
            lines.append(
                f"  {arm['label']:<32} {arm['params'] / 1e6:6.2f} M  {arm['macs'] / 1e9:6.3f} GMACs  "
                + "  ".join(cells)
            )
        lines.append(f"  -> {pair['text']}")
    return "\n".join(lines)


# ---- the picture -------------------------------------------------------------------------------


def plot_effects(report: Mapping[str, Any], path: str | Path) -> Path:
    """One PNG: a row per pair; left, both arms' per-seed scores and mean +- 95 % CI with the delta written on
    it; right, every run's training loss against the step (one colour per arm)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from msfusion.engine.visualize import save_figure

    pairs = report["pairs"]
    fig, axes = plt.subplots(len(pairs), 2, figsize=(12, 3.2 * len(pairs)), squeeze=False)
    colours = {"baseline": "tab:gray", "treatment": "tab:red"}
    for row, pair in enumerate(pairs):
        ax_score, ax_curve = axes[row]
        metric = pair["primary"]
        label = METRIC_LABELS.get(metric, metric)
        for x, role in enumerate(("baseline", "treatment")):
            arm = pair["arms"][role]
            values = [v for v in arm["scores"][metric] if v is not None]
            jitter = [x + 0.06 * (i - (len(values) - 1) / 2) for i in range(len(values))]
            ax_score.scatter(jitter, values, color=colours[role], alpha=0.7, zorder=3, label="per seed" if x else None)
            s = arm["summary"][metric]
            if s is not None and s["ci95"] is not None:  # one seed has no interval: its point says it all
                low, high = s["ci95"]
                ax_score.errorbar(
                    x + 0.25, s["mean"], yerr=[[s["mean"] - low], [high - s["mean"]]], fmt="s", color="black",
                    capsize=5, zorder=4, label="mean +- 95% CI" if x else None,
                )  # fmt: skip
        shown = [v for r in ("baseline", "treatment") for v in pair["arms"][r]["scores"][metric] if v is not None]
        shown += [
            b for r in ("baseline", "treatment") for b in (pair["arms"][r]["summary"][metric] or {}).get("ci95") or []
        ]
        if shown:
            # At least 2 points of axis, so that a tiny difference does not fill the panel.
            middle, half = (max(shown) + min(shown)) / 2, max((max(shown) - min(shown)) * 0.6, 1.0)
            ax_score.set_ylim(max(middle - half, 0.0), middle + half)  # scores are percentages
        ax_score.set_xticks([0, 1])
        ax_score.set_xticklabels(
            [
                f"{pair['arms'][r]['label']}\n{pair['arms'][r]['params'] / 1e6:.2f} M, "
                f"{pair['arms'][r]['macs'] / 1e9:.3f} GMACs"
                for r in ("baseline", "treatment")
            ],
            fontsize=8,
        )
        ax_score.set_xlim(-0.5, 1.6)
        ax_score.set_ylabel(f"{label} (%)")
        diff = pair["difference"][metric]
        if diff is None:
            delta = "delta: n/a"
        elif diff["ci95"] is None:
            delta = f"delta {diff['mean']:+.2f} (1 seed)"
        else:
            delta = f"delta {diff['mean']:+.2f}, 95% CI [{diff['ci95'][0]:+.2f}, {diff['ci95'][1]:+.2f}]"
        others = [
            f"{METRIC_LABELS.get(m, m)} {pair['difference'][m]['mean']:+.2f}"
            for m in pair["metrics"]
            if m != metric and pair["difference"][m] is not None
        ]
        also = f"\n(also: {', '.join(others)})" if others else ""
        ax_score.set_title(f"{pair['title']}\n{label} {delta}: {pair['verdict']}{also}", fontsize=9)
        ax_score.legend(loc="best", fontsize=7)
        ax_score.grid(axis="y", alpha=0.3)
        for role in ("baseline", "treatment"):
            arm = pair["arms"][role]
            for i, curve in enumerate(arm["curves"]):
                if curve:
                    steps, losses = zip(*curve, strict=True)
                    ax_curve.plot(
                        steps, losses, color=colours[role], alpha=0.7, lw=1, label=arm["label"] if i == 0 else None
                    )
        ax_curve.set_xlabel("step")
        ax_curve.set_ylabel("training loss")
        if any(c for r in ("baseline", "treatment") for c in pair["arms"][r]["curves"]):
            ax_curve.legend(loc="upper right", fontsize=7)
        ax_curve.set_title("training curves (one line per seed)", fontsize=9)
        ax_curve.grid(alpha=0.3)
    config = report["configuration"]
    fig.suptitle(
        f"Do the papers' effects show? {config['seeds']} seed(s) x {config['steps']} steps per arm, hard shapes "
        f"data, {report['device']}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (3.2 * len(pairs))))  # room for the suptitle
    return save_figure(fig, path, dpi=90, tight=False)
