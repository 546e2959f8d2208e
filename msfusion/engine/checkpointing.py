"""Training checkpoints: weights + optimiser/scheduler/RNG state, written so nothing is lost.

A training checkpoint at step ``n`` is three files in ``<work_dir>/checkpoints``:

- ``iter_<n>.safetensors`` + ``iter_<n>.json``: the model, via
  ``msfusion.save_checkpoint`` (usable on its own by eval/predict/export);
- ``iter_<n>.state.pt``: step, optimiser, scheduler, grad-scaler and RNG
  states and the training history, as plain dicts, lists, numbers and
  tensors, so it loads with ``torch.load(weights_only=True)`` (nothing is
  unpickled);
- ``latest.json``: which step to resume from, rewritten last.

Every file is written atomically (temporary file, then ``os.replace``) and
``latest.json`` only moves once both files of the new step exist, so a crash
or a full disk while writing leaves the previous checkpoint intact and
resumable; a failed write removes its partial files and says which
checkpoint is still good. ``best.safetensors`` holds the weights with the best
validation score.

Nothing already written is lost by accident: a new run refuses a work_dir
that holds checkpoints unless told to ``resume`` or ``overwrite``
(:func:`prepare_work_dir`); a missing or damaged ``latest.json`` makes resume
fall back to the newest complete ``iter_*`` checkpoint, never to step 0 on top
of existing files (:func:`latest_checkpoint`); weights with NaN or infinite
values are never written as a good checkpoint (:func:`non_finite_tensors`).
"""

from __future__ import annotations

import errno
import io
import json
import random
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from msfusion.checkpoint import (
    CheckpointError,
    atomic_write,
    read_metadata,
    save_checkpoint,
)

__all__ = [
    "capture_rng_state",
    "restore_rng_state",
    "existing_checkpoints",
    "prepare_work_dir",
    "save_training_checkpoint",
    "latest_checkpoint",
    "load_training_state",
    "check_same_model",
    "save_best",
    "non_finite_tensors",
    "check_finite_weights",
]


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states as weights_only-loadable values."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(mt), gauss],
        "numpy": [
            name,
            torch.from_numpy(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _ckpt_dir(work_dir: str | Path) -> Path:
    return Path(work_dir) / "checkpoints"


def existing_checkpoints(work_dir: str | Path) -> list[Path]:
    """Checkpoint files of a run already in ``work_dir`` (``latest.json``, ``iter_*``, ``best.*``), sorted."""
    folder = _ckpt_dir(work_dir)
    if not folder.is_dir():
        return []
    patterns = ("latest.json", "iter_*.safetensors", "iter_*.json", "iter_*.state.pt", "best.safetensors", "best.json")
    return sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})


