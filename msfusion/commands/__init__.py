"""Sub-commands of the ``msfusion`` command line, one module each, and the argument checks they share."""

from __future__ import annotations

from pathlib import Path

__all__ = ["checkpoint_file", "int_pair", "output_folder"]


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
