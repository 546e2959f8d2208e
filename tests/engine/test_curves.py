"""The training curve's validation panel: each task's metrics in percent, never counts; label PNGs and overlays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from msfusion.engine.detection import COCO_STATS
from msfusion.engine.panoptic_metrics import PanopticQuality
from msfusion.engine.segmentation_metrics import confusion_matrix, metrics_from_confusion
from msfusion.engine.visualize import (
    CURVE_METRICS,
    colorize,
    default_palette,
    overlay,
    plot_training_curve,
    save_label_png,
    validation_series,
)

HISTORY = [{"step": s, "loss": 2.0 / s, "lr": 1e-3} for s in (1, 10, 20)]


def _segmentation_eval(step: int) -> dict:
    """What SegmentationTask.evaluate returns, scalars kept (as the trainer keeps them)."""
    pred = torch.randint(0, 3, (2, 16, 16), generator=torch.Generator().manual_seed(step))
    metrics = metrics_from_confusion(confusion_matrix(pred, torch.zeros_like(pred), 3), ["a", "b", "c"])
    return {"step": step, **metrics, "num_images": 100}


def _detection_eval(step: int, masks: bool) -> dict:
    """What DetectionTask.evaluate returns: COCO AP per size, the error analysis counts, image counts."""
    out = {"step": step, **{f"bbox_{k}": 0.1 * step / 20 for k in COCO_STATS}}
    if masks:
        out.update({f"segm_{k}": 0.08 * step / 20 for k in COCO_STATS})
    out.update(TP=372, FP=103, FN=179, precision=0.78, recall=0.68, F1=0.73, num_images=100, num_detections=4711)
    return out


def _panoptic_eval(step: int) -> dict:
    """What PanopticTask.evaluate returns: PanopticQuality.compute() on a one-segment image."""
    pq = PanopticQuality([1], [2], names={0: "void", 1: "thing", 2: "stuff"})
    ids = np.ones((4, 4), dtype=np.int64)
    segments = [{"id": 1, "category_id": 1, "iscrowd": 0}]
    pq.update(ids, segments, ids, segments, "image.png")
    return {"step": step, **{k: v for k, v in pq.compute().items() if isinstance(v, (int, float))}}


def _plotted(monkeypatch, tmp_path, evals, task):
    """(labels, y values, y label, y limits) of the validation panel that plot_training_curve draws."""
    from matplotlib.figure import Figure

    seen = {}
    original = Figure.savefig

    def capture(fig, *args, **kwargs):
        panel = fig.axes[1]
        lines = panel.get_lines()
        seen.update(
            labels=[line.get_label() for line in lines],
            values=[list(line.get_ydata()) for line in lines],
            ylabel=panel.get_ylabel(),
            ylim=panel.get_ylim(),
        )
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", capture)
    path = plot_training_curve(HISTORY, evals, tmp_path / "curve.png", task)
    assert Image.open(path).size == (1100, 418)
    return seen


@pytest.mark.parametrize(
    ("task", "make", "expected"),
    [
        ("segmentation", _segmentation_eval, ["mIoU", "mAcc", "aAcc"]),
        ("detection", lambda s: _detection_eval(s, False), ["bbox_AP", "bbox_AP50", "bbox_AP75"]),
        ("detection", lambda s: _detection_eval(s, True), list(CURVE_METRICS["detection"])),
        ("panoptic", _panoptic_eval, ["PQ", "SQ", "RQ"]),
    ],
)
def test_each_task_plots_its_metrics_in_percent_and_no_counts(monkeypatch, tmp_path, task, make, expected):
    evals = [make(10), make(20)]
    assert validation_series(evals) == expected  # the task is recognised from its metrics when not given
    seen = _plotted(monkeypatch, tmp_path, evals, task)
    assert seen["labels"] == expected
    assert seen["ylabel"] == "%" and seen["ylim"] == (0.0, 100.0)
    for name, values in zip(seen["labels"], seen["values"], strict=True):
        assert values == pytest.approx([100 * e[name] for e in evals], nan_ok=True)


def test_a_single_evaluation_is_drawn_and_an_unknown_task_is_refused(monkeypatch, tmp_path):
    seen = _plotted(monkeypatch, tmp_path, [_detection_eval(20, False)], "detection")
    assert seen["labels"] == ["bbox_AP", "bbox_AP50", "bbox_AP75"]  # the detection demo's one evaluation
    assert _plotted(monkeypatch, tmp_path, [], None)["labels"] == []
    with pytest.raises(ValueError, match="unknown task 'classification'"):
        plot_training_curve(HISTORY, [], tmp_path / "x.png", "classification")


def test_label_png_is_a_palette_png_with_the_ids_unchanged(tmp_path):
    label = np.arange(12 * 9, dtype=np.uint8).reshape(12, 9) % 21
    label[0, 0] = 255  # ignore index
    palette = default_palette(21)
    picture = Image.open(save_label_png(label, palette, tmp_path / "label.png"))
    assert picture.mode == "P"
    assert np.array_equal(np.asarray(picture), label)
    colours = np.asarray(picture.convert("RGB"))
    assert np.array_equal(colours[label < 21], np.asarray(palette, dtype=np.uint8)[label[label < 21]])
    many = (np.arange(40, dtype=np.uint16).reshape(5, 8) * 10).astype(np.uint16)  # ids beyond 255
    wide = Image.open(save_label_png(many, default_palette(400), tmp_path / "wide.png"))
    assert np.array_equal(np.asarray(wide), many)


def test_overlay_is_torchvision_draw_segmentation_masks(monkeypatch):
    import torchvision.utils

    calls = []
    original = torchvision.utils.draw_segmentation_masks

    def spy(image, masks, *args, **kwargs):
        calls.append(masks.shape[0])
        return original(image, masks, *args, **kwargs)

    monkeypatch.setattr(torchvision.utils, "draw_segmentation_masks", spy)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    label = np.zeros((20, 30), dtype=np.uint8)
    label[5:10, 5:15], label[12:, 20:] = 1, 2
    out = overlay(image, colorize(label, default_palette(3)), alpha=0.4)
    assert calls == [2]  # one mask per drawn class; background left out
    assert np.array_equal(out[label == 0], image[label == 0])
    expected = np.round(image[label == 2] * 0.6 + np.array(default_palette(3)[2]) * 0.4)
    assert np.abs(out[label == 2].astype(int) - expected).max() <= 1
