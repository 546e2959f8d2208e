"""Sub-commands of the ``msfusion`` command line, one module each, and the argument checks they share."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["add_analysis_args", "build_analysis_model", "checkpoint_file", "int_pair", "output_folder"]


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


def add_analysis_args(p: argparse.ArgumentParser, model_help: str) -> None:
    """The arguments the analysis commands (``gradmap``, ``heatmap``) share: a model, images, an output folder."""
    p.add_argument("model", help=model_help)
    p.add_argument("--image", nargs="+", required=True, type=Path, help="image file(s)")
    p.add_argument("--out", required=True, type=Path, help="output folder (created)")
    p.add_argument("--checkpoint", type=Path, default=None, help="weights to load (ours or an official file)")
    p.add_argument("--num-classes", type=int, default=None, help="classes of the head (default: the variant's)")


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
