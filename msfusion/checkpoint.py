"""Model weights in and out: our format and the official ones.

Our format: ``<name>.safetensors`` with the weights
and ``<name>.json`` beside it (model name and kwargs, classes, training step,
library version). Both are written atomically: a temporary file in the same
folder, then ``os.replace``, so a crash never leaves a half-written checkpoint.

Official checkpoints (``.pth``/``.pt``/``.bin``) are read with
``torch.load(..., weights_only=True)`` (nothing is unpickled), unwrapped from
``state_dict`` / ``model`` / ``module`` wrappers, and mapped to our keys by the
model's ``checkpoint_filter_fn``. Missing, unexpected and mismatched keys are
reported as a table, never silently ignored.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from msfusion.structured_files import read_mapping
from msfusion.version import __version__

__all__ = [
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "read_state_dict",
    "read_metadata",
    "atomic_write",
    "CLASSIFIER_PREFIXES",
    "adapt_layout",
    "upgrade_moved_keys",
]

# Parameters that legitimately change shape when fine-tuning to a new class count.
CLASSIFIER_PREFIXES = ("head.", "decode_head.conv_seg.", "auxiliary_head.", "head.fc.", "heads.")

_WRAPPERS = ("state_dict", "model", "module", "model_state", "state_dict_ema", "model_ema")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model."""


def atomic_write(path: str | Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``.

    If ``write`` raises, the temporary file is removed and any existing file at
    ``path`` is left intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; the file gets the mode the user's umask gives
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _metadata_path(path: Path) -> Path:
    return path.with_suffix(".json")


def _unrecordable(cfg: Any) -> str | None:
    """The reason a ``model_cfg`` cannot rebuild its model, searching nested parts; None if it can."""
    if isinstance(cfg, dict):
        if "__unrecordable__" in cfg:
            return str(cfg["__unrecordable__"])
        for value in cfg.values():
            problem = _unrecordable(value)
            if problem:
                return problem
    if isinstance(cfg, list):
        for value in cfg:
            problem = _unrecordable(value)
            if problem:
                return problem
    return None


def save_checkpoint(
    model: nn.Module,
    path: str | Path,
    *,
    metadata: dict[str, Any] | None = None,
    allow_unrebuildable: bool = False,
) -> Path:
    """Save weights as safetensors plus a JSON sidecar; returns the weights path.

    The sidecar records ``model.model_cfg`` (set by ``create_model`` and the
    ``build_*`` composers) so that ``msfusion.load_model(path)`` can rebuild the
    model, plus ``metadata``. A model whose description cannot be recorded
    (a part given as a module that was not built by name) is refused with the
    reason, unless ``allow_unrebuildable=True`` (the weights are then saved
    with no model description, and ``load_checkpoint`` into a model you build
    yourself is the way back). Weights holding NaN or infinite values are
    refused (``CheckpointError`` naming the tensors): they are never a model.
    """
    from safetensors.torch import save

    cfg = getattr(model, "model_cfg", None)
    problem = _unrecordable(cfg)
    if problem and not allow_unrebuildable:
        raise CheckpointError(
            f"cannot record how to rebuild this model: {problem}. Build every part by name "
            "(msfusion.create_model / build_segmentor with names and *_kwargs), or pass "
            "allow_unrebuildable=True to save the weights alone."
        )
    if problem:
        cfg = None
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path.with_suffix(".safetensors")
    # safetensors refuses shared or non-contiguous storage: store plain copies.
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    # NaN or infinite weights (a diverged run) would be loaded later as if they were a model.
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(
            f"refusing to save {path}: {len(bad)} tensor(s) hold NaN or infinite values ({', '.join(bad[:5])}"
            f"{', ...' if len(bad) > 5 else ''}); the weights diverged. Save the model from before it diverged "
            "(the last good checkpoint), or lower the learning rate and retrain."
        )
    meta = {
        "format": "msfusion",
        "version": __version__,
        "model": cfg,
        **(metadata or {}),
    }
    # Serialised in memory and written by Python, so a full disk raises OSError(ENOSPC), not a library error.
    data = save(tensors, metadata={"format": "pt"})
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    atomic_write(_metadata_path(path), lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2)))
    return path


