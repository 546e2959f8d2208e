"""SegNeXt / MSCAN checkpoint key layouts (official SegNeXt repo and mmsegmentation 1.x).

Two official layouts exist and differ in one key only:

- original SegNeXt repo (and its Tsinghua-cloud weights): ``mlp.dwconv.dwconv.*``
- mmsegmentation 1.x (PR #2653, ``mscan_*_20230227``): ``mlp.dwconv.*``

msfusion uses the mmseg-1.x names. Segmentor checkpoints carry ``backbone.``
and ``decode_head.`` prefixes, which our segmentor's module names equal.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["LAYOUTS", "from_official", "to_official", "detect_layout"]

LAYOUTS = ("original", "mmseg")
_ORIGINAL = ".mlp.dwconv.dwconv."
_MMSEG = ".mlp.dwconv."


def detect_layout(state_dict: dict[str, Tensor]) -> str:
    """``"original"`` if any key uses the nested DWConv wrapper, else ``"mmseg"``."""
    return "original" if any(_ORIGINAL in k for k in state_dict) else "mmseg"


def from_official(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename an official (either layout) state dict to our keys."""
    return {k.replace(_ORIGINAL, _MMSEG): v for k, v in state_dict.items()}


def to_official(state_dict: dict[str, Tensor], layout: str = "original") -> dict[str, Tensor]:
    """Rename our keys to an official layout (for exporting weights, and for tests)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "mmseg":
        return dict(state_dict)
    return {k.replace(_MMSEG, _ORIGINAL): v for k, v in state_dict.items()}
