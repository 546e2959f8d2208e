"""Pictures of a run: colour masks, overlays with a legend, the training curve, the confusion matrix, a prediction grid.

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
    "legend_font_size",
    "plot_training_curve",
    "plot_confusion_matrix",
    "write_metrics_csv",
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


def overlay(
    image: np.ndarray, color_mask: np.ndarray, alpha: float = 0.5, keep: np.ndarray | None = None
) -> np.ndarray:
    """Blend class colours into an (H, W, 3) uint8 image where a class is drawn.

    Pixels listed in ``keep`` (an (H, W) bool mask) are left exactly as they
    are; by default those whose colour is black (the background class of the
    VOC colour map) or white (ignored pixels), so the background is not
    darkened, as torchvision's ``draw_segmentation_masks`` leaves undrawn
    pixels untouched.
    """
    if keep is None:
        keep = np.all(color_mask == 0, axis=-1) | np.all(color_mask == 255, axis=-1)
    blended = image.astype(np.float32) * (1.0 - alpha) + color_mask.astype(np.float32) * alpha
    blended = blended.round().clip(0, 255).astype(np.uint8)
    return np.where(keep[..., None], image, blended).astype(np.uint8)


def legend_font_size(height: int) -> int:
    """Font size (pixels) for a legend beside a picture ``height`` pixels tall: 1/40 of it, 11 to 40."""
    return int(min(max(round(height / 40), 11), 40))


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 ships a scalable default font
    except TypeError:
        return ImageFont.load_default()


def add_legend(
    image: np.ndarray,
    classes: Sequence[str],
    palette: Sequence[Color],
    present: Sequence[int] | None = None,
    font_size: int | None = None,
) -> Image.Image:
    """Append a legend panel (colour swatch + class name) to the right of ``image``.

    The text scales with the picture (``legend_font_size``), so it stays
    readable on large images; long lists wrap into more columns.

    Args:
        image: (H, W, 3) uint8.
        classes: class names.
        palette: class colours.
        present: class ids to list (default: all).
        font_size: text height in pixels (default: from the image height).
    """
    ids = list(range(len(classes))) if present is None else [int(i) for i in present if 0 <= int(i) < len(classes)]
    size = font_size or legend_font_size(image.shape[0])
    font = _font(size)
    row, swatch, pad = round(size * 1.5), size, max(size // 3, 4)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = max([measure.textlength(classes[i], font=font) for i in ids] + [size * 3])
    col_w = int(swatch + 2 * pad + text_w + pad)
    per_col = max((max(image.shape[0], row * 4) - 2 * pad) // row, 1)
    cols = max(-(-len(ids) // per_col), 1)
    height = max(image.shape[0], 2 * pad + row * min(len(ids), per_col))
    canvas = Image.new("RGB", (image.shape[1] + cols * col_w + pad, height), (255, 255, 255))
    canvas.paste(Image.fromarray(image), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for n, i in enumerate(ids):
        x0 = image.shape[1] + pad + (n // per_col) * col_w
        y = pad + (n % per_col) * row
        draw.rectangle([x0, y, x0 + swatch, y + swatch], fill=tuple(int(c) for c in palette[i]), outline=(0, 0, 0))
        draw.text((x0 + swatch + pad, y + swatch / 2), classes[i], fill=(0, 0, 0), font=font, anchor="lm")
    return canvas


def _metric_series(evals: Sequence[dict[str, Any]]) -> list[str]:
    """Scalar validation metrics present in every evaluation, primary ones first."""
    keys = [k for k in evals[0] if k != "step" and all(isinstance(e.get(k), (int, float)) for e in evals)]
    order = ("mIoU", "mAcc", "aAcc", "bbox_mAP", "segm_mAP", "top1", "PQ")
    return sorted(keys, key=lambda k: (order.index(k) if k in order else len(order), k))[:4]


def plot_training_curve(history: Sequence[dict[str, Any]], evals: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Loss and learning rate against the step, and the validation metrics, in one PNG.

    Metrics that are fractions (mIoU, mAcc, aAcc, AP) are drawn in percent.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(10, 3.8))
    steps = [h["step"] for h in history]
    ax_loss.plot(steps, [h["loss"] for h in history], color="tab:blue", label="training loss")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss", color="tab:blue")
    if history and min(h["loss"] for h in history) > 0:
        ax_loss.set_yscale("log")
    ax_lr = ax_loss.twinx()
    ax_lr.plot(steps, [h["lr"] for h in history], color="tab:orange", alpha=0.7, label="learning rate")
    ax_lr.set_ylabel("lr (first group)", color="tab:orange")
    ax_loss.set_title("training")
    if evals:
        names = _metric_series(evals)
        fractions = all(0.0 <= e[k] <= 1.0 for e in evals for k in names if e[k] == e[k])
        for name, style in zip(names, ("-o", "--", ":", "-."), strict=False):
            values = [(100 if fractions else 1) * e[name] for e in evals]
            ax_val.plot([e["step"] for e in evals], values, style, label=name)
        if fractions:
            ax_val.set_ylim(0, 100)
        ax_val.legend(loc="lower right")
        ax_val.set_ylabel("%" if fractions else "value")
    else:
        ax_val.text(0.5, 0.5, "no evaluation yet", ha="center", va="center", transform=ax_val.transAxes)
    ax_val.set_xlabel("step")
    ax_val.set_title("validation")
    ax_val.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_metrics_csv(evals: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """One row per evaluation: ``step`` and every scalar metric (columns in first-seen order)."""
    import csv

    columns: list[str] = []
    for e in evals:
        columns += [k for k, v in e.items() if k not in columns and isinstance(v, (int, float))]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(evals)
    return path


def plot_confusion_matrix(
    confusion: np.ndarray | Sequence[Sequence[int]], classes: Sequence[str], path: str | Path, max_classes: int = 60
) -> Path:
    """The confusion matrix normalised per true class (each row sums to 1), classes named, as a PNG.

    Row i, column j: the share of pixels of class i predicted as j, so the
    diagonal is each class's accuracy. Classes without pixels show an empty
    row. With more than ``max_classes`` classes, the ``max_classes`` with
    the most pixels are drawn (the title says so).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(confusion, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(classes):
        raise ValueError(f"confusion matrix of shape {cm.shape} does not fit {len(classes)} class names")
    names = list(classes)
    title = "confusion matrix (rows: true class, normalised)"
    if len(names) > max_classes:
        top = np.sort(np.argsort(-cm.sum(axis=1))[:max_classes])
        cm, names = cm[np.ix_(top, top)], [names[i] for i in top]
        title += f", {max_classes} most frequent classes of {len(classes)}"
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.full_like(cm, np.nan), where=rows > 0)
    k = len(names)
    side = min(max(4.0, 0.35 * k + 2.5), 24.0)
    fig, ax = plt.subplots(figsize=(side + 1.2, side))
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(k), names, rotation=90, fontsize=max(5, min(10, 300 // max(k, 1))))
    ax.set_yticks(range(k), names, fontsize=max(5, min(10, 300 // max(k, 1))))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    if k <= 25:
        for i in range(k):
            for j in range(k):
                if norm[i, j] == norm[i, j] and norm[i, j] >= 0.005:
                    color = "white" if norm[i, j] > 0.6 else "black"
                    ax.text(j, i, f"{norm[i, j]:.2f}", ha="center", va="center", fontsize=7, color=color)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
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
        draw.text((n * tile_w + 2, 2), title, fill=(0, 0, 0), font=_font(12))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
