"""AdamW with the official parameter groups, and the warm-up + poly schedule.

Recipe: the official SegNeXt ADE20K configs (``local_configs/segnext/*/`` in the
SegNeXt repo, mmseg v0.24.1 on mmcv 1.x):

- AdamW lr 6e-5, betas (0.9, 0.999), weight decay 0.01, with
  ``paramwise_cfg.custom_keys = {'pos_block': decay_mult 0, 'norm': decay_mult 0,
  'head': lr_mult 10}``.
- mmcv's matching rule (``DefaultOptimizerConstructor``): a key matches when it
  is a substring of the full parameter name; keys are tried longest first,
  alphabetically among equal lengths, and only the first match applies. So
  every ``decode_head.*`` parameter, its GroupNorms included, gets lr x10 with
  the normal decay ('head' sorts before 'norm'), and biases, layer scales and
  the stem BatchNorms keep weight decay (no bias/norm rule is enabled).
- Schedule (mmcv ``PolyLrUpdaterHook``, ``by_epoch=False``; ``schedule.policy: poly``): the regular lr is
  ``(base - min_lr) * (1 - it / iters) ** power + min_lr``; during the first
  ``warmup_iters`` iterations it is multiplied by
  ``1 - (1 - it / warmup_iters) * (1 - warmup_ratio)`` (linear warm-up).

With ``optim.layer_decay`` set (the CEDNet recipes), the groups come
from :func:`msfusion.engine.layer_decay.build_layer_decay_param_groups`
instead: ced-mmseg's ``LearningRateDecayOptimizerConstructor`` (layer-wise lr
decay, no weight decay for 1-D parameters and biases, no custom keys); see that
module for the rule and its source.

The detection recipes use ``schedule.policy: step`` instead (mmcv's
``StepLrUpdaterHook``: the lr is multiplied by ``gamma`` at each of
``schedule.steps``, given in iterations), with the same linear warm-up.

The schedule is a ``LambdaLR`` whose per-group factor is a small callable
object, so ``scheduler.state_dict()`` round-trips it and ``--resume`` continues
with the same learning rates.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from msfusion.engine.layer_decay import build_layer_decay_param_groups

__all__ = [
    "match_custom_key",
    "build_param_groups",
    "layer_decay_enabled",
    "build_optimizer",
    "linear_warmup",
    "PolyWarmup",
    "StepWarmup",
    "build_scheduler",
]


def match_custom_key(name: str, custom_keys: Mapping[str, Any]) -> str | None:
    """The custom key that applies to parameter ``name`` under mmcv's rule, or None.

    Keys are tried longest first, then alphabetically; the first key that is a
    substring of ``name`` wins and no other key is considered.
    """
    for key in sorted(custom_keys, key=lambda k: (-len(k), k)):
        if key in name:
            return key
    return None


def build_param_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    custom_keys: Mapping[str, Mapping[str, float]] | None = None,
) -> list[dict[str, Any]]:
    """Parameter groups for ``torch.optim`` following mmcv's custom keys.

    Parameters with the same (lr_mult, decay_mult) share one group; each group
    records ``lr_mult``, ``decay_mult`` and the ``custom_key`` that matched
    (None for the default group), and keeps its parameter names in ``names``
    for inspection. Frozen parameters (``requires_grad=False``) are left out.
    """
    custom_keys = custom_keys or {}
    groups: dict[tuple[float, float, str | None], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        key = match_custom_key(name, custom_keys)
        rule = custom_keys.get(key, {}) if key is not None else {}
        lr_mult = float(rule.get("lr_mult", 1.0))
        decay_mult = float(rule.get("decay_mult", 1.0))
        group = groups.setdefault(
            (lr_mult, decay_mult, key),
            {
                "params": [],
                "names": [],
                "lr": lr * lr_mult,
                "weight_decay": weight_decay * decay_mult,
                "lr_mult": lr_mult,
                "decay_mult": decay_mult,
                "custom_key": key,
            },
        )
        group["params"].append(param)
        group["names"].append(name)
    return list(groups.values())


def layer_decay_enabled(optim_cfg: Mapping[str, Any]) -> bool:
    """Whether ``optim.layer_decay`` is on (a mapping whose ``rate`` is not null)."""
    layer_decay = optim_cfg.get("layer_decay")
    return isinstance(layer_decay, Mapping) and layer_decay.get("rate") is not None


def build_optimizer(model: nn.Module, optim_cfg: Mapping[str, Any]) -> torch.optim.Optimizer:
    """AdamW (or, with ``type: sgd``, SGD with ``momentum``) over the recipe's parameter groups.

    Config keys: lr, weight_decay, betas, eps, and either custom_keys (mmcv
    rules, :func:`build_param_groups`) or layer_decay ``{rate, num_layers,
    rule, head_weight_decay}`` (:func:`~msfusion.engine.layer_decay.build_layer_decay_param_groups`);
    the two cannot be combined.
    """
    if layer_decay_enabled(optim_cfg):
        if optim_cfg.get("custom_keys"):
            raise ValueError(
                "optim.layer_decay replaces optim.custom_keys (as the official constructor does); "
                "set optim.custom_keys to {}"
            )
        ld = optim_cfg["layer_decay"]
        groups = build_layer_decay_param_groups(
            model,
            optim_cfg["lr"],
            optim_cfg["weight_decay"],
            ld["rate"],
            ld["num_layers"],
            ld["rule"],
            ld.get("head_weight_decay"),
        )
    else:
        groups = build_param_groups(model, optim_cfg["lr"], optim_cfg["weight_decay"], optim_cfg.get("custom_keys"))
    if not groups:
        raise ValueError("the model has no trainable parameters")
    if optim_cfg.get("type", "adamw") == "sgd":
        # mmseg's SGD schedules (e.g. Semantic FPN: lr 0.01, momentum 0.9, weight decay 5e-4).
        return torch.optim.SGD(groups, lr=optim_cfg["lr"], momentum=optim_cfg.get("momentum", 0.9))
    return torch.optim.AdamW(
        groups,
        lr=optim_cfg["lr"],
        betas=tuple(optim_cfg["betas"]),
        eps=optim_cfg.get("eps", 1e-8),
        fused=bool(optim_cfg.get("fused")) or None,
    )


def linear_warmup(it: int, warmup_iters: int, warmup_ratio: float) -> float:
    """mmcv's linear warm-up factor at iteration ``it``: ``1 - (1 - it / warmup_iters) * (1 - warmup_ratio)``.

    The same ramp as torchvision's and mmengine's ``LinearLR(start_factor=warmup_ratio)``; 1 after the warm-up.
    """
    if it >= warmup_iters:
        return 1.0
    return 1.0 - (1.0 - it / warmup_iters) * (1.0 - warmup_ratio)


class PolyWarmup:
    """Multiplicative lr factor of one parameter group: linear warm-up, then poly decay.

    ``factor(it) * base_lr`` is mmcv's ``PolyLrUpdaterHook`` lr with linear
    warm-up at iteration ``it`` (0-based). A plain object of numbers, so
    ``LambdaLR.state_dict`` stores it and resuming restores it.
    """

    def __init__(
        self,
        iters: int,
        warmup_iters: int = 0,
        warmup_ratio: float = 1e-6,
        power: float = 1.0,
        min_lr: float = 0.0,
        base_lr: float = 1.0,
    ) -> None:
        self.iters = int(iters)
        self.warmup_iters = int(warmup_iters)
        self.warmup_ratio = float(warmup_ratio)
        self.power = float(power)
        self.min_ratio = float(min_lr) / float(base_lr) if base_lr > 0 else 0.0

    def __call__(self, it: int) -> float:
        progress = min(it, self.iters) / self.iters
        factor = (1.0 - self.min_ratio) * (1.0 - progress) ** self.power + self.min_ratio
        return factor * linear_warmup(it, self.warmup_iters, self.warmup_ratio)


class StepWarmup:
    """Multiplicative lr factor of one parameter group: linear warm-up, then ``gamma`` at each step.

    The detection papers' schedule (mmdetection's "1x": x0.1 after epochs 8
    and 11 of 12; torchvision's reference: after epochs 16 and 22 of 26):
    mmcv's ``StepLrUpdaterHook`` (``gamma ** (steps passed)``, floored at
    ``min_lr``) times the linear warm-up, at iteration ``it`` (0-based); the
    rate drops at the iteration equal to a step. A plain object of numbers,
    as :class:`PolyWarmup`, so resuming restores it.
    """

    def __init__(
        self,
        steps: Sequence[int],
        gamma: float = 0.1,
        warmup_iters: int = 0,
        warmup_ratio: float = 1e-3,
        min_lr: float = 0.0,
        base_lr: float = 1.0,
    ) -> None:
        self.steps = [int(s) for s in steps]
        self.gamma = float(gamma)
        self.warmup_iters = int(warmup_iters)
        self.warmup_ratio = float(warmup_ratio)
        self.min_ratio = float(min_lr) / float(base_lr) if base_lr > 0 else 0.0

    def __call__(self, it: int) -> float:
        passed = sum(it >= step for step in self.steps)
        factor = max(self.gamma**passed, self.min_ratio)
        return factor * linear_warmup(it, self.warmup_iters, self.warmup_ratio)


def build_scheduler(optimizer: torch.optim.Optimizer, schedule_cfg: Mapping[str, Any]) -> LambdaLR:
    """A ``LambdaLR`` with one factor per group; call ``step()`` after each optimiser step.

    ``schedule.policy`` picks the factor: ``"poly"`` (:class:`PolyWarmup`, the
    segmentation recipes) or ``"step"`` (:class:`StepWarmup` with
    ``schedule.steps`` and ``schedule.gamma``, the detection recipes). Warns
    when the warm-up is not shorter than the run (a recipe's ``iters`` lowered
    for a quick try): the learning rate would never reach ``optim.lr``.
    """
    iters, warmup = int(schedule_cfg["iters"]), int(schedule_cfg.get("warmup_iters", 0))
    if warmup >= iters:
        warnings.warn(
            f"schedule.warmup_iters ({warmup}) is not below schedule.iters ({iters}): the learning rate warms up "
            f"for the whole run and never reaches optim.lr; lower it, e.g. --set schedule.warmup_iters={iters // 10}",
            stacklevel=2,
        )
    policy = schedule_cfg.get("policy", "poly")
    if policy not in ("poly", "step"):
        raise ValueError(f"schedule.policy must be 'poly' or 'step', got {policy!r}")
    ratio = schedule_cfg.get("warmup_ratio", 1e-6)
    min_lr = schedule_cfg.get("min_lr", 0.0)
    if policy == "step":
        lambdas: list[Any] = [
            StepWarmup(schedule_cfg["steps"], schedule_cfg.get("gamma", 0.1), warmup, ratio, min_lr, group["lr"])
            for group in optimizer.param_groups
        ]
    else:
        power = schedule_cfg.get("power", 1.0)
        lambdas = [PolyWarmup(iters, warmup, ratio, power, min_lr, group["lr"]) for group in optimizer.param_groups]
    return LambdaLR(optimizer, lr_lambda=lambdas)
