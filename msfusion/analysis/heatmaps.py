"""Activation heatmaps of a FINE fusion stage: F_high, F_low, M and the aligned F_low (FINE Fig. 8).

Paper: "Context-Guided Semantic Alignment for Feature Fusion Networks"
(FINE), arXiv 2606.14005, Sec. 5.4 "Activation Heatmap" and Fig. 8 (shown at
the l = 3 fusion stage, where F_low is at stride 16 and F_high at stride 32).

The maps are captured with a forward hook on the chosen ``FINE`` module while
the whole model runs once on the image (eval mode, no gradient): the hook
receives F_low and F_high, and the module's own ``modulation_map`` gives M for
the same inputs. Each map is shown as its mean over channels, min-max scaled
to [0, 1], upsampled bilinearly to the image and laid over it (brighter is a
larger activation).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msfusion.models.necks.fine import FINE

__all__ = ["MAP_NAMES", "capture_fine_maps", "fine_modules", "save_fine_heatmaps"]

MAP_NAMES = ("high", "low", "modulation", "aligned")
_TITLES = {"high": "F_high", "low": "F_low", "modulation": "M (modulation map)", "aligned": "F_low aligned"}


def fine_modules(model: nn.Module) -> list[FINE]:
    """The FINE modules of a model that compute a modulation (``modulation != "none"``), in build order."""
    return [m for m in model.modules() if isinstance(m, FINE) and m.modulation != "none"]


def _select(model: nn.Module, low_stride: int | None) -> FINE:
    modules = fine_modules(model)
    if not modules:
        raise ValueError(
            f"{type(model).__name__} contains no FINE module with a modulation; use a model built with FINE "
            "(e.g. msfusion.create_model('semantic_fpn_r50_fine'))"
        )
    if low_stride is None:
        # Fig. 8 shows the l = 3 stage (F_low at stride 16) when the model has it.
        by_stride = {m.low_stride: m for m in modules}
        return by_stride.get(16, modules[0])
    for m in modules:
        if m.low_stride == low_stride:
            return m
    raise ValueError(f"no FINE module with F_low at stride {low_stride}; there are {[m.low_stride for m in modules]}")


def capture_fine_maps(model: nn.Module, image: Tensor, *, low_stride: int | None = None) -> dict[str, Tensor]:
    """Run ``model`` on one image and return the maps of one FINE stage.

    Args:
        model: any module containing ``FINE`` (a segmentor, a detector backbone with an FPN, a neck).
        image: (3, H, W) or (1, 3, H, W), normalised as the model expects.
        low_stride: the FINE stage, by the stride of its F_low; default 16
            (the l = 3 stage of Fig. 8) when present, else the first.

    Returns:
        ``{"high": (C, h, w), "low": (C, H', W'), "modulation": (C, H', W'),
        "aligned": (C, H', W')}`` float32 on the CPU, plus ``"low_stride"`` and
        ``"high_stride"`` as 0-d tensors.
    """
    module = _select(model, low_stride)
    x = image.unsqueeze(0) if image.dim() == 3 else image
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"image must be (3, H, W) or (1, 3, H, W), got shape {tuple(image.shape)}")
    captured: dict[str, Tensor] = {}

    def hook(mod: FINE, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        if captured:  # the first call only (a model may reuse the module)
            return
        low, high = inputs[0], inputs[1]
        captured["low"], captured["high"], captured["aligned"] = low[0], high[0], output[0]
        captured["modulation"] = mod.modulation_map(low, high)[0]

    was_training = model.training
    model.eval()
    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
        model.train(was_training)
    if not captured:
        raise ValueError("the selected FINE module was not called by the model's forward pass")
    out = {k: v.detach().float().cpu() for k, v in captured.items()}
    out["low_stride"] = torch.tensor(module.low_stride)
    out["high_stride"] = torch.tensor(module.high_stride)
    return out


def _heat(t: Tensor, stride: int, size: tuple[int, int]) -> np.ndarray:
    """(C, h, w) map -> (H, W) in [0, 1]: channel mean, cropped to the image (padding is bottom/right), scaled."""
    m = t.mean(0)
    rows, cols = -(-size[0] // stride), -(-size[1] // stride)
    m = m[: max(1, min(rows, m.shape[0])), : max(1, min(cols, m.shape[1]))]
    m = F.interpolate(m[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
    lo, hi = float(m.min()), float(m.max())
    return ((m - lo) / (hi - lo)).numpy() if hi > lo else np.zeros(size, np.float32)


def save_fine_heatmaps(
    images: Sequence[np.ndarray],
    maps: Sequence[dict[str, Tensor]],
    path: str | Path,
    *,
    title: str = "",
    alpha: float = 0.55,
) -> Path:
    """Write Fig. 8 as one PNG grid: a row per image; image, F_high, F_low, M, F_low aligned.

    Args:
        images: (H, W, 3) uint8 RGB images, in the order of ``maps``.
        maps: results of ``capture_fine_maps``.
        path: the PNG to write.
        title: figure title.
        alpha: opacity of the heatmaps over the image.
    """
    from matplotlib.figure import Figure

    if len(images) != len(maps) or not images:
        raise ValueError(f"give one map set per image ({len(images)} images, {len(maps)} map sets)")
    h0, w0 = images[0].shape[:2]
    cols = 1 + len(MAP_NAMES)
    fig = Figure(figsize=(2.6 * cols, 2.6 * len(images) * h0 / w0 + 0.7), layout="constrained")
    axes = fig.subplots(len(images), cols, squeeze=False)
    for row, (image, m) in enumerate(zip(images, maps, strict=True)):
        size = image.shape[:2]
        axes[row][0].imshow(image)
        axes[row][0].set_title("image", fontsize=9)
        for col, name in enumerate(MAP_NAMES, start=1):
            stride = int(m["high_stride"] if name == "high" else m["low_stride"])
            a = axes[row][col]
            a.imshow(image)
            a.imshow(_heat(m[name], stride, size), cmap="jet", alpha=alpha, vmin=0, vmax=1)
            a.set_title(f"{_TITLES[name]} (stride {stride})", fontsize=9)
        for a in axes[row]:
            a.set_axis_off()
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
