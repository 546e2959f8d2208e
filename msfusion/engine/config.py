"""Training recipes as nested dicts: defaults, YAML loading, dotted overrides, validation.

A recipe is one readable YAML file in ``configs/`` (loaded with
``yaml.safe_load`` only). Every key is checked against ``DEFAULTS``: an unknown
key is an error that names the closest known key ("did you mean ...?"), so a
typo never silently trains with a default. Sub-trees listed in ``OPEN_KEYS``
(model keyword arguments, dataset descriptions, custom optimiser keys) are
passed through as written, because their keys belong to the model or dataset
constructors, which validate them.

The defaults are the official SegNeXt ADE20K recipe (official_facts §2
"Training and test config"): AdamW lr 6e-5, betas (0.9, 0.999), weight decay
0.01, custom keys ``head`` lr x10, ``norm``/``pos_block`` decay x0; poly
power 1.0 after 1500 linear warm-up iterations (ratio 1e-6); 160k iterations;
batch 16; crop 512, resize scale (2048, 512), ratio 0.5-2.0; whole-image test.
``optim.layer_decay`` (off by default: ``rate: null``) selects the CEDNet
UperNet recipes' layer-wise lr decay instead of the custom keys
(``msfusion.engine.layer_decay``); it may also be written ``layer_decay: null``.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DEFAULTS",
    "OPEN_KEYS",
    "NULLABLE_KEYS",
    "ConfigError",
    "load_config",
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
        "name": "segnext_t",  # any registered model name
        "kwargs": {},  # passed to create_model (num_classes is taken from the dataset)
        "pretrained": None,  # path of a checkpoint to initialise from (strict=False)
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
    },
    "optim": {
        "lr": 6.0e-5,
        "weight_decay": 0.01,
        "betas": [0.9, 0.999],
        "eps": 1.0e-8,
        # mmcv custom keys: substring match, longest key first, only the first match applies.
        "custom_keys": {
            "pos_block": {"decay_mult": 0.0},
            "norm": {"decay_mult": 0.0},
            "head": {"lr_mult": 10.0},
        },
        # Layer-wise lr decay (ced-mmseg LearningRateDecayOptimizerConstructor), off while rate is
        # null: lr scale min(1, rate ** (num_layers + 1 - layer_id)), layer ids by `rule`
        # ("cednet" or "cednet_small"), no weight decay for 1-D params and biases, no custom keys.
        "layer_decay": {"rate": None, "num_layers": None, "rule": None},
    },
    "schedule": {
        "iters": 160000,
        "warmup_iters": 1500,
        "warmup_ratio": 1.0e-6,
        "power": 1.0,
        "min_lr": 0.0,
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
    "task": ("segmentation",),
    "train.amp": ("none", "bf16", "fp16"),
    "train.device": ("auto", "cpu", "cuda"),
    "eval.mode": ("whole", "slide"),
    "data.on_bad_file": ("raise", "skip"),
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


def validate_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Check keys (with did-you-mean), choices and numeric ranges; return the merged config."""
    _check_keys(cfg, DEFAULTS)
    full = merge_config(DEFAULTS, cfg)
    for path, choices in _CHOICES.items():
        value = _get(full, path)
        if value not in choices:
            raise ConfigError(f"{path} must be one of {list(choices)}, got {value!r}")
    positive = ("data.batch_size", "schedule.iters", "train.grad_accum", "train.log_interval")
    for path in positive:
        value = _get(full, path)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{path} must be a positive integer, got {value!r}")
    for path in (
        "optim.lr",
        "optim.weight_decay",
        "schedule.warmup_ratio",
        "schedule.power",
        "schedule.min_lr",
    ):
        value = _get(full, path)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise ConfigError(f"{path} must be a non-negative number, got {value!r}")
    for name, rule in (full["optim"]["custom_keys"] or {}).items():
        if not isinstance(rule, Mapping) or set(rule) - {"lr_mult", "decay_mult"}:
            raise ConfigError(
                f"optim.custom_keys.{name} must be a mapping with lr_mult and/or decay_mult, got {rule!r}"
            )
    _check_layer_decay(full["optim"])
    clip = full["train"]["clip_grad"]
    if clip is not None and (not isinstance(clip, (int, float)) or clip <= 0):
        raise ConfigError(f"train.clip_grad must be a positive number or null, got {clip!r}")
    return full


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


def _parse_value(text: str) -> Any:
    # YAML scalars: "1e-3" -> float, "[64, 64]" -> list, "null" -> None, "true" -> bool.
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in "eE.") else value
        except ValueError:
            return value
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
                node[part] = _parse_value(text)
            else:
                if not isinstance(node.get(part), dict):
                    node[part] = {}
                node = node[part]
    return out


def load_config(path: str | Path | None, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Read a YAML recipe (``yaml.safe_load``), apply ``--set`` overrides, validate, fill defaults.

    Raises:
        FileNotFoundError: no such file.
        ConfigError: unreadable YAML, unknown keys (with a did-you-mean), bad values.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({err})") from err
        if loaded is not None and not isinstance(loaded, Mapping):
            raise ConfigError(f"{path}: the top level must be a mapping of keys")
        raw = dict(loaded or {})
        try:
            _check_keys(raw, DEFAULTS)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None
    return validate_config(apply_overrides(raw, overrides))


def dump_config(cfg: Mapping[str, Any], path: str | Path) -> None:
    """Write the full, resolved config next to the run's outputs (for reproducibility)."""
    from msfusion.checkpoint import atomic_write

    text = yaml.safe_dump(dict(cfg), sort_keys=False)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
