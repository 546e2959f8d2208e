"""ONNX export of every detector family, checked detection by detection against PyTorch with onnxruntime.

Tiny twins (a four-conv backbone, 32-64 channels, 64-96 px images) stand for
the registered detectors of each family; ``test_every_registered_detector_has_a_family``
fails for a registered name that no family here covers. Random weights often
give equal scores (prior-initialised classifiers), which leaves nothing to
compare; the twins' class heads are re-drawn so that every check pairs real,
distinct detections.
"""

from __future__ import annotations

import fnmatch

import numpy as np
import pytest
import torch
from helpers import TinyBackbone
from torch import nn

import msfusion
from msfusion.export import (
    DETECTOR_DYNAMIC,
    check_detections,
    detector_family,
    export_onnx,
    require_onnxruntime_for,
)
from msfusion.models.meta_arch.detector import build_detector

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one thread

# Registered detector names -> the family test that covers them.
FAMILIES = {
    "torchvision": ["faster_rcnn_*", "mask_rcnn_*", "cascade_mask_rcnn_*", "retinanet_*", "fcos_*", "test_retinanet_*"],
    "panoptic_fpn": ["panoptic_fpn_*", "test_panoptic_fpn"],
    "rt_detr": ["rt_detr_*"],
    "deformable_detr": ["deformable_detr_*"],
    "yolo": ["yolo*"],
}


def _torchvision_twin(arch: str) -> nn.Module:
    torch.manual_seed(0)
    if "rcnn" in arch:
        extra = dict(representation=64, mask_chs=16, rpn_pre_nms_top_n_test=64, rpn_post_nms_top_n_test=32,
                     box_detections_per_img=10, box_score_thresh=0.0)  # fmt: skip
    else:
        extra = dict(topk_candidates=32, detections_per_img=10, score_thresh=0.0)
    model = build_detector(
        arch, backbone=TinyBackbone(), num_classes=3, neck_kwargs=dict(out_chs=64), min_size=64, max_size=96, **extra
    )
    if arch == "retinanet":  # its prior-initialised classifier scores every anchor 0.01: spread them
        nn.init.normal_(model.head.classification_head.cls_logits.weight, std=0.5)
    return model


def _check(report: dict, dynamic: bool = True) -> None:
    assert report["max_abs_diff"] <= report["atol"] * 100  # boxes: relative to the box magnitude (<= 100 px)
    for size, check in report["checks"].items():
        assert check["ok"], (size, check)
        assert check["matched"] == check["detections"][0] == check["detections"][1] > 0, (size, check)
    if dynamic:
        assert {"height", "width"} <= set(report["dynamic_axes"])


