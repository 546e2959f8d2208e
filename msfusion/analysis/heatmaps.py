"""Activation heatmaps of a FINE fusion stage: F_high, F_low, M and the aligned F_low (FINE Fig. 8).

Paper: "Context-Guided Semantic Alignment for Feature Fusion Networks"
(FINE), arXiv 2606.14005, Sec. 5.4 "Activation Heatmap" and Fig. 8 (shown at
the l = 3 fusion stage, where F_low is at stride 16 and F_high at stride 32).

The maps are captured with a forward hook on the chosen ``FINE`` module while
the whole model runs once on the image (eval mode, no gradient): the hook
receives F_low and F_high, and the module's own ``modulation_map`` gives M for
the same inputs.

Each model gets the image the way it takes it, so the maps are those of the
model's real input:

- torchvision detectors (``msfusion.build_detector``): the image in [0, 1];
  the detector's ``GeneralizedRCNNTransform`` normalises, resizes
  (``min_size`` / ``max_size``) and pads to its ``size_divisible``;
- DETR-family and YOLO detectors (the optional extras): the image in [0, 1];
  their own ``preprocess`` / square resize;
- segmentors and any other module: the ImageNet-normalised (1, 3, H, W)
  image, padded inside the model at the bottom and right.

Mapping a map back to the image: a map of stride s covers the network input
(resized and padded) with one cell per s x s pixels, so it is upsampled by s
(bilinear, cell centres at ``(i + 0.5) s``), cropped to the part that holds
the resized image (padding is at the bottom and right in every case above),
and resized to the original image. Each map is shown as its mean over
channels, min-max scaled to [0, 1] and laid over the image (brighter is a
larger activation).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from msfusion.engine.visualize import save_figure
from msfusion.models.align.fine import FINE

__all__ = [
    "MAP_NAMES",
    "capture_fine_maps",
    "fine_heatmap",
    "fine_layers",
    "fine_modules",
    "model_input",
    "save_fine_heatmaps",
    "select_fine_layer",
]

MAP_NAMES = ("high", "low", "modulation", "aligned")
_TITLES = {"high": "F_high", "low": "F_low", "modulation": "M (modulation map)", "aligned": "F_low aligned"}


def fine_layers(model: nn.Module) -> dict[str, FINE]:
    """The FINE modules of a model that compute a modulation (``modulation != "none"``), by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, FINE) and m.modulation != "none"}


def fine_modules(model: nn.Module) -> list[FINE]:
    """The FINE modules of a model that compute a modulation (``modulation != "none"``), in build order."""
    return list(fine_layers(model).values())


def select_fine_layer(model: nn.Module, *, low_stride: int | None = None, layer: str | None = None) -> tuple[str, FINE]:
    """The FINE stage to show, as ``(qualified name, module)``.

    Args:
        model: a model containing FINE.
        low_stride: the stage by the stride of its F_low.
        layer: the stage by its module name (``model.named_modules()``).
            Without either, the l = 3 stage of Fig. 8 (F_low at stride 16)
            when the model has it, else the first.

    Raises:
        ValueError: the model has no FINE, or none by that name or stride;
            the message lists the FINE layers it has.
    """
    layers = fine_layers(model)
    if not layers:
        raise ValueError(
            f"{type(model).__name__} contains no FINE module with a modulation; use a model built with FINE "
            "(e.g. msfusion.create_model('semantic_fpn_r50_fine'))"
        )
    listing = ", ".join(f"{name!r} (F_low stride {m.low_stride})" for name, m in layers.items())
    if layer is not None:
        if layer not in layers:
            raise ValueError(f"{type(model).__name__} has no FINE layer {layer!r}; its FINE layers are {listing}")
        if low_stride is not None and layers[layer].low_stride != low_stride:
            raise ValueError(
                f"FINE layer {layer!r} has F_low at stride {layers[layer].low_stride}, not {low_stride}; "
                "give one of layer and low_stride"
            )
        return layer, layers[layer]
    if low_stride is None:
        # Fig. 8 shows the l = 3 stage (F_low at stride 16) when the model has it.
        low_stride = 16 if any(m.low_stride == 16 for m in layers.values()) else next(iter(layers.values())).low_stride
    for name, m in layers.items():
        if m.low_stride == low_stride:
            return name, m
    raise ValueError(
        f"{type(model).__name__} has no FINE module with F_low at stride {low_stride}; its FINE layers are {listing}"
    )