def _names(paths: Sequence[Path], limit: int = 4) -> str:
    shown = ", ".join(p.name for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def prepare_work_dir(work_dir: str | Path, *, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse to start a new run on top of an old one; with ``overwrite``, clear the old one first.

    Args:
        work_dir: the run folder (``train.work_dir``).
        resume: the run continues from its checkpoints (nothing is cleared).
        overwrite: delete the old run's checkpoints and TensorBoard events, then start over.

    Raises:
        ValueError: ``work_dir`` is a file, or both ``resume`` and ``overwrite`` are set.
        CheckpointError: ``work_dir`` holds checkpoints and neither flag is set.
    """
    work = Path(work_dir)
    if work.exists() and not work.is_dir():
        raise ValueError(f"train.work_dir {work} is a file, not a folder; choose a folder path with --work-dir DIR")
    if resume and overwrite:
        raise ValueError("--resume continues the run in train.work_dir and --overwrite deletes it: give one of them")
    found = existing_checkpoints(work)
    if not found or resume:
        return
    if not overwrite:
        raise CheckpointError(
            f"{work} already holds a training run ({len(found)} checkpoint files: {_names(found)}); a new run "
            "would overwrite them. Continue it with --resume, train into another folder with --work-dir DIR, "
            "or start over here with --overwrite (deletes those checkpoints)."
        )
    for path in found + sorted((work / "tensorboard").glob("events.*")):
        path.unlink(missing_ok=True)


def _step_files(folder: Path, step: int) -> list[Path]:
    return [folder / f"iter_{step:07d}{suffix}" for suffix in (".safetensors", ".json", ".state.pt")]


def _write_error(err: OSError, path: Path, kept: str) -> CheckpointError:
    """The error of a failed checkpoint write: what filled up (disk, quota, file-size limit) and what is kept."""
    if err.errno == errno.EFBIG:
        return CheckpointError(
            f"the file-size limit was reached while writing {path} (EFBIG: the process's limit, ulimit -f / "
            f"RLIMIT_FSIZE, or the largest file the file system allows, 4 GiB on FAT32); {kept}. Raise the limit "
            "(ulimit -f unlimited) or train into another file system with --work-dir DIR, then use --resume."
        )
    if err.errno == errno.EDQUOT:
        return CheckpointError(
            f"the disk quota is exceeded while writing {path}; {kept}. Free space within your quota, then use --resume."
        )
    if err.errno == errno.ENOSPC:
        return CheckpointError(f"no space left while writing {path}; {kept}. Free disk space, then use --resume.")
    return CheckpointError(f"cannot write {path} ({err.strerror or err}); {kept}.")


def _intact_checkpoint(folder: Path, step: int | None = None) -> Path | None:
    """The weights a resume would use after a failed write of ``step``: latest.json's, else the newest complete."""
    pointed = _pointed_weights(folder)
    if pointed is not None:
        return pointed
    steps = sorted({int(p.name[5:12]) for p in folder.glob("iter_*.state.pt") if p.name[5:12].isdigit()}, reverse=True)
    for other in steps:
        weights, _, state = _step_files(folder, other)
        if other != step and _complete(weights, state):
            return weights
    return None


def _kept_message(folder: Path, step: int | None = None) -> str:
    previous = _intact_checkpoint(folder, step)
    return f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint was written"


def _write_bytes(path: str | Path, data: bytes | memoryview) -> None:
    with open(path, "wb") as handle:
        handle.write(data)


def _pointed_weights(folder: Path) -> Path | None:
    """The weights ``latest.json`` names, if it is readable and they exist."""
    try:
        weights = folder / json.loads((folder / "latest.json").read_text())["weights"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return weights if weights.is_file() else None


def save_training_checkpoint(
    work_dir: str | Path,
    step: int,
    model: nn.Module,
    state: dict[str, Any],
    metadata: dict[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Write the weights and training ``state`` of ``step``, then point ``latest.json`` at them.

    Args:
        work_dir: the run folder.
        step: optimiser steps done.
        model: the unwrapped model.
        state: optimiser, scheduler, RNG, history... (weights_only-loadable values).
        metadata: extra JSON for the weights' sidecar (classes, palette, config).
        keep: training checkpoints kept; older ones are deleted after the new one is complete.

    Returns:
        The weights path.
    """
    folder = _ckpt_dir(work_dir)
    folder.mkdir(parents=True, exist_ok=True)
    previous = _pointed_weights(folder)
    weights = folder / f"iter_{step:07d}.safetensors"
    state_path = folder / f"iter_{step:07d}.state.pt"
    current = weights
    try:
        save_checkpoint(model, weights, metadata={**(metadata or {}), "step": step})
        current = state_path
        buffer = io.BytesIO()
        torch.save({**state, "step": step}, buffer)
        # Written by Python, so a full disk raises OSError(ENOSPC) instead of torch's zip-writer error.
        atomic_write(state_path, lambda tmp: _write_bytes(tmp, buffer.getbuffer()))
        current = folder / "latest.json"
        pointer = {"step": step, "weights": weights.name, "state": state_path.name}
        atomic_write(current, lambda tmp: Path(tmp).write_text(json.dumps(pointer, indent=2)))
    except OSError as err:
        # A half-written step is worse than none: it would look resumable. latest.json still names the old one.
        if previous is None or previous.name != weights.name:
            for path in _step_files(folder, step):
                path.unlink(missing_ok=True)
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        raise _write_error(err, current, _kept_message(folder, step)) from err
    steps = sorted(int(p.name[5:12]) for p in folder.glob("iter_*.state.pt"))
    for old in steps[: max(len(steps) - keep, 0)]:
        if old == step:
            continue
        for path in _step_files(folder, old):
            path.unlink(missing_ok=True)
    return weights


def _complete(weights: Path, state: Path) -> bool:
    """Both files of a step exist and are whole (a readable safetensors header, a zip with its directory)."""
    if not (weights.is_file() and weights.with_suffix(".json").is_file() and state.is_file()):
        return False
    if not zipfile.is_zipfile(state):  # torch.save writes a zip; a truncated one has no central directory
        return False
    from safetensors import safe_open

    try:
        with safe_open(str(weights), "pt") as handle:
            handle.keys()
    except Exception:  # safetensors raises its own error types for truncated or corrupt files
        return False
    return True


def latest_checkpoint(work_dir: str | Path) -> tuple[Path, Path] | None:
    """(weights, state) to resume from, or None when the run has no checkpoint at all.

    ``latest.json`` names the step. When it is missing, damaged or names a
    missing file, the newest complete ``iter_*`` checkpoint is used instead
    (with a warning).

    Raises:
        CheckpointError: checkpoint files exist but none is complete, so
            resuming would start over on top of them.
    """
    folder = _ckpt_dir(work_dir)
    pointer_path = folder / "latest.json"
    problem = None
    if pointer_path.exists():
        try:
            pointer = json.loads(pointer_path.read_text())
            weights, state = folder / pointer["weights"], folder / pointer["state"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            problem = f"{pointer_path} is damaged ({type(err).__name__}: {err})"
        else:
            if _complete(weights, state):
                return weights, state
            problem = f"{pointer_path} names {weights.name} / {state.name}, which are missing or incomplete"
    steps = sorted({int(p.name[5:12]) for p in folder.glob("iter_*.state.pt") if p.name[5:12].isdigit()}, reverse=True)
    for step in steps:
        weights, _, state = _step_files(folder, step)
        if _complete(weights, state):
            if problem:
                warnings.warn(f"{problem}; resuming from the newest complete checkpoint, {weights.name}", stacklevel=2)
            return weights, state
    found = existing_checkpoints(work_dir)
    if found:
        reason = problem or f"no complete iter_* checkpoint is in {folder}"
        raise CheckpointError(
            f"cannot resume: {reason}, and no complete iter_* checkpoint (.safetensors + .json + .state.pt) "
            f"remains, while {folder} holds {_names(found)}. Starting over would overwrite them: train into "
            "another folder with --work-dir DIR, or start over here with --overwrite."
        )
    return None


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Read a ``.state.pt`` file with ``weights_only=True``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for damaged files
        raise CheckpointError(f"{path}: cannot read training state ({type(err).__name__}: {err})") from err


def check_same_model(weights: str | Path, model: nn.Module) -> None:
    """Refuse to resume from a checkpoint of another model or variant (clear message, no partial load)."""
    saved = read_metadata(weights).get("model") or {}
    own = getattr(model, "model_cfg", None) or {}
    if saved and own and (saved.get("name") != own.get("name") or saved.get("kwargs") != own.get("kwargs")):
        raise CheckpointError(
            f"{weights} was written by model {saved.get('name')!r} with {saved.get('kwargs')}, but this recipe "
            f"builds {own.get('name')!r} with {own.get('kwargs')}. Resume with the recipe that wrote it, or use "
            "another train.work_dir."
        )


def save_best(work_dir: str | Path, model: nn.Module, metadata: dict[str, Any]) -> Path:
    """Write ``checkpoints/best.safetensors`` (+ sidecar) atomically; a failed write keeps the old best."""
    path = _ckpt_dir(work_dir) / "best.safetensors"
    previous = path if path.is_file() else None
    try:
        return save_checkpoint(model, path, metadata=metadata)
    except OSError as err:
        for tmp in path.parent.glob(".best.*.tmp"):
            tmp.unlink(missing_ok=True)
        kept = f"the previous best checkpoint {previous} is intact" if previous else "no best checkpoint existed yet"
        training = _intact_checkpoint(path.parent)
        if training is not None:
            kept += f", and the training checkpoint {training} is intact"
        raise _write_error(err, path, kept) from err


def non_finite_tensors(model: nn.Module) -> list[str]:
    """Names of floating-point parameters and buffers holding NaN or infinite values."""
    return [
        name
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())
    ]


def check_finite_weights(model: nn.Module, source: str | Path) -> None:
    """Refuse to evaluate or predict with weights holding NaN or infinite values (a diverged run).

    Raises:
        CheckpointError: naming ``source`` and the first bad tensors.
    """
    bad = non_finite_tensors(model)
    if bad:
        raise CheckpointError(
            f"{source}: {len(bad)} tensor(s) hold NaN or infinite values ({', '.join(bad[:5])}"
            f"{', ...' if len(bad) > 5 else ''}); the run had diverged, so every score or prediction would be NaN "
            "or empty. Use an earlier checkpoint of the run (iter_*.safetensors, best.safetensors)."
        )