@pytest.mark.parametrize(
    "arch", ["faster_rcnn", "mask_rcnn", "retinanet", "fcos", pytest.param("cascade_mask_rcnn", marks=pytest.mark.slow)]
)
def test_torchvision_detectors_export_with_dynamic_image_size(arch, tmp_path):
    model = _torchvision_twin(arch)
    path = tmp_path / f"{arch}.onnx"
    report = export_onnx(model, path, (1, 3, 96, 80))
    assert report["family"] == "torchvision" and report["exporter"] == "torchscript"
    assert report["dynamic"] == DETECTOR_DYNAMIC["torchvision"]
    assert report["outputs"] == ["boxes", "scores", "labels"] + (["masks"] if "mask" in arch else [])
    assert list(report["checks"]) == ["96x80", "59x133"]
    _check(report)
    # A third size, never seen by the exporter or the check: same detections.
    image = torch.rand(3, 70, 90, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model.eval()([image])[0]
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": image.numpy()})
    got = dict(zip(report["outputs"], got, strict=True))
    result = check_detections({k: v.numpy() for k, v in expected.items() if k in got}, got)
    assert result["ok"] and result["matched"] == len(expected["scores"]) > 0


def test_panoptic_fpn_exports_detections_and_semantic_map(tmp_path):
    torch.manual_seed(0)
    model = msfusion.create_model("test_panoptic_fpn", box_score_thresh=0.0)
    report = export_onnx(model, tmp_path / "panoptic.onnx", (1, 3, 96, 80))
    assert report["family"] == "panoptic_fpn" and report["exporter"] == "torchscript"
    assert report["outputs"] == ["boxes", "scores", "labels", "masks", "semantic"]
    _check(report)
    assert all(c["semantic_differing"] == 0 for c in report["checks"].values())


def _detr_twin(arch: str) -> nn.Module:
    torch.manual_seed(0)
    if arch == "rt_detr":
        config = dict(encoder_layers=1, d_model=32, encoder_hidden_dim=32, encoder_ffn_dim=64, decoder_ffn_dim=64,
                      decoder_layers=2, encoder_attention_heads=2, decoder_attention_heads=2, num_queries=12,
                      num_denoising=4, image_size=64)  # fmt: skip
    else:
        config = dict(encoder_layers=1, decoder_layers=2, d_model=32, encoder_ffn_dim=64, decoder_ffn_dim=64,
                      encoder_attention_heads=2, decoder_attention_heads=2, num_queries=12, encoder_n_points=2,
                      decoder_n_points=2, min_size=64, max_size=96)  # fmt: skip
    model = build_detector(arch, backbone="test_mscan", num_classes=4, num_top=10, **config)
    # transformers initialises the class heads to the prior (zero weights) and, in RT-DETR, its encoder output
    # near zero: every score ties. Re-drawn weights give distinct detections to compare.
    for module in model.detr.modules():
        if arch == "rt_detr" and isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(module.weight, std=0.2)
        elif arch == "rt_detr" and isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
            nn.init.ones_(module.weight)
        elif isinstance(module, nn.Linear) and module.out_features == 3:
            nn.init.normal_(module.weight, std=1.0)
    return model


def _skip_below_the_onnxruntime_for(family: str) -> None:
    try:
        require_onnxruntime_for(family)
    except ValueError as err:  # the installed onnxruntime cannot check this family's graph
        pytest.skip(str(err))


def test_an_onnxruntime_too_old_for_a_detr_family_is_refused_before_exporting(monkeypatch):
    monkeypatch.setattr(ort, "__version__", "1.28.0")
    with pytest.raises(ValueError, match=r"rt_detr detector needs onnxruntime >= 1.29, found 1.28.0: .*Cos"):
        require_onnxruntime_for("rt_detr")
    require_onnxruntime_for("deformable_detr")  # 1.25 is enough there
    require_onnxruntime_for("torchvision")
    monkeypatch.setattr(ort, "__version__", "1.24.4")
    with pytest.raises(ValueError, match=r"onnxruntime >= 1.25, found 1.24.4"):
        require_onnxruntime_for("deformable_detr")


@pytest.mark.slow
def test_rt_detr_exports_with_dynamic_image_size(tmp_path):
    pytest.importorskip("transformers")
    _skip_below_the_onnxruntime_for("rt_detr")
    report = export_onnx(_detr_twin("rt_detr"), tmp_path / "rt_detr.onnx", (1, 3, 96, 80))
    assert report["family"] == "rt_detr" and report["exporter"] == "torchscript"
    assert report["outputs"] == ["boxes", "scores", "labels"]
    _check(report)


@pytest.mark.slow
def test_deformable_detr_exports_at_a_fixed_image_size(tmp_path):
    pytest.importorskip("transformers")
    _skip_below_the_onnxruntime_for("deformable_detr")
    report = export_onnx(_detr_twin("deformable_detr"), tmp_path / "deformable.onnx", (1, 3, 96, 80))
    # transformers' deformable attention freezes the feature-map sizes: the dynamic graph fails the second size.
    assert report["exporter"] == "torchscript_static" and report["dynamic_axes"] == ["detections"]
    assert report["notes"] and report["notes"][0].startswith("torchscript: onnxruntime differs")
    _check(report, dynamic=False)


def test_yolo_exports_through_ultralytics(tmp_path, monkeypatch):
    pytest.importorskip("ultralytics")
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    from msfusion.models.meta_arch.yolo import build_yolo_detector

    torch.manual_seed(0)
    model = build_yolo_detector("yolov8n", num_classes=4, image_size=64)
    report = export_onnx(model, tmp_path / "yolo.onnx", (1, 3, 64, 64))
    assert report["family"] == "yolo" and report["exporter"] == "ultralytics"
    assert list(report["checks"]) == ["64x64", "96x32"]
    _check(report)
    assert not list(tmp_path.glob("*.pt")) and sorted(p.name for p in tmp_path.iterdir()) == [
        "yolo.onnx",
        "yolo.onnx.log",
    ]


def test_exporter_output_goes_to_the_log_not_the_terminal(tmp_path, capfd):
    report = export_onnx(_torchvision_twin("fcos"), tmp_path / "fcos.onnx", (1, 3, 96, 80))
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    log = (tmp_path / "fcos.onnx.log").read_text()
    assert report["log"] == str(tmp_path / "fcos.onnx.log") and "TracerWarning" in log


class _Spectral(nn.Module):
    feature_info = [dict(chs=32, reduction=8, module="s")]

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 32, 8, stride=8)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        y = self.conv(x)
        return [y * torch.linalg.svdvals(y).mean()]  # no ONNX operator


