"""Segmentation metrics against hand-computed confusion matrices and torchmetrics."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from msfusion.engine.segmentation_metrics import (
    confusion_matrix,
    format_metrics_table,
    metrics_from_confusion,
    save_metrics,
)


def test_confusion_matrix_by_hand_with_ignore():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm = confusion_matrix(pred, target, num_classes=3)
    expected = torch.tensor([[1, 1, 0], [1, 2, 0], [1, 0, 1]])  # rows = label; the 255 pixel is skipped
    assert torch.equal(cm, expected)


def test_metrics_by_hand():
    cm = torch.tensor([[1, 1, 0], [1, 2, 0], [1, 0, 1]])
    m = metrics_from_confusion(cm, ["a", "b", "c"])
    # IoU: a 1/(2+3-1)=1/4, b 2/(3+3-2)=1/2, c 1/(2+1-1)=1/2; Acc: 1/2, 2/3, 1/2; aAcc 4/7.
    assert m["aAcc"] == pytest.approx(4 / 7)
    assert m["mIoU"] == pytest.approx((1 / 4 + 1 / 2 + 1 / 2) / 3)
    assert m["mAcc"] == pytest.approx((1 / 2 + 2 / 3 + 1 / 2) / 3)
    assert [r["class"] for r in m["per_class"]] == ["a", "b", "c"]
    assert m["per_class"][1]["IoU"] == pytest.approx(0.5) and m["per_class"][1]["pixels"] == 3


def test_absent_class_is_nan_and_skipped():
    # Class 2 never labelled nor predicted: IoU and Acc NaN, left out of the means (mmseg nanmean).
    cm = torch.tensor([[2, 0, 0], [0, 1, 0], [0, 0, 0]])
    m = metrics_from_confusion(cm)
    assert math.isnan(m["per_class"][2]["IoU"]) and math.isnan(m["per_class"][2]["Acc"])
    assert m["mIoU"] == pytest.approx(1.0)
    # Predicted but never labelled: IoU 0, Acc NaN.
    m = metrics_from_confusion(torch.tensor([[2, 1], [0, 0]]))
    assert m["per_class"][1]["IoU"] == 0.0 and math.isnan(m["per_class"][1]["Acc"])
    assert "n/a" in format_metrics_table(m)


def test_bad_labels_are_reported():
    with pytest.raises(ValueError, match=r"\[5, 9\] are outside \[0, 3\)"):
        confusion_matrix(torch.zeros(4, dtype=torch.long), torch.tensor([0, 5, 9, 255]), 3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(torch.zeros(4), torch.zeros(5), 3)


def test_cross_check_with_torchmetrics():
    tm = pytest.importorskip("torchmetrics.classification")
    generator = torch.Generator().manual_seed(0)
    k = 5
    target = torch.randint(0, k, (2, 32, 32), generator=generator)
    target[:, :4] = 255
    pred = torch.where(torch.rand(target.shape, generator=generator) < 0.6, target.clamp(max=k - 1),
                       torch.randint(0, k, target.shape, generator=generator))  # fmt: skip
    m = metrics_from_confusion(confusion_matrix(pred, target, k))
    iou = tm.MulticlassJaccardIndex(num_classes=k, average=None, ignore_index=255)(pred, target)
    acc = tm.MulticlassAccuracy(num_classes=k, average=None, ignore_index=255)(pred, target)
    micro = tm.MulticlassAccuracy(num_classes=k, average="micro", ignore_index=255)(pred, target)
    assert [r["IoU"] for r in m["per_class"]] == pytest.approx(iou.tolist(), abs=1e-6)
    assert [r["Acc"] for r in m["per_class"]] == pytest.approx(acc.tolist(), abs=1e-6)
    assert m["aAcc"] == pytest.approx(micro.item(), abs=1e-6)


def test_save_json_and_csv(tmp_path):
    m = metrics_from_confusion(torch.tensor([[3, 1], [0, 0]]), ["bg", "fg"])
    json_path, csv_path = save_metrics(m, tmp_path, "metrics")
    data = json.loads(json_path.read_text())
    assert data["mIoU"] == pytest.approx(0.375) and data["per_class"][1]["Acc"] is None  # NaN -> null
    rows = list(csv.DictReader(csv_path.open()))
    assert rows[0]["class"] == "bg" and float(rows[0]["IoU"]) == pytest.approx(0.75) and rows[1]["Acc"] == ""
