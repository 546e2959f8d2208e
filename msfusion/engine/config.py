"""Training recipes as nested dicts: defaults, YAML loading, dotted overrides, validation.

A recipe is one readable YAML file in ``configs/`` (loaded with
``yaml.safe_load`` only). Every key is checked against ``DEFAULTS``: an unknown
key is an error that names the closest known key ("did you mean ...?"), so a
typo never silently trains with a default. Sub-trees listed in ``OPEN_KEYS``
(model keyword arguments, dataset descriptions, custom optimiser keys) are
passed through as written, because their keys belong to the model or dataset
constructors, which validate them.

The defaults are the official SegNeXt ADE20K recipe (the SegNeXt repo's
``local_configs/segnext/*/`` configs): AdamW lr 6e-5, betas (0.9, 0.999), weight decay
0.01, custom keys ``head`` lr x10, ``norm``/``pos_block`` decay x0; poly
power 1.0 after 1500 linear warm-up iterations (ratio 1e-6); 160k iterations;
batch 16; crop 512, resize scale (2048, 512), ratio 0.5-2.0; whole-image test.
``optim.layer_decay`` (off by default: ``rate: null``) selects the CEDNet
recipes' layer-wise lr decay instead of the custom keys
(``msfusion.engine.layer_decay``); it may also be written ``layer_decay: null``.
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from msfusion.structured_files import read_mapping

__all__ = [
    "DEFAULTS",
    "OPEN_KEYS",
    "NULLABLE_KEYS",
    "ConfigError",
    "load_config",
    "read_recipe",
    "merge_config",
    "apply_overrides",
    "validate_config",
    "dump_config",
]


class ConfigError(ValueError):
    """A recipe that cannot be used: unknown key, bad value, unreadable file."""


DEFAULTS: dict[str, Any] = {
    "task": "segmentation",
    "model": {
        "name": "segnext_t",  # any registered model name (a label only when `compose` is given)
        "kwargs": {},  # passed to create_model (num_classes is taken from the dataset)
        # Or compose a model from parts by name, as build_segmentor / build_classifier do, e.g.
        # {backbone: resnet50, neck: fpn, head: semantic_fpn, neck_kwargs: {fine: true}}.
        "compose": None,
        "pretrained": None,  # path of a checkpoint to initialise from
        # A pretrained file must fill at least half of the tensors it is meant for (the backbone's, for an
        # encoder checkpoint); true accepts fewer (e.g. a checkpoint of another family on purpose).
        "pretrained_partial": False,
        "sync_bn": False,  # convert BatchNorm to SyncBatchNorm under DDP on GPUs
        "norm_eval": False,  # keep BatchNorm in eval mode (frozen statistics) while training
    },
    "data": {
        "train": {},  # build_dataset() description, e.g. {type: ade20k, root: data/ade, split: train}
        "val": {},
        "batch_size": 16,  # total images per optimiser step, over all processes (official: 16)
        "num_workers": 2,
        "crop_size": [512, 512],
        "scale": [2048, 512],
        "ratio_range": [0.5, 2.0],
        "cat_max_ratio": 0.75,
        "photometric": True,
        "eval_scale": [2048, 512],  # keep-ratio resize at test time; null keeps the size
        "on_bad_file": "raise",  # "raise" or "skip" unreadable / invalid samples
        # Read every label file once before training: warn about classes without a labelled pixel,
        # fail when every pixel is ignored (e.g. 0/255 masks of a two-class folder dataset).
        "check_labels": True,
    },
    "optim": {
        "type": "adamw",  # "adamw" or "sgd" (mmseg's SGD recipes: momentum below, no betas)
        "momentum": 0.9,  # SGD only
        "lr": 6.0e-5,
        "weight_decay": 0.01,
        "betas": [0.9, 0.999],
        "eps": 1.0e-8,
        # One fused AdamW kernel over all parameters (CPU and CUDA): faster steps, float32 rounding
        # differs from the per-parameter loop in the last bits; resume stays bit-identical either way.
        "fused": False,
        # mmcv custom keys: substring match, longest key first, only the first match applies.
        "custom_keys": {
            "pos_block": {"decay_mult": 0.0},
            "norm": {"decay_mult": 0.0},
            "head": {"lr_mult": 10.0},
        },
        # Layer-wise lr decay (ced-mmseg LearningRateDecayOptimizerConstructor), off while rate is
        # null: lr scale min(1, rate ** (num_layers + 1 - layer_id)), layer ids by `rule`
        # ("cednet" or "cednet_small"), no weight decay for 1-D params and biases, no custom keys.
        # head_weight_decay: the decay of every parameter outside the backbone/add-on/neck chain
        # (ced-mmdet's detectors: 1e-4 for the heads); null treats the heads as the rest (ced-mmseg).
        "layer_decay": {"rate": None, "num_layers": None, "rule": None, "head_weight_decay": None},
    },
    "schedule": {
        # "poly": mmcv's poly decay (the segmentation recipes); "step": x gamma at each of `steps`
        # (iterations; the detection recipes' "1x" schedule: after epochs 8 and 11 of 12).
        "policy": "poly",
        "iters": 160000,
        "warmup_iters": 1500,
        "warmup_ratio": 1.0e-6,
        "power": 1.0,  # poly only
        "min_lr": 0.0,
        "steps": None,  # step only: the iterations at which the lr is multiplied by gamma
        "gamma": 0.1,  # step only
    },
    "train": {
        "work_dir": "work_dirs/run",
        "seed": 0,
        "deterministic": False,
        "amp": "none",  # "none", "bf16" (CPU or CUDA), "fp16" (CUDA only)
        "grad_accum": 1,
        "clip_grad": None,  # max gradient norm, or null
        "log_interval": 50,
        "eval_interval": 16000,
        "ckpt_interval": 16000,
        "keep_checkpoints": 2,
        "device": "auto",  # "auto", "cpu", "cuda"
        "progress": True,
        "tensorboard": True,
        # Speed switches (same function; float32 rounding may differ from the default layout):
        # NHWC weights and activations (oneDNN's fast depthwise convolutions), and torch.compile
        # of the training forward (inductor; compiles once per input size).
        "channels_last": False,
        "compile": False,
        # Keep freed host memory mapped (glibc): the full-resolution logits, their softmax and
        # gradients (150 x 512 x 512 floats per image) are then not page-faulted in at every step.
        "keep_freed_memory": False,
        # Recompute the backbone's activations in the backward pass (set_grad_checkpointing): SegNeXt-B
        # trains in 80% less activation memory for 1.23x the step time (benchmarks/bench_grad_checkpointing.py).
        "grad_checkpointing": False,
        # Cross-entropy averaged over the labelled pixels (True, PyTorch's rule) or over every pixel,
        # ignored ones included (False: mmsegmentation's default `avg_non_ignore=False`, which every
        # paper's official training used; the paper recipes set it).
        "avg_non_ignore": True,
    },
    "eval": {
        "mode": "whole",  # "whole" or "slide"
        "crop_size": [512, 512],
        "stride": [341, 341],
        "tta": False,
        "scales": [0.5, 0.75, 1.0, 1.25, 1.5, 1.75],
        "flip": True,
    },
}

# Sub-trees whose keys belong to another constructor; they are not checked here.
OPEN_KEYS = ("model.kwargs", "data.train", "data.val", "optim.custom_keys")
# Mappings that may also be written as null (meaning "off").
NULLABLE_KEYS = ("optim.layer_decay",)

_CHOICES = {
    "train.amp": ("none", "bf16", "fp16"),
    "train.device": ("auto", "cpu", "cuda"),
    "eval.mode": ("whole", "slide"),
    "data.on_bad_file": ("raise", "skip"),
    "optim.type": ("adamw", "sgd"),
    "schedule.policy": ("poly", "step"),
}


def _suggest(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""


def _check_keys(cfg: Mapping[str, Any], schema: Mapping[str, Any], prefix: str = "") -> None:
    for key, value in cfg.items():
        path = f"{prefix}{key}"
        if key not in schema:
            known = [f"{prefix}{k}" for k in schema]
            raise ConfigError(
                f"unknown config key {path!r}.{_suggest(path, known)} Known keys here: {', '.join(known)}"
            )
        if path in OPEN_KEYS:
            if value is not None and not isinstance(value, Mapping):
                raise ConfigError(f"{path} must be a mapping, got {type(value).__name__}")
            continue
        if isinstance(schema[key], Mapping):
            if value is None and path in NULLABLE_KEYS:
                continue
            if not isinstance(value, Mapping):
                raise ConfigError(f"{path} must be a mapping of keys, got {value!r}")
            _check_keys(value, schema[key], f"{path}.")


def merge_config(base: Mapping[str, Any], update: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Deep-merge ``update`` into a copy of ``base``; open sub-trees are replaced, not merged."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) and path not in OPEN_KEYS:
            out[key] = merge_config(out[key], value, f"{path}.")
        elif isinstance(value, Mapping) and path in OPEN_KEYS and key == "custom_keys":
            out[key] = copy.deepcopy(dict(value))  # a recipe's custom keys replace the default set
        else:
            out[key] = copy.deepcopy(value)
    return out


# Integer settings and their smallest allowed value (0 means "off" for the intervals).
_INTEGERS = {
    "data.batch_size": 1,
    "schedule.iters": 1,
    "train.grad_accum": 1,
    "train.log_interval": 1,
    "train.keep_checkpoints": 1,
    "data.num_workers": 0,
    "schedule.warmup_iters": 0,
    "train.eval_interval": 0,
    "train.ckpt_interval": 0,
    "train.seed": 0,
}
_NON_NEGATIVE = ("optim.lr", "optim.weight_decay", "schedule.warmup_ratio", "schedule.power", "schedule.min_lr")
_PAIRS = ("data.crop_size", "data.scale", "eval.crop_size", "eval.stride")
_BOOLS = (
    "model.sync_bn",
    "model.norm_eval",
    "model.pretrained_partial",
    "data.photometric",
    "data.check_labels",
    "train.deterministic",
    "train.progress",
    "train.tensorboard",
    "train.channels_last",
    "train.compile",
    "train.keep_freed_memory",
    "train.grad_checkpointing",
    "train.avg_non_ignore",
    "optim.fused",
    "eval.tta",
    "eval.flip",
)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return f"{value!r} (a string: write the value without quotes)"
    return repr(value)


def _check_finite(value: Any, path: str) -> None:
    """Reject NaN and infinity anywhere in a recipe: they silently poison weights (lr: .inf)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{path} is {value}, which is not a finite number; write a finite value")
    if isinstance(value, Mapping):
        for key, item in value.items():
            _check_finite(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_finite(item, f"{path}[{i}]")


def _as_float(full: dict[str, Any], path: str) -> float:
    """A number setting; a string YAML did not read as a number ("1e-3" without a dot) is accepted."""
    value = _get(full, path)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(f"{path} must be a number, got {value!r}") from None
        # YAML reads "nan" and "inf" (without a dot) as strings: converted here, they must be checked here.
        _check_finite(value, path)
        _set(full, path, value)
    if not _is_number(value):
        raise ConfigError(f"{path} must be a number, got {_describe(value)}")
    return value


def _check_pair(full: Mapping[str, Any], path: str, nullable: bool = False) -> None:
    value = _get(full, path)
    if value is None and nullable:
        return
    ok = isinstance(value, (list, tuple)) and len(value) == 2
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    if not ok:
        example = f"[{value}, {value}]" if isinstance(value, int) and not isinstance(value, bool) else "[512, 512]"
        extra = " or null" if nullable else ""
        raise ConfigError(
            f"{path} must be a pair of positive integers{extra}, got {_describe(value)}; write e.g. {example}"
        )


def validate_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Check keys (with did-you-mean), types, choices and ranges; return the merged config.

    Every number must be finite. A float written so that YAML reads a string
    (``lr: 1e-3``: YAML 1.1 needs a dot, ``1.0e-3``) is converted.
    """
    _check_keys(cfg, DEFAULTS)
    full = merge_config(DEFAULTS, cfg)
    _check_finite(full, "")
    from msfusion.engine.tasks import get_task, list_tasks

    if full["task"] not in list_tasks():
        raise ConfigError(f"task must be one of {list_tasks()}, got {full['task']!r}")
    for path, choices in _CHOICES.items():
        value = _get(full, path)
        if value not in choices:
            raise ConfigError(f"{path} must be one of {list(choices)}, got {value!r}")
    for path, low in _INTEGERS.items():
        value = _get(full, path)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            what = "a positive integer" if low else "a non-negative integer (0 = off)"
            raise ConfigError(f"{path} must be {what}, got {_describe(value)}")
    for path in _NON_NEGATIVE:
        if _as_float(full, path) < 0:
            raise ConfigError(f"{path} must be a non-negative number, got {_get(full, path)!r}")
    if _as_float(full, "optim.eps") <= 0:
        raise ConfigError(f"optim.eps must be a positive number, got {full['optim']['eps']!r}")
    if not 0 < _as_float(full, "data.cat_max_ratio") <= 1:
        raise ConfigError(f"data.cat_max_ratio must be in (0, 1], got {full['data']['cat_max_ratio']!r}")
    for path in _BOOLS:
        if not isinstance(_get(full, path), bool):
            raise ConfigError(f"{path} must be true or false, got {_describe(_get(full, path))}")
    for path in _PAIRS:
        _check_pair(full, path)
    _check_pair(full, "data.eval_scale", nullable=True)
    _check_number_list(full, "data.ratio_range", 2, "a pair [low, high] of positive numbers, e.g. [0.5, 2.0]")
    low, high = full["data"]["ratio_range"]
    if not 0 < low <= high:
        raise ConfigError(f"data.ratio_range must be [low, high] with 0 < low <= high, got {[low, high]}")
    _check_number_list(full, "optim.betas", 2, "a pair of numbers in [0, 1), e.g. [0.9, 0.999]")
    if not all(0 <= b < 1 for b in full["optim"]["betas"]):
        raise ConfigError(f"optim.betas must be two numbers in [0, 1), got {full['optim']['betas']}")
    _check_number_list(full, "eval.scales", None, "a non-empty list of positive numbers, e.g. [0.5, 1.0, 1.5]")
    if not all(s > 0 for s in full["eval"]["scales"]):
        raise ConfigError(f"eval.scales must be positive, got {full['eval']['scales']}")
    crop, stride = full["eval"]["crop_size"], full["eval"]["stride"]
    if any(s > c for s, c in zip(stride, crop, strict=True)):
        raise ConfigError(
            f"eval.stride {list(stride)} is larger than eval.crop_size {list(crop)}: sliding windows would "
            "leave pixels uncovered. Use a stride no larger than the crop (mmseg uses about 2/3 of it)."
        )
    for path in ("model.name", "train.work_dir"):
        if not isinstance(_get(full, path), str) or not _get(full, path):
            raise ConfigError(f"{path} must be a non-empty string, got {_describe(_get(full, path))}")
    compose = full["model"]["compose"]
    if compose is not None:
        allowed = {"backbone", "addon", "neck", "head", "backbone_kwargs", "addon_kwargs", "neck_kwargs", "head_kwargs"}
        allowed |= get_task(full["task"]).compose_keys  # e.g. build_detector's arch
        if not isinstance(compose, Mapping) or "backbone" not in compose or set(compose) - allowed:
            raise ConfigError(
                f"model.compose must be a mapping with a backbone and any of {sorted(allowed - {'backbone'})}, "
                f"got {compose!r}"
            )
    pretrained = full["model"]["pretrained"]
    if pretrained is not None and not isinstance(pretrained, str):
        raise ConfigError(f"model.pretrained must be a checkpoint path or null, got {pretrained!r}")
    for name, rule in (full["optim"]["custom_keys"] or {}).items():
        if not isinstance(rule, Mapping) or set(rule) - {"lr_mult", "decay_mult"}:
            raise ConfigError(
                f"optim.custom_keys.{name} must be a mapping with lr_mult and/or decay_mult, got {rule!r}"
            )
        for mult, value in rule.items():
            if not _is_number(value) or value < 0:
                raise ConfigError(f"optim.custom_keys.{name}.{mult} must be a non-negative number, got {value!r}")
    _check_layer_decay(full["optim"])
    _check_steps(full)
    clip = full["train"]["clip_grad"]
    if clip is not None and (not _is_number(clip) or clip <= 0):
        raise ConfigError(f"train.clip_grad must be a positive number or null, got {_describe(clip)}")
    return full


def _check_number_list(full: dict[str, Any], path: str, length: int | None, expected: str) -> None:
    value = _get(full, path)
    if isinstance(value, tuple):
        value = list(value)
    ok = isinstance(value, list) and (len(value) == length if length else len(value) > 0)
    if ok:
        try:
            value = [float(v) if isinstance(v, str) else v for v in value]
        except ValueError:
            ok = False
    if not ok or not all(_is_number(v) for v in value):
        raise ConfigError(f"{path} must be {expected}, got {_describe(_get(full, path))}")
    _set(full, path, value)


def _check_steps(full: dict[str, Any]) -> None:
    """``schedule.steps``: increasing iterations inside the run, for ``policy: step`` and only for it."""
    schedule = full["schedule"]
    steps, iters = schedule["steps"], schedule["iters"]
    if schedule["policy"] != "step":
        if steps is not None:
            raise ConfigError(
                f"schedule.steps is set ({steps}) but schedule.policy is {schedule['policy']!r}: the steps would "
                "be ignored; set schedule.policy: step, or remove schedule.steps"
            )
        return
    ok = isinstance(steps, (list, tuple)) and len(steps) > 0
    ok = ok and all(isinstance(s, int) and not isinstance(s, bool) and 0 < s < iters for s in steps)
    if not ok or list(steps) != sorted(set(steps)):
        raise ConfigError(
            f"schedule.steps must be increasing iterations between 0 and schedule.iters ({iters}) for "
            f"policy: step, got {_describe(steps)}; e.g. [{iters * 8 // 12}, {iters * 11 // 12}] "
            "(mmdetection's 1x: after epochs 8 and 11 of 12)"
        )
    schedule["steps"] = list(steps)
    gamma = _as_float(full, "schedule.gamma")
    if not 0 < gamma <= 1:
        raise ConfigError(f"schedule.gamma must be a number in (0, 1], got {gamma!r}")


def _check_layer_decay(optim: Mapping[str, Any]) -> None:
    from msfusion.engine.layer_decay import LAYER_ID_RULES

    ld = optim["layer_decay"]
    if ld is None or ld.get("rate") is None:
        return
    rate, num_layers, rule = ld["rate"], ld["num_layers"], ld["rule"]
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 < rate <= 1:
        raise ConfigError(f"optim.layer_decay.rate must be a number in (0, 1], got {rate!r}")
    if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 1:
        raise ConfigError(f"optim.layer_decay.num_layers must be a positive integer, got {num_layers!r}")
    if rule not in LAYER_ID_RULES:
        raise ConfigError(f"optim.layer_decay.rule must be one of {sorted(LAYER_ID_RULES)}, got {rule!r}")
    head_decay = ld.get("head_weight_decay")
    if head_decay is not None and (not _is_number(head_decay) or head_decay < 0):
        raise ConfigError(
            f"optim.layer_decay.head_weight_decay must be a non-negative number or null, got {_describe(head_decay)}"
        )
    if optim["custom_keys"]:
        raise ConfigError(
            "optim.layer_decay replaces optim.custom_keys (the official layer-decay constructor has no "
            "custom keys); set optim.custom_keys: {} in the recipe"
        )


def _get(cfg: Mapping[str, Any], path: str) -> Any:
    node: Any = cfg
    for part in path.split("."):
        node = node[part]
    return node


def _set(cfg: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = cfg
    for part in parents:
        node = node[part]
    node[last] = value


def _parse_value(text: str, path: str = "") -> Any:
    # YAML scalars: "1e-3" -> float, "[64, 64]" -> list, "null" -> None, "true" -> bool.
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        # "nan" and "inf" are strings to YAML, but a number setting would convert them later, unchecked.
        if not math.isfinite(number):
            raise ConfigError(
                f"--set {path}={text}: {value!r} is not a finite number; write a finite value "
                "(NaN or infinity silently poisons training)"
            )
        return number if any(c in value for c in "eE.") else value
    return value


def apply_overrides(cfg: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML scalars) to a raw config.

    Keys are checked against the schema (with did-you-mean); inside open
    sub-trees (``model.kwargs.*``, ``data.train.*``, ...) any key may be set.
    """
    out = copy.deepcopy(dict(cfg))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        path, text = item.split("=", 1)
        parts = path.strip().split(".")
        schema: Any = DEFAULTS
        node = out
        open_tree = False
        for depth, part in enumerate(parts):
            prefix = ".".join(parts[:depth])
            if not open_tree:
                if not isinstance(schema, Mapping) or part not in schema:
                    known = [f"{prefix}.{k}" if prefix else k for k in schema] if isinstance(schema, Mapping) else []
                    raise ConfigError(
                        f"unknown config key {path!r} in --set.{_suggest('.'.join(parts[: depth + 1]), known)}"
                    )
                schema = schema[part]
                open_tree = ".".join(parts[: depth + 1]) in OPEN_KEYS
            if depth == len(parts) - 1:
                node[part] = _parse_value(text, path.strip())
            else:
                if not isinstance(node.get(part), dict):
                    node[part] = {}
                node = node[part]
    return out


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The raw keys of a YAML recipe (``yaml.safe_load``), top-level keys checked; no defaults filled in.

    Raises:
        FileNotFoundError: no such file.
        ConfigError: unreadable YAML, a top level that is not a mapping, unknown keys (with a did-you-mean).
    """
    raw = read_mapping(path, "config file", error=ConfigError)
    try:
        _check_keys(raw, DEFAULTS)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return raw


def load_config(path: str | Path | None, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Read a YAML recipe (``yaml.safe_load``), apply ``--set`` overrides, validate, fill defaults.

    Raises:
        FileNotFoundError: no such file.
        ConfigError: unreadable YAML, unknown keys (with a did-you-mean), bad values.
    """
    raw = read_recipe(path) if path is not None else {}
    return validate_config(apply_overrides(raw, overrides))


def dump_config(cfg: Mapping[str, Any], path: str | Path) -> None:
    """Write the full, resolved config next to the run's outputs (for reproducibility)."""
    from msfusion.checkpoint import atomic_write

    text = yaml.safe_dump(dict(cfg), sort_keys=False)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