def test_failure_names_each_route_and_the_log(tmp_path, capfd):
    model = build_detector("fcos", backbone=_Spectral(), neck=None, num_classes=3, min_size=64, max_size=64)
    path = tmp_path / "bad.onnx"
    with pytest.raises(ValueError) as info:
        export_onnx(model, path, (1, 3, 64, 64))
    message = str(info.value)
    assert "torchscript: " in message and "torchscript_static: " in message and "svd" in message
    assert str(tmp_path / "bad.onnx.log") in message and len(message.splitlines()) == 3
    assert not path.exists() and (tmp_path / "bad.onnx.log").stat().st_size > 0
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_cli_prints_a_short_reason_on_failure(tmp_path, capfd):
    from msfusion.cli import main

    assert main(["export", "test_panoptic_fpn", "--onnx", str(tmp_path / "p.onnx"), "--exporter", "dynamo"]) == 2
    out, err = capfd.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and "torchscript or torchscript_static" in err


def test_check_detections_pairs_tied_scores_in_any_order():
    boxes = np.array([[0, 0, 10, 10], [5, 5, 20, 20], [1, 2, 3, 4]], dtype=np.float32)
    expected = {"boxes": boxes, "scores": np.array([0.9, 0.5, 0.5]), "labels": np.array([1, 2, 2])}
    swapped = {k: v[[0, 2, 1]] for k, v in expected.items()}
    assert check_detections(expected, swapped)["ok"]
    moved = {**swapped, "boxes": swapped["boxes"] + np.array([0, 0, 0, 1], dtype=np.float32)}
    assert not check_detections(expected, moved)["ok"]
    # One detection chosen differently among equal scores at the cut-off passes; below it, it fails.
    cut = {k: v.copy() for k, v in expected.items()}
    cut["boxes"][2] = [30, 30, 40, 40]
    assert check_detections(expected, cut)["ok"]
    cut["scores"] = np.array([0.9, 0.6, 0.4])
    assert not check_detections(expected, cut)["ok"]


def test_every_registered_detector_has_a_family():
    names = msfusion.list_models(kind="detector")
    uncovered = [n for n in names if not any(fnmatch.fnmatchcase(n, p) for ps in FAMILIES.values() for p in ps)]
    assert not uncovered, f"no export family test covers {uncovered}"
    assert set(FAMILIES) == set(DETECTOR_DYNAMIC)
    assert detector_family(_torchvision_twin("fcos")) == "torchvision" and detector_family(nn.Identity()) is None


@pytest.mark.slow
def test_cednet_pyramid_detector_exports(tmp_path):
    """CEDNet's own P3-P7 pyramid crops with a ceil division that ONNX's truncating Div once turned into a floor."""
    torch.manual_seed(0)
    model = msfusion.create_model("test_retinanet_cednet", score_thresh=0.0, detections_per_img=10)
    nn.init.normal_(model.head.classification_head.cls_logits.weight, std=0.5)
    report = export_onnx(model, tmp_path / "cednet.onnx", (1, 3, 96, 80))
    assert report["exporter"] == "torchscript"
    _check(report)
