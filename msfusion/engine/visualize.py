"""Pictures of a run: colour masks, overlays with a legend, the training curve, a prediction grid.

Everything is drawn with PIL and matplotlib's non-interactive ``Agg`` backend,
so it works on headless machines.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "default_palette",
    "colorize",
    "overlay",
    "add_legend",
    "plot_training_curve",
    "prediction_grid",
]

Color = Sequence[int]


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """The Pascal VOC colour map (distinct, deterministic colours) for ``num_classes`` classes."""
    palette = []
    for index in range(num_classes):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette.append((r, g, b))
    return palette


def colorize(label: np.ndarray, palette: Sequence[Color], ignore_index: int = 255) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 colours; ignored (and unknown) pixels are white."""
    table = np.full((256, 3), 255, dtype=np.uint8)
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[:256]
    if ignore_index < 256:
        table[ignore_index] = (255, 255, 255)
    return table[label.astype(np.int64).clip(0, 255)]


def overlay(image: np.ndarray, color_mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend an (H, W, 3) uint8 image with a colour mask of the same size."""
    blended = image.astype(np.float32) * (1.0 - alpha) + color_mask.astype(np.float32) * alpha
    return blended.round().clip(0, 255).astype(np.uint8)


def add_legend(
    image: np.ndarray,
    classes: Sequence[str],
    palette: Sequence[Color],
    present: Sequence[int] | None = None,
) -> Image.Image:
    """Append a legend panel (colour swatch + class name) to the right of ``image``.

    Args:
        image: (H, W, 3) uint8.
        classes: class names.
        palette: class colours.
        present: class ids to list (default: all).
    """
    ids = list(range(len(classes))) if present is None else [int(i) for i in present if 0 <= int(i) < len(classes)]
    font = ImageFont.load_default()
    row, swatch, pad = 14, 10, 4
    text_width = max([len(classes[i]) for i in ids] + [6]) * 6 + 3 * pad + swatch
    height = max(image.shape[0], pad * 2 + row * len(ids))
    canvas = Image.new("RGB", (image.shape[1] + text_width, height), (255, 255, 255))
    canvas.paste(Image.fromarray(image), (0, 0))
    draw = ImageDraw.Draw(canvas)
    x0 = image.shape[1] + pad
    for n, i in enumerate(ids):
        y = pad + n * row
        draw.rectangle(
            [x0, y, x0 + swatch, y + swatch],
            fill=tuple(int(c) for c in palette[i]),
            outline=(0, 0, 0),
        )
        draw.text((x0 + swatch + pad, y - 1), classes[i], fill=(0, 0, 0), font=font)
    return canvas


def plot_training_curve(history: Sequence[dict[str, Any]], evals: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Loss and learning rate against the step, and the validation metric, in one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.8))
    steps = [h["step"] for h in history]
    ax_loss.plot(steps, [h["loss"] for h in history], color="tab:blue", label="training loss")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss", color="tab:blue")
    ax_loss.set_yscale("log")
    ax_lr = ax_loss.twinx()
    ax_lr.plot(steps, [h["lr"] for h in history], color="tab:orange", alpha=0.7, label="learning rate")
    ax_lr.set_ylabel("lr (first group)", color="tab:orange")
    ax_loss.set_title("training")
    if evals:
        key = "mIoU"
        ax_val.plot([e["step"] for e in evals], [100 * e[key] for e in evals], marker="o", color="tab:green")
        for name, style in (("mAcc", "--"), ("aAcc", ":")):
            if all(name in e for e in evals):
                ax_val.plot([e["step"] for e in evals], [100 * e[name] for e in evals], style, label=name)
        ax_val.set_ylim(0, 100)
        ax_val.legend(["mIoU", "mAcc", "aAcc"], loc="lower right")
    ax_val.set_xlabel("step")
    ax_val.set_ylabel("%")
    ax_val.set_title("validation")
    ax_val.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def prediction_grid(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    preds: Sequence[np.ndarray],
    classes: Sequence[str],
    palette: Sequence[Color],
    path: str | Path,
    ignore_index: int = 255,
) -> Path:
    """One row per sample: image | ground truth | prediction | prediction overlay, with a legend.

    All arrays of a row must share (H, W); images are (H, W, 3) uint8, labels
    and predictions (H, W) class ids.
    """
    rows = []
    gap = 4
    for image, label, pred in zip(images, labels, preds, strict=True):
        tiles = [
            image,
            colorize(label, palette, ignore_index),
            colorize(pred, palette, ignore_index),
            overlay(image, colorize(pred, palette, ignore_index)),
        ]
        spacer = np.full((image.shape[0], gap, 3), 255, dtype=np.uint8)
        row = np.concatenate([t for tile in tiles for t in (tile, spacer)][:-1], axis=1)
        rows.append(row)
        rows.append(np.full((gap, row.shape[1], 3), 255, dtype=np.uint8))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    grid = np.concatenate(rows[:-1], axis=0)
    header = 16
    grid = np.concatenate([np.full((header, grid.shape[1], 3), 255, dtype=np.uint8), grid], axis=0)
    canvas = add_legend(grid, classes, palette)
    draw = ImageDraw.Draw(canvas)
    tile_w = images[0].shape[1] + gap
    for n, title in enumerate(("image", "ground truth", "prediction", "overlay")):
        draw.text((n * tile_w + 2, 2), title, fill=(0, 0, 0), font=ImageFont.load_default())
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
