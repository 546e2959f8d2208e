"""Segmentation and classification heads, built by name with ``build_head``."""

from __future__ import annotations

import difflib
import importlib
from typing import Any

from torch import nn

from msfusion.models.heads.ham import DecodeHead, LightHamHead

__all__ = ["DecodeHead", "LightHamHead", "HEADS", "build_head"]

# name -> "module:Class"; imported on demand so that each head stays one small file.
HEADS = {
    "ham": "msfusion.models.heads.ham:LightHamHead",
    "mlp": "msfusion.models.heads.mlp:MLPHead",
    "msca": "msfusion.models.heads.msca_head:MSCAHead",
    "uper": "msfusion.models.heads.uper:UPerHead",
    "fcn": "msfusion.models.heads.fcn:FCNHead",
}


def build_head(name: str, **kwargs: Any) -> nn.Module:
    """Build a decode head by name (see ``HEADS``); kwargs go to its constructor."""
    if name not in HEADS:
        close = difflib.get_close_matches(name, list(HEADS), n=3)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown head {name!r}; choose one of {sorted(HEADS)}.{hint}")
    module, cls = HEADS[name].split(":")
    return getattr(importlib.import_module(module), cls)(**kwargs)