# What ``addon="mscsa"`` built before it fitted the backbone: PVTv2-B1's Table 7 row on every map the
# backbone returned (ResNet's stride-2 stem included), whatever the backbone.
_MSCSA_OLD_DEFAULT = dict(
    pool_stride=32, squeeze_ratio=5 / 8, depth=1, num_heads=8, head_dim=24, mlp_ratio=2.0, in_strides="all"
)


def _with_old_mscsa_defaults(cfg: Any) -> Any:
    """A sidecar's model description with the MSCSA settings it was saved under made explicit.

    Sidecars written since ``addon="mscsa"`` fits its backbone record the
    resolved settings, ``in_strides`` among them. A recorded MSCSA add-on
    without ``in_strides`` was saved before, when the add-on always took the
    PVTv2-B1 row and read every map: those settings are filled in (the ones
    the user gave still win), so the checkpoint rebuilds the model it holds.
    """
    if isinstance(cfg, list):
        return [_with_old_mscsa_defaults(v) for v in cfg]
    if not isinstance(cfg, dict):
        return cfg
    out = {k: _with_old_mscsa_defaults(v) for k, v in cfg.items()}
    if out.get("addon") == "mscsa":  # a composer's kwargs: addon + addon_kwargs
        given = out.get("addon_kwargs") or {}
        if isinstance(given, dict) and "in_strides" not in given:
            out["addon_kwargs"] = {**_MSCSA_OLD_DEFAULT, **given}
    if out.get("name") == "mscsa" and isinstance(out.get("kwargs"), dict) and "in_strides" not in out["kwargs"]:
        out["kwargs"] = {**_MSCSA_OLD_DEFAULT, **out["kwargs"]}  # an add-on built by name, passed as a module
    return out


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON sidecar of one of our checkpoints ({} if there is none).

    The model description comes back as it rebuilds the saved model: settings
    that later versions changed the defaults of are made explicit (MSCSA's,
    see ``_with_old_mscsa_defaults``).
    """
    meta_path = _metadata_path(Path(path))
    if not meta_path.exists():
        return {}
    meta = read_mapping(meta_path, "checkpoint sidecar", error=CheckpointError)
    if meta.get("model"):
        meta["model"] = _with_old_mscsa_defaults(meta["model"])
    return meta


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a checkpoint file into a flat ``{name: tensor}`` dict, safely.

    safetensors files are read directly; anything else with
    ``torch.load(weights_only=True)`` and unwrapped from ``state_dict`` /
    ``model`` / ``module`` containers (mmcv, mmengine, timm, DeiT-style).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; pass the checkpoint file inside it")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"{path}: not a readable safetensors file ({err})") from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or unsafe files
        raise CheckpointError(
            f"{path}: could not be read as a PyTorch checkpoint with weights_only=True ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). Is the file complete and a state dict?"
        ) from err
    for _ in range(3):
        if isinstance(obj, dict):
            wrapper = next((k for k in _WRAPPERS if k in obj and isinstance(obj[k], dict)), None)
            if wrapper is None:
                break
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        found = type(obj).__name__
        if isinstance(obj, dict):
            found = f"a dict with keys {list(obj)[:8]}"
        raise CheckpointError(f"{path}: expected a state dict of tensors, found {found}")
    state = {k.removeprefix("module."): v for k, v in obj.items()}
    return state


def _table(rows: Iterable[tuple[str, str, str]], header: tuple[str, str, str]) -> str:
    rows = list(rows)
    widths = [max([len(header[i])] + [len(r[i]) for r in rows]) for i in range(3)]

    def line(cells: tuple[str, ...]) -> str:
        return "  " + "  ".join(cell.ljust(w) for cell, w in zip(cells, widths, strict=True))

    lines = [line(header), line(tuple("-" * w for w in widths))]
    lines += [line(r) for r in rows]
    return "\n".join(lines)


def _shape(t: Tensor) -> str:
    return "x".join(str(s) for s in t.shape) or "scalar"


def _is_timm_features(module: nn.Module | None) -> bool:
    # The timm adapter (models layer, which this module may not import) is recognised by its shape.
    return type(module).__name__ == "TimmFeatures" and isinstance(getattr(module, "model", None), nn.Module)


def _from_timm_layout(part: nn.Module, state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]] | None:
    """A timm model's own state dict (``timm.create_model(name)``) mapped onto its ``features_only`` wrapper.

    timm's feature wrappers flatten the first level of ``nn.Sequential``
    children (``stages.0`` becomes ``stages_0``) or nest the model once more
    (``model.blocks.0``), and msfusion's adapter adds ``model.``; keys are
    matched with ``_`` and ``.`` treated alike, and only unique matches
    count. torchvision ResNet files use timm ResNet's names, so they load
    the same way. Returns the mapped tensors and the file's keys the
    features-only model has no place for (the classifier, a final norm), or
    None when almost nothing matches.
    """
    index: dict[str, list[str]] = {}
    for key in state:
        index.setdefault(key.replace("_", "."), []).append(key)
    mapped: dict[str, Tensor] = {}
    used: set[str] = set()
    for key in part.state_dict():
        inner = key.removeprefix("model.")
        for candidate in (inner, inner.removeprefix("model.")):
            hits = index.get(candidate.replace("_", "."), [])
            if len(hits) == 1 and hits[0] not in used:
                mapped[key] = state[hits[0]]
                used.add(hits[0])
                break
    if len(mapped) < len(state) / 2:
        return None
    return mapped, [k for k in state if k not in used]


def upgrade_moved_keys(model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Keys of parts that moved since a checkpoint was saved -> today's keys.

    Every submodule with an ``upgrade_state_dict(state, prefix)`` method maps
    the keys it knows moved (``prefix`` is its own name in ``model`` plus a
    dot): CEDNet's detection pyramid, saved inside the backbone by msfusion
    0.1.0 and a neck since (``msfusion.models.necks.cednet_pyramid``).
    """
    for name, module in model.named_modules():
        upgrade = getattr(module, "upgrade_state_dict", None)
        if callable(upgrade):
            state = upgrade(state, f"{name}." if name else "")
    return state


