"""Writing results: one JSON form of metrics for every task.

Metrics hold NaN where a number is undefined (an IoU of a class absent from
labels and predictions, an AP of a size range without objects); JSON has no
NaN, so they are written as ``null``. Every task's metric files go through
:func:`json_safe`, so a reader sees the same convention everywhere.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["json_safe", "write_json"]


def json_safe(value: Any) -> Any:
    """``value`` with every NaN float replaced by None, through nested dicts, lists and tuples."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: str | Path, value: Any, indent: int | None = 1) -> Path:
    """Write ``json_safe(value)`` to ``path`` atomically (a reader never sees half a file); returns the path."""
    from msfusion.checkpoint import atomic_write

    path = Path(path)
    text = json.dumps(json_safe(value), indent=indent)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    return path
