"""Pictures of a run: colour masks, overlays with a legend, the training curve, the confusion matrix, a prediction grid.

Everything is drawn with PIL, torchvision's ``draw_segmentation_masks`` and
matplotlib's non-interactive ``Agg`` backend, so it works on headless machines.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "default_palette",
    "colorize",
    "overlay",
    "save_label_png",
    "add_legend",
    "legend_font_size",
    "CURVE_METRICS",
    "validation_series",
    "plot_training_curve",
    "plot_confusion_matrix",
    "write_metrics_csv",
    "prediction_grid",
    "save_figure",
]

Color = Sequence[int]


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """The Pascal VOC colour map (distinct, deterministic colours) for ``num_classes`` classes."""
    from msfusion.data.class_names import pascal_colormap

    return pascal_colormap(num_classes)


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

    Drawn with torchvision's ``draw_segmentation_masks`` (one boolean mask per
    colour), as the detection pictures are. Pixels listed in ``keep`` (an
    (H, W) bool mask) are left exactly as they are; by default those whose
    colour is black (the background class of the VOC colour map) or white
    (ignored pixels), so the background is not darkened.
    """
    import torch
    from torchvision.utils import draw_segmentation_masks

    if keep is None:
        keep = np.all(color_mask == 0, axis=-1) | np.all(color_mask == 255, axis=-1)
    # One mask per distinct colour: colours packed into one integer, so np.unique stays fast on large images.
    packed = color_mask.astype(np.int64) @ np.array([1 << 16, 1 << 8, 1], dtype=np.int64)
    packed[keep] = -1
    colours = [int(c) for c in np.unique(packed) if c >= 0]
    if not colours:
        return image.copy()
    masks = torch.from_numpy(np.stack([packed == c for c in colours]))
    rgb = [((c >> 16) & 255, (c >> 8) & 255, c & 255) for c in colours]
    # In float [0, 1], then rounded: a uint8 image would be truncated by the cast back.
    # torch.tensor copies: an image read from a file may be a read-only array.
    drawn = draw_segmentation_masks(torch.tensor(image).permute(2, 0, 1).double() / 255, masks, alpha, rgb)
    return (drawn * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def save_label_png(label: np.ndarray, palette: Sequence[Color], path: str | Path) -> Path:
    """Write (H, W) class ids as a PNG: a palette PNG up to 256 classes, a 16-bit grey PNG beyond.

    A palette (mode 'P') PNG stores the class id of each pixel unchanged (read
    back with ``np.asarray(Image.open(path))``) and carries the class colours,
    so image viewers show it in colour, as the Pascal VOC and Cityscapes label
    files do. Beyond 256 classes an 8-bit file cannot hold the ids: the file is
    16-bit grey (mode 'I;16'), which viewers show dark.
    """
    from PIL import Image

    path = Path(path)
    if int(label.max(initial=0)) > 255 or len(palette) > 256:
        Image.fromarray(label.astype(np.uint16)).save(path)
        return path
    picture = Image.fromarray(label.astype(np.uint8))  # mode 'L'; putpalette makes it 'P', the ids unchanged
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    picture.putpalette(table.reshape(-1).tolist())
    picture.save(path)
    return path


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


# The validation metrics each task's curve shows (fractions, plotted in percent); every other number of an
# evaluation (image, detection and TP/FP/FN counts, per-size AP, thing/stuff splits) stays in metrics.csv.
CURVE_METRICS: dict[str, tuple[str, ...]] = {
    "segmentation": ("mIoU", "mAcc", "aAcc"),
    "detection": ("bbox_AP", "bbox_AP50", "bbox_AP75", "segm_AP", "segm_AP50", "segm_AP75"),
    "panoptic": ("PQ", "SQ", "RQ"),
}


def validation_series(evals: Sequence[dict[str, Any]], task: str | None = None) -> list[str]:
    """The metrics the validation panel plots: the task's :data:`CURVE_METRICS` present in every evaluation.

    Args:
        evals: one dict per evaluation (``step`` and the metrics, fractions).
        task: ``segmentation``, ``detection`` or ``panoptic``; None: whichever
            task's metrics the evaluations hold.
    """
    if task is not None and task not in CURVE_METRICS:
        raise ValueError(f"unknown task {task!r} for a training curve; choose one of {sorted(CURVE_METRICS)}")
    names = CURVE_METRICS[task] if task else tuple(k for keys in CURVE_METRICS.values() for k in keys)
    return [k for k in names if evals and all(isinstance(e.get(k), (int, float)) for e in evals)]


def plot_training_curve(
    history: Sequence[dict[str, Any]],
    evals: Sequence[dict[str, Any]],
    path: str | Path,
    task: str | None = None,
) -> Path:
    """Loss and learning rate against the step, and the task's validation metrics in percent, in one PNG.

    The validation panel draws :func:`validation_series` (mIoU / mAcc / aAcc;
    box and mask AP / AP50 / AP75; PQ / SQ / RQ) on a 0-100 % axis; counts are
    never drawn. NaN values (an AP with no ground truth) leave a gap.
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
    names = validation_series(evals, task)
    if names:
        eval_steps = [e["step"] for e in evals]
        lines = []
        for n, name in enumerate(names):
            # Mask metrics dashed beside the box metrics of the same colour; one marker per evaluation.
            style = "--" if name.startswith("segm_") else "-"
            values = [100 * e[name] for e in evals]
            lines += ax_val.plot(eval_steps, values, style, marker="o", color=f"C{n % 3}", label=name)
        # The legend carries the last evaluation's values, readable without a ruler even when they are low.
        entries = [f"{name}  {100 * evals[-1][name]:.1f}" for name in names]
        ax_val.legend(
            lines,
            entries,
            loc="best",
            fontsize=8,
            ncol=2 if len(names) > 3 else 1,
            title=f"% at step {eval_steps[-1]}",
            title_fontsize=8,
        )
        ax_val.set_ylim(0, 100)
        ax_val.set_ylabel("%")
        if steps:
            ax_val.set_xlim(ax_loss.get_xlim())
    else:
        what = "no evaluation yet" if not evals else "no curve metric in the evaluations"
        ax_val.text(0.5, 0.5, what, ha="center", va="center", transform=ax_val.transAxes)
    ax_val.set_xlabel("step")
    ax_val.set_title("validation")
    ax_val.grid(alpha=0.3)
    return save_figure(fig, path)


def save_figure(fig: Figure, path: str | Path, *, title: str = "", dpi: int = 110, tight: bool = True) -> Path:
    """Write a matplotlib figure as a PNG (folders created) and close it: the one figure writer of the library.

    Args:
        fig: the finished figure (pyplot's or a bare ``matplotlib.figure.Figure``).
        path: the PNG to write.
        title: an overall title over all panels (``suptitle``); empty for none.
        dpi: resolution.
        tight: lay the panels out with ``tight_layout`` first (figures that place their own panels pass False).

    Returns:
        ``path`` as a ``Path``.
    """
    import matplotlib.pyplot as plt

    if title:
        fig.suptitle(title)
    if tight:
        fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
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
    return save_figure(fig, path)


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
