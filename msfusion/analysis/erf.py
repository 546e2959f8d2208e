"""Effective receptive fields (ERF): gradient maps, Gaussian sigma, FINE's sampled tokens.

Paper: "Context-Guided Semantic Alignment for Feature Fusion Networks"
(FINE), arXiv 2606.14005: Sec. 5.3.2 (Fig. 6) and Appendix F (Eq. 11-13,
Fig. 10), after Luo et al., "Understanding the Effective Receptive Field in
Deep Convolutional Neural Networks" (NeurIPS 2016).

Definitions used here:

- ERF map (Eq. 11): ``g[u, v] = |d y_ij / d x[u, v]|`` for one feature
  location (i, j). ``y_ij`` is the sum over channels of the feature map at
  (i, j) (all channels back-propagate a gradient of 1, as Luo et al. do), and
  the absolute gradient is summed over the colour channels of the
  (normalised) input. The model runs in eval mode. An image whose size the
  backbone does not take is zero-padded at the bottom and right to its
  ``size_divisor``; locations and token grids refer to the image itself.
- Gaussian sigma (Eq. 12): ``g ~ a * exp(-|(u, v) - mu|^2 / (2 sigma^2))``,
  fitted by least squares (Levenberg-Marquardt on a, mu, log sigma, the map
  scaled to a unit peak) from the moment estimate
  ``sigma^2 = sum g |p - mu|^2 / (2 sum g)``; sigma, in input pixels, is the
  ERF size.
- Per-stage sigma (App. F): sigma at the central location of the last map of
  each backbone stage, averaged over images (E[sigma]); the ratio
  E[sigma_high] / E[sigma_low] between adjacent stages approximates their
  stride ratio (Eq. 13; the paper measures 2.29 on average for ResNet-50 over
  COCO val2017, against a stride ratio of 2).
- Sampled-token ERFs (Fig. 6): the ERF of one token of FINE's Alignment-Aware
  Token Sampling, ``Down(F_high, k)`` and ``Down(F_low, r*k)``, at a
  normalised anchor (0.1, 0.1) of the token grid, so that the same image point
  is the reference at every resolution; r = 2 makes the two ERFs cover the same
  region.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from msfusion.analysis.figures import clip_for_display
from msfusion.engine.visualize import save_figure
from msfusion.models.align.fine import DOWNSAMPLERS, AlignmentAwareTokenSampling, default_kernel

__all__ = [
    "erf_map",
    "fit_gaussian_sigma",
    "save_sampled_token_erf_figure",
    "save_stage_erf_figure",
    "sampled_token_erfs",
    "stage_erf_maps",
    "stage_sigmas",
]

FeatureFn = Callable[[Tensor], Tensor]


def _as_batch(image: Tensor) -> Tensor:
    x = image.unsqueeze(0) if image.dim() == 3 else image
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"image must be (C, H, W) or (1, C, H, W), got shape {tuple(image.shape)}")
    return x


def erf_map(feature_fn: FeatureFn, image: Tensor, location: tuple[int, int] | None = None) -> Tensor:
    """Eq. 11: ``|d y_ij / d x|`` summed over the input's colour channels.

    Args:
        feature_fn: maps the image (1, C_in, H, W) to a feature map (1, C, h, w).
        image: (C_in, H, W) or (1, C_in, H, W), normalised as the model expects.
        location: (i, j) on the feature map; default the centre (h // 2, w // 2).

    Returns:
        (H, W) float32, non-negative.
    """
    x = _as_batch(image).detach().float().clone().requires_grad_(True)
    with torch.enable_grad():
        y = feature_fn(x)
        if not isinstance(y, Tensor) or y.dim() != 4:
            raise ValueError(f"feature_fn must return a (1, C, h, w) map, got {type(y).__name__}")
        h, w = y.shape[-2:]
        i, j = (h // 2, w // 2) if location is None else location
        if not (0 <= i < h and 0 <= j < w):
            raise ValueError(f"location {(i, j)} lies outside the {h}x{w} feature map")
        (grad,) = torch.autograd.grad(y[0, :, i, j].sum(), x)
    return grad.abs().sum(1)[0].float()


def fit_gaussian_sigma(g: Tensor | np.ndarray, *, steps: int = 100) -> tuple[float, tuple[float, float]]:
    """Eq. 12: fit an isotropic 2-D Gaussian to an ERF map.

    Least squares over (amplitude, centre, log sigma) by Levenberg-Marquardt,
    started from the moment estimate; the map is scaled to a unit peak first.

    Args:
        g: (H, W) non-negative map from ``erf_map``.
        steps: at most this many Levenberg-Marquardt iterations.

    Returns:
        (sigma, (mu_u, mu_v)): sigma in pixels, the centre as (row, column).
    """
    g = g.detach().cpu().double().numpy() if isinstance(g, Tensor) else np.asarray(g, dtype=np.float64)
    if g.ndim != 2:
        raise ValueError(f"g must be an (H, W) map, got shape {g.shape}")
    total = g.sum()
    if not np.isfinite(total) or total <= 0:
        raise ValueError("the ERF map is all zero (or not finite); the feature does not depend on the input")
    rows, cols = np.mgrid[0 : g.shape[0], 0 : g.shape[1]].astype(np.float64)
    rows, cols, target = rows.ravel(), cols.ravel(), (g / g.max()).ravel()
    mu_r, mu_c = (target * rows).sum() / target.sum(), (target * cols).sum() / target.sum()
    # Moments: E|p - mu|^2 = 2 sigma^2 for an isotropic 2-D Gaussian.
    var = (((rows - mu_r) ** 2 + (cols - mu_c) ** 2) * target).sum() / (2 * target.sum())
    params = np.array([1.0, mu_r, mu_c, np.log(max(np.sqrt(var), 0.5))])

    def residual_and_jacobian(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        a, r, c, log_s = p
        s2 = np.exp(2 * log_s)
        d2 = (rows - r) ** 2 + (cols - c) ** 2
        e = np.exp(-d2 / (2 * s2))
        jac = np.stack([e, a * e * (rows - r) / s2, a * e * (cols - c) / s2, a * e * d2 / s2], axis=1)
        return a * e - target, jac

    damping = 1e-3
    res, jac = residual_and_jacobian(params)
    cost = float(res @ res)
    for _ in range(steps):
        jtj, jtr = jac.T @ jac, jac.T @ res
        step = np.linalg.solve(jtj + damping * np.diag(np.diag(jtj) + 1e-12), -jtr)
        new_res, new_jac = residual_and_jacobian(params + step)
        new_cost = float(new_res @ new_res)
        if np.isfinite(new_cost) and new_cost < cost:
            params, res, jac, damping = params + step, new_res, new_jac, damping / 3
            converged = cost - new_cost < 1e-10 * max(cost, 1e-30)
            cost = new_cost
            if converged:
                break
        else:
            damping *= 4
            if damping > 1e8:
                break
    sigma = float(np.exp(params[3]))
    if not np.isfinite(sigma):
        return float(np.sqrt(var)), (float(mu_r), float(mu_c))
    return sigma, (float(params[1]), float(params[2]))


def _feature_strides(backbone: nn.Module) -> list[int]:
    info = getattr(backbone, "feature_info", None)
    if not isinstance(info, (list, tuple)) or not all(isinstance(d, dict) and "reduction" in d for d in info):
        raise ValueError(
            f"{type(backbone).__name__} has no feature_info list; build it with "
            "msfusion.create_model(name, features_only=True)"
        )
    return [int(d["reduction"]) for d in info]


def _padded(backbone: nn.Module, x: Tensor) -> Tensor:
    """Zero-pad (the normalised mean) bottom/right to the backbone's ``size_divisor`` and ``min_size``."""
    divisor = int(getattr(backbone, "size_divisor", 1) or 1)
    least = int(getattr(backbone, "min_size", 1) or 1)
    H, W = x.shape[-2:]
    target = [max(least, -(-n // divisor) * divisor) for n in (H, W)]
    if target == [H, W]:
        return x
    return torch.nn.functional.pad(x, (0, target[1] - W, 0, target[0] - H))


def _stage_fn(backbone: nn.Module, index: int) -> FeatureFn:
    def fn(x: Tensor) -> Tensor:
        return backbone(_padded(backbone, x))[index]

    return fn


def _centre(image: Tensor, stride: int) -> tuple[int, int]:
    """The central location of a stride-``stride`` map over the image (padding excluded)."""
    H, W = image.shape[-2:]
    return -(-H // stride) // 2, -(-W // stride) // 2


def stage_erf_maps(backbone: nn.Module, image: Tensor, strides: Sequence[int]) -> list[Tensor]:
    """ERF maps (Eq. 11) at the centre of the backbone outputs of the given strides, each (H, W)."""
    available = _feature_strides(backbone)
    missing = [s for s in strides if s not in available]
    if missing:
        raise ValueError(f"strides {missing} are not produced by the backbone; it has {available}")
    was_training = backbone.training
    backbone.eval()
    try:
        return [erf_map(_stage_fn(backbone, available.index(s)), image, _centre(image, s)) for s in strides]
    finally:
        backbone.train(was_training)


def stage_sigmas(
    backbone: nn.Module, images: Sequence[Tensor], strides: Sequence[int] | None = None
) -> dict[str, object]:
    """App. F: ERF sigma at the centre of each stage's last map, averaged over images, and stage ratios.

    Args:
        backbone: a features-only backbone (returns ``list[Tensor]``, has ``feature_info``).
        images: normalised (3, H, W) tensors.
        strides: the stages to measure; default every output with stride >= 4
            (ResNet-50: stages 1-4 at strides 4, 8, 16, 32).

    Returns:
        ``{"strides": [...], "sigma": [[per image] per stage], "mean_sigma":
        [...], "ratios": [E[sigma_{s+1}] / E[sigma_s]], "mean_ratio": float,
        "stride_ratios": [...], "maps": [(H, W) ERF map per stage of the first image]}``.
    """
    available = _feature_strides(backbone)
    strides = [s for s in available if s >= 4] if strides is None else list(strides)
    missing = [s for s in strides if s not in available]
    if missing or len(strides) < 1:
        raise ValueError(f"strides {missing or strides} are not produced by the backbone; it has {available}")
    if not images:
        raise ValueError("give at least one image")
    first_maps: list[Tensor] = []
    per_image = []
    for image in images:
        maps = stage_erf_maps(backbone, image, strides)
        first_maps = first_maps or maps
        per_image.append([fit_gaussian_sigma(g)[0] for g in maps])
    sigmas = [list(v) for v in zip(*per_image, strict=True)]
    mean = [float(np.mean(v)) for v in sigmas]
    ratios = [mean[i + 1] / mean[i] for i in range(len(mean) - 1)]
    return {
        "strides": strides,
        "sigma": sigmas,
        "mean_sigma": mean,
        "ratios": ratios,
        "mean_ratio": float(np.mean(ratios)) if ratios else float("nan"),
        "stride_ratios": [strides[i + 1] / strides[i] for i in range(len(strides) - 1)],
        "maps": first_maps,
    }


def sampled_token_erfs(
    backbone: nn.Module,
    image: Tensor,
    *,
    low_stride: int = 8,
    high_stride: int = 16,
    ratios: Sequence[int] = (1, 2, 4),
    kernel: int | None = None,
    anchor: tuple[float, float] = (0.1, 0.1),
    down: str = "avg",
) -> dict[str, object]:
    """Fig. 6: ERFs of one AATS token of F_high (kernel k) and of F_low (kernel r*k) for each r.

    Args:
        backbone: a features-only backbone producing ``low_stride`` and ``high_stride`` maps.
        image: normalised (3, H, W).
        low_stride, high_stride: the fusion pair (default the l = 2 stage: 8 and 16).
        ratios: sampling ratios r to show.
        kernel: base kernel k; default FINE's (``max(1, 32 // high_stride)``).
        anchor: the target token at this normalised (row, column) of each token grid.
        down: the AATS operator ("avg", "max"; "dwconv" has learnt weights and is not used here).

    Returns:
        ``{"high": (H, W) map, "low": {r: (H, W) map}, "kernel": k, "anchor_px": (row, col)
        in input pixels, "high_token": (i, j), "low_token": {r: (i, j)}}``.
    """
    if down not in DOWNSAMPLERS or down == "dwconv":
        raise ValueError(f"down must be 'avg' or 'max' for the ERF figure, got {down!r}")
    if not all(0.0 <= a < 1.0 for a in anchor):
        raise ValueError(f"anchor must be a normalised (row, column) in [0, 1), got {anchor}")
    available = _feature_strides(backbone)
    missing = [s for s in (low_stride, high_stride) if s not in available]
    if missing:
        raise ValueError(f"strides {missing} are not produced by the backbone; it has {available}")
    k = default_kernel(high_stride) if kernel is None else kernel
    low_index, high_index = available.index(low_stride), available.index(high_stride)
    x = _as_batch(image)

    def token(grid: tuple[int, int]) -> tuple[int, int]:
        return int(anchor[0] * grid[0]), int(anchor[1] * grid[1])

    def sampled(index: int, size: int) -> FeatureFn:
        pool = AlignmentAwareTokenSampling(1, size, 1, down).low  # the same operator FINE uses

        def fn(inp: Tensor) -> Tensor:
            return pool(backbone(_padded(backbone, inp))[index])

        return fn

    was_training = backbone.training
    backbone.eval()
    try:
        # Token grids over the image itself (padding excluded), so the anchor is the same image point.
        grid_high = tuple(-(-n // (high_stride * k)) for n in x.shape[-2:])
        high_token = token(grid_high)
        high = erf_map(sampled(high_index, k), x, high_token)
        low, low_tokens = {}, {}
        for r in ratios:
            grid_low = tuple(-(-n // (low_stride * r * k)) for n in x.shape[-2:])
            low_tokens[r] = token(grid_low)
            low[r] = erf_map(sampled(low_index, r * k), x, low_tokens[r])
    finally:
        backbone.train(was_training)
    H, W = x.shape[-2:]
    return {
        "high": high,
        "low": low,
        "kernel": k,
        "low_stride": low_stride,
        "high_stride": high_stride,
        "anchor_px": (anchor[0] * H, anchor[1] * W),
        "high_token": high_token,
        "low_token": low_tokens,
    }


def save_sampled_token_erf_figure(result: dict[str, object], path: str | Path, *, title: str = "") -> Path:
    """Write Fig. 6 as a PNG: columns r, rows the F_high token and the F_low token; a cyan X at the anchor."""
    from matplotlib.figure import Figure

    low: dict[int, Tensor] = result["low"]  # type: ignore[assignment]
    ratios = list(low)
    H, W = result["high"].shape  # type: ignore[union-attr]
    ay, ax_ = result["anchor_px"]  # type: ignore[misc]
    k = result["kernel"]
    fig = Figure(figsize=(3.2 * len(ratios), 2 * 3.2 * H / W + 0.8), layout="constrained")
    axes = fig.subplots(2, len(ratios), squeeze=False)
    for col, r in enumerate(ratios):
        for row, (g, label) in enumerate(
            (
                (result["high"], f"F_high tokens: Down(k={k}), stride {result['high_stride']}"),
                (low[r], f"F_low tokens: Down(r*k={r * k}), stride {result['low_stride']}"),
            )
        ):
            a = axes[row][col]
            a.imshow(clip_for_display(g), cmap="inferno", vmin=0, vmax=1)
            a.plot([ax_], [ay], marker="x", color="cyan", markersize=10, markeredgewidth=2.5)
            sigma, _ = fit_gaussian_sigma(g)
            a.set_title(f"r = {r}: {label}\nsigma = {sigma:.1f} px", fontsize=8)
            a.set_axis_off()
    return save_figure(fig, path, title=title, dpi=100, tight=False)


def save_stage_erf_figure(
    maps: Sequence[Tensor], strides: Sequence[int], sigmas: Sequence[float], path: str | Path, *, title: str = ""
) -> Path:
    """Write one ERF heatmap per backbone stage with the fitted sigma circle (App. F, Fig. 10)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle

    if not (len(maps) == len(strides) == len(sigmas)):
        raise ValueError("give one map, stride and sigma per stage")
    H, W = maps[0].shape
    fig = Figure(figsize=(3.2 * len(maps), 3.2 * H / W + 0.8), layout="constrained")
    axes = fig.subplots(1, len(maps), squeeze=False)[0]
    for a, g, s, sigma in zip(axes, maps, strides, sigmas, strict=True):
        a.imshow(clip_for_display(g), cmap="inferno", vmin=0, vmax=1)
        _, (mr, mc) = fit_gaussian_sigma(g)
        a.add_patch(Circle((mc, mr), sigma, fill=False, color="cyan", linewidth=1.5))
        a.set_title(f"stride {s}: sigma = {sigma:.1f} px", fontsize=9)
        a.set_axis_off()
    return save_figure(fig, path, title=title, dpi=100, tight=False)
