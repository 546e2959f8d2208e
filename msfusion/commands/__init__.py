"""Sub-commands of the ``msfusion`` command line, one module each, and the options and checks they share.

An option that several commands take is registered here once (``add_*``),
so that its spelling, default and help read the same in every command.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "add_analysis_args",
    "add_device_option",
    "add_progress_option",
    "add_recipe_options",
    "add_threads_option",
    "build_analysis_model",
    "checkpoint_file",
    "int_pair",
    "output_folder",
    "recipe_overrides",
    "set_threads",
]

# The recipe commands' options that stand for one ``--set`` value: dest -> ``key=value`` ({} takes the value).
_RECIPE_SHORTCUTS = {"device": "train.device={}", "no_progress": "train.progress=false"}


def checkpoint_file(text: str) -> str:
    """``--checkpoint``: an existing file (a missing path or a folder is named as such)."""
    path = Path(text)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.safetensors"))
        hint = f"; it holds {', '.join(found[:4])}" if found else ""
        raise ValueError(f"--checkpoint {path} is a folder; pass the checkpoint file inside it{hint}")
    if not path.exists():
        raise FileNotFoundError(f"--checkpoint {path}: no such file")
    return text


def int_pair(text: str, option: str, example: str) -> list[int]:
    """Two positive integers written ``A,B`` (``--slide 512,341``, ``--resize 2048,512``)."""
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 2 or min(values) < 1:
        raise ValueError(f"{option} expects two positive integers like {example}, got {text!r}")
    return values


def output_folder(text: str, option: str = "--out") -> Path:
    """An output folder: may not exist yet, but must not be a file."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} is an existing file; give a folder path (it is created if missing)")
    return path


def add_progress_option(p: argparse.ArgumentParser) -> None:
    """``--no-progress``: no progress bar (``args.no_progress``)."""
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs and scripts)")


def add_device_option(p: argparse.ArgumentParser) -> None:
    """``--device``: the torch device a model runs on, ``cpu`` by default."""
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N (default cpu)")


def add_threads_option(p: argparse.ArgumentParser) -> None:
    """``--threads N``: CPU threads for torch, applied by :func:`set_threads`."""
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads; default: torch's)")


def set_threads(threads: int | None) -> None:
    """Apply ``--threads`` (None: torch's choice).

    Raises:
        ValueError: fewer than one thread.
    """
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    import torch

    torch.set_num_threads(threads)


def add_recipe_options(p: argparse.ArgumentParser, set_help: str, device: bool = True) -> None:
    """The options of the commands that run a YAML recipe (``train``, ``eval``, ``demo``).

    ``--set KEY=VALUE`` (repeatable, ``args.overrides``) changes a recipe value;
    ``--no-progress`` and, with ``device``, ``--device`` are shortcuts for one
    ``--set`` each (:func:`recipe_overrides`).
    """
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    if device:
        p.add_argument(
            "--device",
            choices=("auto", "cpu", "cuda"),
            help="auto, cpu or cuda (default: the recipe's train.device); under torchrun each rank takes its GPU",
        )
    add_progress_option(p)


def recipe_overrides(args: argparse.Namespace, shortcuts: Mapping[str, str]) -> list[str]:
    """The ``--set`` values, then one per shortcut option given (so a shortcut wins over ``--set``).

    Args:
        args: parsed options of a command built with :func:`add_recipe_options`.
        shortcuts: the command's own shortcuts, ``{dest: "key=value"}`` where
            ``{}`` takes the option's value (``{"seed": "train.seed={}"}``);
            ``--device`` and ``--no-progress`` are added here.
    """
    overrides = list(args.overrides)
    for dest, setting in {**shortcuts, **_RECIPE_SHORTCUTS}.items():
        value = getattr(args, dest, None)
        if value is None or value is False or value == "":
            continue  # not given (a seed of 0 is given)
        overrides.append(setting.format(value))
    return overrides


def add_analysis_args(p: argparse.ArgumentParser, model_help: str, num_classes: bool = True) -> None:
    """The arguments the analysis commands (``erf``, ``gradmap``, ``heatmap``) share.

    A model, images (``--size`` resizes them), an output folder, weights,
    the device and, with ``num_classes``, the head's class count.
    """
    from msfusion.commands.flops import parse_size

    p.add_argument("model", help=model_help)
    p.add_argument("--image", nargs="+", required=True, type=Path, help="image file(s)")
    p.add_argument("--out", required=True, type=Path, help="output folder (created)")
    p.add_argument("--checkpoint", type=Path, default=None, help="weights to load (ours or an official file)")
    if num_classes:
        p.add_argument("--num-classes", type=int, default=None, help="classes of the head (default: the variant's)")
    p.add_argument("--size", type=parse_size, default=None, help="resize images to HxW first")
    add_device_option(p)


def build_analysis_model(args: argparse.Namespace) -> Any:
    """``args.model`` with ``args.checkpoint`` loaded, on ``args.device``.

    One of our checkpoints describes the variant it was trained as (its JSON sidecar): that variant is
    built, so that e.g. a demo model's head options match its weights.
    """
    import torch

    import msfusion as mf
    from msfusion.checkpoint import read_metadata

    saved = (read_metadata(args.checkpoint).get("model") or {}) if args.checkpoint is not None else {}
    kwargs = dict(saved.get("kwargs", {})) if saved.get("name") == args.model else {}
    if args.num_classes is not None:
        kwargs["num_classes"] = args.num_classes
    model = mf.create_model(args.model, **kwargs)
    if args.checkpoint is not None:
        mf.load_checkpoint(model, args.checkpoint)
    return model.to(torch.device(args.device))