def adapt_layout(
    model: nn.Module, state: dict[str, Tensor], path: str | Path = "", unused: dict[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """Bring a state dict of any supported layout to ``model``'s keys.

    In order: the model's ``checkpoint_filter_fn`` (official layouts); keys
    of parts that moved since (``upgrade_moved_keys``); a timm
    (or torchvision ResNet) classification file into a timm feature
    backbone; and a backbone's file (ours, official, timm) into the
    ``backbone.`` of a composed model. The file's tensors that the
    features-only backbone has no place for (its classifier) are dropped
    with a warning that names them, never silently; given an ``unused``
    dict, they are put there (under the file's names) instead of warned.
    """
    filter_fn = getattr(model, "checkpoint_filter_fn", None)
    if callable(filter_fn):
        state = filter_fn(state)
    state = upgrade_moved_keys(model, state)
    own = model.state_dict()
    if not state or sum(k in own for k in state) >= len(state) / 2:
        return state
    for part, prefix in ((model, ""), (getattr(model, "backbone", None), "backbone.")):
        if not isinstance(part, nn.Module):
            continue
        part_state = state
        part_filter = getattr(part, "checkpoint_filter_fn", None)
        if part is not model and callable(part_filter):
            part_state = part_filter(part_state)
        if part is not model:  # an official detector file's pyramid keys, under the backbone's name
            part_state = upgrade_moved_keys(part, part_state)
        part_keys = part.state_dict()
        leftover = [k for k in part_state if k not in part_keys]
        source = part_state
        if _is_timm_features(part) and len(leftover) > len(part_state) / 2:
            found = _from_timm_layout(part, part_state)
            if found is None:
                continue
            part_state, leftover = found
        if len(leftover) > len(part_state) / 2:
            continue
        if leftover and unused is not None:
            unused.update({k: source[k] for k in leftover})
        elif leftover:
            warnings.warn(
                f"{path}: {len(leftover)} tensor(s) of the file have no place in the features-only "
                f"{type(part).__name__} and were not used: {', '.join(leftover[:8])}"
                f"{'...' if len(leftover) > 8 else ''}",
                stacklevel=3,
            )
        return {prefix + k: v for k, v in part_state.items() if k in part_keys}
    return state


def load_checkpoint(model: nn.Module, path: str | Path, *, strict: bool = True) -> dict[str, list[str]]:
    """Load ours or an official checkpoint into ``model``.

    Args:
        model: the model to fill.
        path: ``.safetensors`` (ours) or an official ``.pth`` file.
        strict: every model key must be present and no extra key may exist.
            With ``strict=False`` (fine-tuning), classifier weights whose shape
            differs (another class count) are dropped with a warning, and
            missing / unexpected keys are reported in a warning.

    Returns:
        ``{"missing": [...], "unexpected": [...], "dropped": [...]}``.

    Raises:
        FileNotFoundError, CheckpointError: with a table of every missing,
        unexpected or mismatched key.
    """
    state = adapt_layout(model, read_state_dict(path), path)
    own = model.state_dict()
    backbone_only = bool(state) and all(k.startswith("backbone.") for k in state)
    # An encoder checkpoint (e.g. ImageNet MSCAN) loaded into a segmentor fills the backbone only.
    required = [k for k in own if k.startswith("backbone.")] if backbone_only else list(own)
    missing = [k for k in required if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in state if k in own and state[k].shape != own[k].shape]
    dropped: list[str] = []
    if not strict:
        dropped = [k for k in mismatched if k.startswith(CLASSIFIER_PREFIXES)]
        mismatched = [k for k in mismatched if k not in dropped]
    if mismatched or (strict and (missing or unexpected)):
        rows = [("missing", k, _shape(own[k])) for k in missing]
        rows += [("unexpected", k, _shape(state[k])) for k in unexpected]
        rows += [("mismatched", k, f"{_shape(state[k])} in file, {_shape(own[k])} in model") for k in mismatched]
        hint = (
            " Pass strict=False to fine-tune with another class count."
            if mismatched and all(k.startswith(CLASSIFIER_PREFIXES) for k in mismatched)
            else " Is this a checkpoint of the same model and variant?"
        )
        raise CheckpointError(
            f"{path} does not fit {type(model).__name__}: {len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(mismatched)} mismatched keys.{hint}\n" + _table(rows, ("problem", "key", "shape"))
        )
    if dropped:
        warnings.warn(
            f"{path}: dropped {len(dropped)} classifier tensor(s) whose shape differs (new class count): "
            + ", ".join(dropped),
            stacklevel=2,
        )
    if missing or unexpected:
        rows = [("missing", k, _shape(own[k])) for k in missing] + [
            ("unexpected", k, _shape(state[k])) for k in unexpected
        ]
        warnings.warn(
            f"{path}: loaded with strict=False, {len(missing)} missing and {len(unexpected)} unexpected keys:\n"
            + _table(rows, ("problem", "key", "shape")),
            stacklevel=2,
        )
    for k in dropped:
        del state[k]
    model.load_state_dict(state, strict=False)
    return {"missing": missing + dropped, "unexpected": unexpected, "dropped": dropped}