def _as_unit_image(image: np.ndarray | Tensor) -> Tensor:
    """(H, W, 3) uint8 RGB or (3, H, W) / (1, 3, H, W) float in [0, 1] -> (3, H, W) float32 in [0, 1]."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"a numpy image must be (H, W, 3) uint8 RGB, got {image.dtype} of shape {image.shape}; "
                "msfusion.data.image_io.read_image reads one"
            )
        return torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 255
    x = image[0] if image.dim() == 4 and image.shape[0] == 1 else image
    if x.dim() != 3 or x.shape[0] != 3:
        raise ValueError(f"image must be (3, H, W) or (1, 3, H, W), got shape {tuple(image.shape)}")
    x = x.detach().float()
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        raise ValueError(
            f"image values lie in [{lo:.3g}, {hi:.3g}]: give the RGB image in [0, 1] (or as uint8), not normalised; "
            "each model is fed its own normalisation (model_input)"
        )
    return x


def model_input(model: nn.Module, image: np.ndarray | Tensor) -> tuple[Any, tuple[int, int]]:
    """The model's forward argument for one image, and where the image lies in the network's input.

    Args:
        model: a torchvision detector, a DETR or YOLO detector, a segmentor or
            any module taking a normalised (B, 3, H, W) batch (module doc).
        image: (H, W, 3) uint8 RGB, or (3, H, W) float RGB in [0, 1].

    Returns:
        ``(inputs, (h, w))``: what ``model(inputs)`` takes, on the model's
        device, and the size of the image as the network sees it (after the
        model's resize, before its bottom/right padding), in input pixels.
    """
    x = _as_unit_image(image)
    param = next(model.parameters(), None)
    x = x.to(param.device if param is not None else "cpu")
    size = (int(x.shape[-2]), int(x.shape[-1]))
    was_training = model.training
    model.eval()  # the test-time resize
    try:
        with torch.no_grad():
            transform = getattr(model, "transform", None)
            if isinstance(transform, GeneralizedRCNNTransform):
                return [x], tuple(int(v) for v in transform([x])[0].image_sizes[0])
            if _is_instance(model, "msfusion.models.meta_arch.detr", "DetrDetector"):
                return [x], tuple(int(v) for v in model.preprocess([x])[3][0])
            if _is_instance(model, "msfusion.models.meta_arch.yolo", "YoloDetector"):
                return [x], (model.image_size, model.image_size)
    finally:
        model.train(was_training)
    from msfusion.data.segmentation_transforms import IMAGENET_MEAN, IMAGENET_STD

    mean = x.new_tensor(IMAGENET_MEAN).view(3, 1, 1) / 255
    std = x.new_tensor(IMAGENET_STD).view(3, 1, 1) / 255
    return ((x - mean) / std)[None], size


def _is_instance(obj: object, module: str, name: str) -> bool:
    # The optional extras are imported only when a model of theirs exists: look them up, never import them.
    cls = getattr(sys.modules.get(module), name, None)
    return cls is not None and isinstance(obj, cls)


def capture_fine_maps(
    model: nn.Module, image: np.ndarray | Tensor, *, low_stride: int | None = None, layer: str | None = None
) -> dict[str, Tensor]:
    """Run ``model`` on one image and return the maps of one FINE stage.

    Args:
        model: any module containing ``FINE``: a segmentor, a detector of
            ``build_detector`` (or the DETR / YOLO extras), a neck.
        image: (H, W, 3) uint8 RGB, or (3, H, W) float RGB in [0, 1]; the model
            gets it as it expects (``model_input``).
        low_stride: the FINE stage by the stride of its F_low; default 16
            (the l = 3 stage of Fig. 8) when present, else the first.
        layer: the FINE stage by module name (``fine_layers(model)``).

    Returns:
        ``{"high": (C, h, w), "low": (C, H', W'), "modulation": (C, H', W'),
        "aligned": (C, H', W')}`` float32 on the CPU, plus 0-d tensors
        ``"low_stride"``, ``"high_stride"`` and 1-d ``"input_size"`` (the
        image's (h, w) in the network input, after the model's resize) and
        ``"image_size"`` (the image's own (H, W)).
    """
    _, module = select_fine_layer(model, low_stride=low_stride, layer=layer)
    x = _as_unit_image(image)
    inputs, input_size = model_input(model, x)
    captured: dict[str, Tensor] = {}

    def hook(mod: FINE, args: tuple[Tensor, ...], output: Tensor) -> None:
        if captured:  # the first call only (a model may reuse the module)
            return
        low, high = args[0], args[1]
        captured["low"], captured["high"], captured["aligned"] = low[0], high[0], output[0]
        captured["modulation"] = mod.modulation_map(low, high)[0]

    was_training = model.training
    model.eval()
    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        handle.remove()
        model.train(was_training)
    if not captured:
        raise ValueError("the selected FINE module was not called by the model's forward pass")
    out = {k: v.detach().float().cpu() for k, v in captured.items()}
    out["low_stride"] = torch.tensor(module.low_stride)
    out["high_stride"] = torch.tensor(module.high_stride)
    out["input_size"] = torch.tensor(input_size)
    out["image_size"] = torch.tensor(tuple(x.shape[-2:]))
    return out


def fine_heatmap(maps: dict[str, Tensor], name: str) -> np.ndarray:
    """One map of ``capture_fine_maps`` over the original image: (H, W) float32 in [0, 1].

    The channel mean is upsampled by its stride onto the network input, cropped
    to the resized image (the padding is bottom/right), resized to the
    original image and min-max scaled (module doc).
    """
    if name not in MAP_NAMES:
        raise ValueError(f"map name must be one of {MAP_NAMES}, got {name!r}")
    stride = int(maps["high_stride"] if name == "high" else maps["low_stride"])
    (h, w), size = maps["input_size"].tolist(), tuple(maps["image_size"].tolist())
    m = maps[name].mean(0)[None, None]
    if m.shape[-2] * stride < h or m.shape[-1] * stride < w:
        raise ValueError(
            f"the stride-{stride} map {tuple(m.shape[-2:])} covers {m.shape[-2] * stride}x{m.shape[-1] * stride} "
            f"input pixels, less than the {h}x{w} image the network read; is the stride right?"
        )
    m = F.interpolate(m, size=(m.shape[-2] * stride, m.shape[-1] * stride), mode="bilinear", align_corners=False)
    m = F.interpolate(m[..., :h, :w], size=size, mode="bilinear", align_corners=False, antialias=True)[0, 0]
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
        images: (H, W, 3) uint8 RGB images, in the order of ``maps``, each the
            image its maps were captured from.
        maps: results of ``capture_fine_maps``.
        path: the PNG to write.
        title: figure title.
        alpha: opacity of the heatmaps over the image.
    """
    from matplotlib.figure import Figure

    if len(images) != len(maps) or not images:
        raise ValueError(f"give one map set per image ({len(images)} images, {len(maps)} map sets)")
    for i, (image, m) in enumerate(zip(images, maps, strict=True)):
        if tuple(image.shape[:2]) != tuple(m["image_size"].tolist()):
            raise ValueError(
                f"image {i} is {image.shape[0]}x{image.shape[1]} but its maps were captured from a "
                f"{'x'.join(map(str, m['image_size'].tolist()))} image; pass the image given to capture_fine_maps"
            )
    h0, w0 = images[0].shape[:2]
    cols = 1 + len(MAP_NAMES)
    fig = Figure(figsize=(2.6 * cols, 2.6 * len(images) * h0 / w0 + 0.7), layout="constrained")
    axes = fig.subplots(len(images), cols, squeeze=False)
    for row, (image, m) in enumerate(zip(images, maps, strict=True)):
        axes[row][0].imshow(image)
        axes[row][0].set_title("image", fontsize=9)
        for col, name in enumerate(MAP_NAMES, start=1):
            stride = int(m["high_stride"] if name == "high" else m["low_stride"])
            a = axes[row][col]
            a.imshow(image)
            a.imshow(fine_heatmap(m, name), cmap="jet", alpha=alpha, vmin=0, vmax=1)
            a.set_title(f"{_TITLES[name]} (stride {stride})", fontsize=9)
        for a in axes[row]:
            a.set_axis_off()
    return save_figure(fig, path, title=title, dpi=100, tight=False)
