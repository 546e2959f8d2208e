"""Segmentation prediction on image files: raw label PNGs, colour masks and overlays with a legend.

For each input ``<stem>.<ext>`` three PNGs are written to the output folder:

- ``<stem>_label.png``: the class id of every pixel, for programs: an 8-bit
  palette PNG (mode 'P': the ids unchanged, shown in the class colours by
  image viewers) for up to 256 classes, a 16-bit PNG beyond (an 8-bit file
  would silently write class 299 as 43);
- ``<stem>_color.png``: the class colours (the training set's palette);
- ``<stem>_overlay.png``: the image blended with the colours, and a legend of
  the classes present.

Images of any size work (the segmentor pads inside); grayscale, palette and
RGBA images are converted to RGB (the alpha channel is dropped). With
``resize`` (the recipe's test scale), the image is resized keep-ratio for the
network and the scores are resized back, as in evaluation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from msfusion.engine.image_files import write_predictions
from msfusion.engine.segmentation_eval import check_slide_window, segment_with_config
from msfusion.engine.visualize import add_legend, colorize, default_palette, overlay, save_label_png

__all__ = ["predict_array", "predict_files"]


@torch.no_grad()
def predict_array(
    model: nn.Module,
    image: np.ndarray,
    *,
    eval_cfg: Mapping[str, Any] | None = None,
    resize: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Class ids (H, W) for an (H, W, 3) uint8 RGB image: uint8 up to 256 classes, uint16 beyond.

    Args:
        model: a segmentor in eval mode.
        image: the picture.
        eval_cfg: test mode (``mode``, ``crop_size``, ``stride``, ``tta``, ...).
        resize: keep-ratio test scale ``(long, short)`` as in the recipes, or None.
        mean, std: normalisation (default: ImageNet, as in training).
        device: where to run.

    Raises:
        ValueError: not an (H, W, 3) uint8 image, NaN or infinite values, a
            resize to a 0-pixel side, or bad test options.
    """
    from msfusion.data.segmentation_transforms import IMAGENET_MEAN, IMAGENET_STD, rescale_size, resize_sample

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got an array of shape {image.shape}")
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        count = int((~np.isfinite(image)).sum())
        raise ValueError(
            f"the image holds {count} NaN or infinite value(s); one such pixel turns every output into NaN. "
            "Clean it (e.g. np.nan_to_num) first"
        )
    if image.dtype != np.uint8:
        raise ValueError(
            f"expected a uint8 RGB image, got dtype {image.dtype}; for values in [0, 1] convert with "
            "(image * 255).round().astype(np.uint8)"
        )
    height, width = image.shape[:2]
    picture = image
    if resize:
        new_h, new_w = rescale_size((height, width), tuple(resize))
        # The resize of the evaluation pipeline, so that predict and eval see the same pixels.
        picture = resize_sample({"image": image}, (new_h, new_w), resize_labels=False)["image"]
    mean_t = torch.tensor(mean or IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std or IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
    tensor = (torch.from_numpy(np.array(picture, dtype=np.float32)).permute(2, 0, 1) - mean_t) / std_t
    cfg = dict(eval_cfg or {})
    scores = segment_with_config(model, tensor.unsqueeze(0).to(device), cfg).float()
    if scores.shape[-2:] != (height, width):
        scores = F.interpolate(scores, size=(height, width), mode="bilinear", align_corners=False)
    label = scores.argmax(dim=1)[0].cpu().numpy()
    return label.astype(np.uint8 if scores.shape[1] <= 256 else np.uint16)


def predict_files(
    model: nn.Module,
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    *,
    classes: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | None = None,
    eval_cfg: Mapping[str, Any] | None = None,
    resize: Sequence[int] | None = None,
    device: torch.device | str = "cpu",
    on_bad_file: str = "raise",
    progress: bool = True,
    alpha: float = 0.5,
) -> list[dict[str, str]]:
    """Segment image files and write label, colour and overlay PNGs to ``out_dir``.

    Args:
        model: a segmentor (put in eval mode here).
        inputs: image files and/or folders of images.
        out_dir: created if missing.
        classes, palette: names and colours (default: "class i", VOC colours).
        eval_cfg: test mode, see :func:`predict_array`.
        resize: keep-ratio test scale, or None for the original size.
        device: where to run.
        on_bad_file: "raise" stops at an unreadable image (naming it); "skip" warns and goes on.
        progress: show a tqdm bar.
        alpha: overlay opacity of the colours.

    Returns:
        One dict per written image: ``input``, ``label``, ``color``, ``overlay`` paths.
    """
    cfg = dict(eval_cfg or {})
    if cfg.get("mode") == "slide":  # an option error stops before any image, not once per image
        check_slide_window(cfg.get("crop_size", (512, 512)), cfg.get("stride", (341, 341)))
    num_classes = getattr(model, "num_classes", None) or (len(classes) if classes else 256)
    classes = list(classes) if classes else [f"class {i}" for i in range(num_classes)]
    palette = [tuple(c) for c in palette] if palette else default_palette(len(classes))
    if len(classes) > 65536:
        raise ValueError(f"{len(classes)} classes do not fit a 16-bit label PNG")
    model.eval()

    def write_one(image: np.ndarray, path: Path, prefix: Path) -> dict[str, str]:
        label = predict_array(model, image, eval_cfg=eval_cfg, resize=resize, device=device)
        # colorize's table has 256 entries; more classes index the palette directly.
        color = colorize(label, palette) if len(palette) <= 256 else np.asarray(palette, dtype=np.uint8)[label]
        present = sorted(int(v) for v in np.unique(label))
        paths = {"input": str(path), **{kind: f"{prefix}_{kind}.png" for kind in ("label", "color", "overlay")}}
        # A palette PNG (ids unchanged, shown in colour by viewers); 16-bit grey beyond 256 classes.
        save_label_png(label, palette, paths["label"])
        Image.fromarray(color).save(paths["color"])
        add_legend(overlay(image, color, alpha), classes, palette, present).save(paths["overlay"])
        return paths

    return write_predictions(inputs, out_dir, write_one, on_bad_file=on_bad_file, progress=progress)
