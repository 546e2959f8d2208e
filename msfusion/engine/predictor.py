"""Prediction on image files: raw label PNGs, colour masks and overlays with a legend.

For each input ``<stem>.<ext>`` three PNGs are written to the output folder:

- ``<stem>_label.png``: the class id of every pixel (8-bit, mode 'L'), for
  programs;
- ``<stem>_color.png``: the class colours (the training set's palette);
- ``<stem>_overlay.png``: the image blended with the colours, and a legend of
  the classes present.

Images of any size work (the segmentor pads inside); grayscale, palette and
RGBA images are converted to RGB (the alpha channel is dropped). With
``resize`` (the recipe's test scale), the image is resized keep-ratio for the
network and the scores are resized back, as in evaluation.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from msfusion.engine.evaluator import segment_with_config
from msfusion.engine.visualize import add_legend, colorize, default_palette, overlay

__all__ = ["collect_images", "predict_array", "predict_files"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def collect_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Image files named directly, or found (sorted, not recursively) in named folders.

    Raises:
        FileNotFoundError: an input does not exist, or a folder holds no image.
    """
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"input not found: {path}")
    return files


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
    """Class ids (H, W) uint8 for an (H, W, 3) uint8 RGB image.

    Args:
        model: a segmentor in eval mode.
        image: the picture.
        eval_cfg: test mode (``mode``, ``crop_size``, ``stride``, ``tta``, ...).
        resize: keep-ratio test scale ``(long, short)`` as in the recipes, or None.
        mean, std: normalisation (default: ImageNet, as in training).
        device: where to run.
    """
    from msfusion.data.transforms import IMAGENET_MEAN, IMAGENET_STD, rescale_size

    height, width = image.shape[:2]
    picture = image
    if resize:
        new_h, new_w = rescale_size((height, width), tuple(resize))
        picture = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR))
    mean_t = torch.tensor(mean or IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std or IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
    tensor = (torch.from_numpy(np.array(picture, dtype=np.float32)).permute(2, 0, 1) - mean_t) / std_t
    cfg = dict(eval_cfg or {})
    scores = segment_with_config(model, tensor.unsqueeze(0).to(device), cfg).float()
    if scores.shape[-2:] != (height, width):
        scores = F.interpolate(scores, size=(height, width), mode="bilinear", align_corners=False)
    return scores.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()


def _unique_stems(files: Sequence[Path]) -> list[str]:
    seen: dict[str, int] = {}
    stems = []
    for path in files:
        stem = path.stem
        if stem in seen:
            seen[stem] += 1
            stem = f"{stem}_{seen[stem]}"  # two inputs with one name must not overwrite each other
        else:
            seen[stem] = 0
        stems.append(stem)
    return stems


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
    from msfusion.data.image_io import read_image
    from msfusion.data.label_maps import InvalidSampleError

    if on_bad_file not in ("raise", "skip"):
        raise ValueError(f"on_bad_file must be 'raise' or 'skip', got {on_bad_file!r}")
    files = collect_images(inputs)
    num_classes = getattr(model, "num_classes", None) or (len(classes) if classes else 256)
    classes = list(classes) if classes else [f"class {i}" for i in range(num_classes)]
    palette = [tuple(c) for c in palette] if palette else default_palette(len(classes))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    written = []
    iterator: Iterable[tuple[Path, str]] = zip(files, _unique_stems(files), strict=True)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(list(iterator), desc="predict", unit="img", dynamic_ncols=True)
    for path, stem in iterator:
        try:
            image = read_image(path)
        except InvalidSampleError as err:
            if on_bad_file == "raise":
                raise
            warnings.warn(f"skipping {path}: {err}", stacklevel=2)
            continue
        label = predict_array(model, image, eval_cfg=eval_cfg, resize=resize, device=device)
        color = colorize(label, palette)
        present = sorted(int(v) for v in np.unique(label))
        paths = {
            "input": str(path),
            "label": str(out_dir / f"{stem}_label.png"),
            "color": str(out_dir / f"{stem}_color.png"),
            "overlay": str(out_dir / f"{stem}_overlay.png"),
        }
        Image.fromarray(label, mode="L").save(paths["label"])
        Image.fromarray(color).save(paths["color"])
        add_legend(overlay(image, color, alpha), classes, palette, present).save(paths["overlay"])
        written.append(paths)
    return written
