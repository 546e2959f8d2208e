"""Input-gradient maps and the area of the "important region" (CEDNet Appendix B, Fig. 4-5).

Paper: CEDNet (arXiv 2302.06052), Appendix B "Further analysis": images are
fed to trained detectors, the loss is back-propagated to the input, and "the
important region [is] the region where the absolute gradient is greater than
t"; Fig. 5 plots the average area of that region against t, "normalized ...
for better visualization" on both axes.

Definitions used here:

- gradient map: ``G[h, w] = sum_c |d loss / d x[c, h, w]|``, the absolute
  gradient of the loss with respect to the (normalised) network input, summed
  over the colour channels; the model runs in eval mode (no dropout, no drop
  path, BN running statistics) so the map depends on the image only;
- loss: the paper's "total detection loss" against annotations. Here: the
  mean per-pixel cross-entropy for segmentors (logits (B, K, H, W)) and the
  cross-entropy for classifiers (logits (B, K)), against ``target`` when one
  is given and otherwise against the model's own prediction (argmax), or any
  scalar given by ``loss_fn`` (e.g. the summed loss dict of a torchvision
  detector in training mode);
- important-region area at threshold t: the fraction of pixels with
  ``G / max(G) > t`` (thresholds on the max-normalised map, so t in [0, 1]
  and areas in [0, 1], the paper's normalised axes); ``normalize=False``
  compares the raw gradient with t.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msfusion.analysis.figures import clip_for_display
from msfusion.engine.visualize import save_figure

__all__ = [
    "IGNORE_INDEX",
    "important_region_area",
    "input_gradient_map",
    "save_area_curve",
    "save_gradient_map_figure",
]

IGNORE_INDEX = 255

LossFn = Callable[[nn.Module, Tensor], Tensor]


def _default_loss(output: Tensor, target: Tensor | None) -> Tensor:
    """Cross-entropy of logits against ``target`` or the argmax prediction, summed over images."""
    if not isinstance(output, Tensor) or output.dim() not in (2, 4):
        raise ValueError(
            "input_gradient_map needs logits (B, K) from a classifier or (B, K, H, W) from a "
            f"segmentor, got {type(output).__name__}"
            + (f" of shape {tuple(output.shape)}" if isinstance(output, Tensor) else "")
            + ". For other models pass loss_fn=lambda model, x: <scalar loss>."
        )
    if target is None:
        target = output.detach().argmax(1)
    else:
        target = target.to(output.device).long()
        if output.dim() == 4 and target.dim() == 2:
            target = target.unsqueeze(0)
        if output.dim() == 2 and target.dim() == 0:
            target = target.unsqueeze(0)
        expected = (output.shape[0], *output.shape[2:])
        if tuple(target.shape) != expected:
            raise ValueError(f"target shape {tuple(target.shape)} does not fit the model output: expected {expected}")
    if output.dim() == 2:
        return F.cross_entropy(output.float(), target, reduction="sum")
    # Mean over each image's pixels, summed over images: every image's map equals
    # the one it would get alone.
    loss = F.cross_entropy(output.float(), target, ignore_index=IGNORE_INDEX, reduction="none")
    valid = (target != IGNORE_INDEX).flatten(1).sum(1).clamp(min=1)
    return (loss.flatten(1).sum(1) / valid).sum()


def input_gradient_map(
    model: nn.Module,
    image: Tensor,
    target: Tensor | None = None,
    *,
    loss_fn: LossFn | None = None,
) -> Tensor:
    """|d loss / d input| summed over channels.

    Args:
        model: a segmentor (-> (B, K, H, W)) or a classifier (-> (B, K)); any
            model with ``loss_fn``. It is put in eval mode for the call and
            restored afterwards; its parameters get no gradient.
        image: (3, H, W) or (B, 3, H, W), normalised as the model expects.
        target: class indices: (H, W) or (B, H, W) for a segmentor (255 is
            ignored), () or (B,) for a classifier; None uses the model's own
            prediction.
        loss_fn: ``loss_fn(model, x) -> scalar`` replacing the default loss
            (then ``target`` is not used).

    Returns:
        (H, W) for a single image, (B, H, W) for a batch; float32, non-negative,
        on the image's device.
    """
    single = image.dim() == 3
    x = image.unsqueeze(0) if single else image
    if x.dim() != 4:
        raise ValueError(f"image must be (3, H, W) or (B, 3, H, W), got shape {tuple(image.shape)}")
    x = x.detach().float().clone().requires_grad_(True)
    was_training = model.training
    grad_flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            loss = loss_fn(model, x) if loss_fn is not None else _default_loss(model(x), target)
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                raise ValueError("the loss must be a scalar tensor")
            (grad,) = torch.autograd.grad(loss, x)
    finally:
        model.train(was_training)
        for p, flag in zip(model.parameters(), grad_flags, strict=True):
            p.requires_grad_(flag)
    grad_map = grad.abs().sum(1)
    return grad_map[0] if single else grad_map


def important_region_area(
    grad_map: Tensor, thresholds: Sequence[float] | Tensor, *, normalize: bool = True
) -> list[float]:
    """Fraction of pixels whose gradient exceeds each threshold (Appendix B, Fig. 5).

    Args:
        grad_map: (H, W) non-negative map from ``input_gradient_map``.
        thresholds: values of t; with ``normalize`` they apply to
            ``grad_map / grad_map.max()`` and lie in [0, 1].
        normalize: divide by the map's maximum first (the paper's normalised axis).

    Returns:
        One area in [0, 1] per threshold; non-increasing in t. An all-zero map
        has area 0 everywhere.
    """
    if grad_map.dim() != 2:
        raise ValueError(f"grad_map must be (H, W), got shape {tuple(grad_map.shape)}")
    g = grad_map.detach().float().flatten()
    if normalize:
        peak = g.max()
        g = g / peak if peak > 0 else torch.zeros_like(g)
    t = torch.as_tensor(thresholds, dtype=torch.float32, device=g.device).flatten()
    return (g[None, :] > t[:, None]).float().mean(1).tolist()


def save_gradient_map_figure(
    image: np.ndarray,
    grad_map: Tensor | np.ndarray,
    path: str | Path,
    *,
    title: str = "",
    clip_percentile: float = 99.5,
    alpha: float = 0.6,
) -> Path:
    """Write a PNG with three panels: the image, the gradient map, the map over the image.

    Args:
        image: (H, W, 3) uint8 RGB, the image the map was computed on.
        grad_map: (H, W) map from ``input_gradient_map``.
        path: the PNG to write.
        title: figure title.
        clip_percentile: the colour scale saturates at this percentile of the map
            (display only; brighter is a larger gradient, as in Fig. 4).
        alpha: opacity of the heatmap in the overlay.
    """
    from matplotlib.figure import Figure

    g = grad_map.detach().float().cpu().numpy() if isinstance(grad_map, Tensor) else np.asarray(grad_map, np.float32)
    if g.shape != image.shape[:2]:
        raise ValueError(f"grad_map {g.shape} and image {image.shape[:2]} differ in size")
    shown = clip_for_display(g, clip_percentile)
    h, w = g.shape
    fig = Figure(figsize=(3 * 4.0, 4.0 * h / w + 0.6), layout="constrained")
    axes = fig.subplots(1, 3)
    axes[0].imshow(image)
    axes[0].set_title("image")
    im = axes[1].imshow(shown, cmap="inferno", vmin=0, vmax=1)
    axes[1].set_title(f"|d loss / d input| (clipped at p{clip_percentile:g})")
    axes[2].imshow(image)
    axes[2].imshow(shown, cmap="inferno", vmin=0, vmax=1, alpha=alpha)
    axes[2].set_title("overlay")
    for ax in axes:
        ax.set_axis_off()
    fig.colorbar(im, ax=axes[1], fraction=0.046, pad=0.02)
    return save_figure(fig, path, title=title, dpi=100, tight=False)


def save_area_curve(
    thresholds: Sequence[float],
    curves: dict[str, Sequence[float]],
    path: str | Path,
    *,
    title: str = "",
) -> Path:
    """Write the important-region area against the threshold as a PNG (Fig. 5).

    Args:
        thresholds: normalised thresholds t (x axis).
        curves: label -> areas, one per threshold (e.g. one per image and "mean").
        path: the PNG to write.
        title: figure title.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 4.0), layout="constrained")
    ax = fig.subplots()
    for label, areas in curves.items():
        bold = label == "mean" or len(curves) == 1
        ax.plot(
            thresholds,
            areas,
            label=label,
            linewidth=2.0 if bold else 1.0,
            alpha=1.0 if bold else 0.6,
        )
    ax.set_xlabel("gradient threshold t (normalised by the map's maximum)")
    ax.set_ylabel("area of the important region (fraction of pixels)")
    ax.set_xlim(min(thresholds), max(thresholds))
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    return save_figure(fig, path, dpi=100, tight=False)
