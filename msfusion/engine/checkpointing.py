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
resumable. ``best.safetensors`` holds the weights with the best validation
score.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from msfusion.checkpoint import CheckpointError, atomic_write, read_metadata, save_checkpoint

__all__ = [
    "capture_rng_state",
    "restore_rng_state",
    "save_training_checkpoint",
    "latest_checkpoint",
    "load_training_state",
    "check_same_model",
    "save_best",
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
    weights = save_checkpoint(
        model, folder / f"iter_{step:07d}.safetensors", metadata={**(metadata or {}), "step": step}
    )
    state_path = folder / f"iter_{step:07d}.state.pt"
    atomic_write(state_path, lambda tmp: torch.save({**state, "step": step}, tmp))
    pointer = {"step": step, "weights": weights.name, "state": state_path.name}
    atomic_write(folder / "latest.json", lambda tmp: Path(tmp).write_text(json.dumps(pointer, indent=2)))
    steps = sorted(int(p.name[5:12]) for p in folder.glob("iter_*.state.pt"))
    for old in steps[: max(len(steps) - keep, 0)]:
        if old == step:
            continue
        for suffix in (".safetensors", ".json", ".state.pt"):
            (folder / f"iter_{old:07d}{suffix}").unlink(missing_ok=True)
    return weights


def latest_checkpoint(work_dir: str | Path) -> tuple[Path, Path] | None:
    """(weights, state) named by ``latest.json``, or None when the run has no checkpoint yet."""
    folder = _ckpt_dir(work_dir)
    pointer_path = folder / "latest.json"
    if not pointer_path.exists():
        return None
    try:
        pointer = json.loads(pointer_path.read_text())
        weights, state = folder / pointer["weights"], folder / pointer["state"]
    except (json.JSONDecodeError, KeyError) as err:
        raise CheckpointError(f"{pointer_path} is damaged ({err}); delete it to resume from an iter_* file") from err
    for path in (weights, state):
        if not path.exists():
            raise CheckpointError(f"{pointer_path} names {path.name}, which is missing")
    return weights, state


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
    """Write ``checkpoints/best.safetensors`` (+ sidecar) atomically."""
    return save_checkpoint(model, _ckpt_dir(work_dir) / "best.safetensors", metadata=metadata)
