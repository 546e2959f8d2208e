"""FINE's registered models: Semantic FPN (App. D), torchvision detectors, RT-DETR and YOLO (Table 1).

Paper: "Context-Guided Semantic Alignment for Feature Fusion Networks"
(FINE), Lee, Lee and Kang, arXiv 2606.14005. Each model comes without and
with FINE; ``num_classes`` of a detector counts the background.

**Semantic FPN** (Appendix D): FINE inserted into Semantic FPN
(Kirillov et al., "Panoptic Feature Pyramid Networks", arXiv 1901.02446) for
Cityscapes semantic segmentation with OpenMMLab's recipe at 512x1024, mIoU
74.5 -> 76.4 (Table 7: 28.5 M -> 30.1 M parameters, 90.9 -> 91.7 GFLOPs).

The composition follows mmsegmentation's Semantic FPN configuration, which the
appendix's recipe uses: a ResNet-50 V1c backbone (deep stem of three 3x3
convs; timm's ``resnet50c``), an FPN with 256 channels on strides 4-32, and the
Semantic FPN head with 128 channels, BatchNorm (SyncBN there) and dropout 0.1.

FINE goes where the paper puts it (Sec. 5.3.2): at the l = 3 and l = 2 fusion
steps, whose F_low is at stride 16 (k = 1) and 8 (k = 2), with r = 2; the
stride-4 fusion step stays plain. ``fine={...}`` passes FINE options (e.g.
``{"preset": "earlier"}`` for the authors' earlier experimental version: 0.79 M
parameters per module, 1.58 M for the two, which is the +1.6 M of Table 7, and
+0.83 G multiply-adds at 512x1024 against the table's +0.8 G; the paper's
module adds 0.53 M and 0.54 G).

**Classic object detectors** (Table 1): torchvision's ResNet-50 FPN Faster
R-CNN, RetinaNet and FCOS (the torchvision reference recipe, 91 classes),
without and with FINE in the FPN's top-down fusions (``fine=True``). The
recorded baseline figures are torchvision's published ones (134.4 / 151.5 /
128.2 G), which ``DetectorComplexity`` reproduces at an 800x800 input.

**RT-DETR** ("DETRs Beat YOLOs on Real-time Object Detection", Zhao et al.,
arXiv 2304.08069) R18 / R50 with and without FINE (Table 1: 20.2 M / 61.7 G,
42.9 M / 138.0 G; +FINE 21.2 M / 62.9 G, 44.0 M / 139.2 G at 640 x 640), and
RT-DETRv2 (Lv et al., arXiv 2407.17140) with the same encoder and sizes. The
backbones are ResNet-vd (deep 3-conv stem, average-pool shortcut
downsampling), i.e. timm's ``resnet18d`` / ``resnet50d``, with frozen
BatchNorm; R18 uses the encoder's CSP expansion 0.5 and 3 decoder layers, R50
expansion 1.0 and 6 layers. The published "GFLOPs" count 2 FLOPs per
multiply-add (the recorded figures are halved to multiply-adds).
transformers (``msfusion[detr]``) is imported when one is built.

**YOLO** (Table 1): ``yolov8s``, ``yolov10s``, ``yolo12s`` and their
``_fine`` versions, FINE at the PAN's two top-down fusions; ultralytics
(AGPL-3.0, ``msfusion[ultralytics]``) is imported when one is built.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

from torch import nn

from msfusion.models.meta_arch.segmentor import build_segmentor
from msfusion.models.presets import COCO_CLASSES_WITH_BACKGROUND, create_detector, create_detr
from msfusion.registry import PaperFigures, register_model

__all__ = ["FINE_STRIDES", "R50_STAGES", "TORCHVISION_COCO_CLASSES"]

TORCHVISION_COCO_CLASSES = 91  # category ids 1..90 as labels, plus background
R50_STAGES = dict(out_indices=(1, 2, 3, 4))  # C2-C5: ResNet's stride-2 stem output is not a stage


# ---- Semantic FPN (App. D, Table 7) ----------------------------------------------------------


# F_low strides of the fusion steps that get FINE (l = 2 and l = 3, Sec. 3 and 5.3.2).
FINE_STRIDES = (8, 16)


def _create_semantic_fpn(
    *,
    fine: bool | Mapping[str, Any],
    backbone: str = "resnet50c",
    num_classes: int = 19,
    out_chs: int = 256,
    channels: int = 128,
    fine_strides: tuple[int, ...] = FINE_STRIDES,
    backbone_kwargs: dict[str, Any] | None = None,
    neck_kwargs: dict[str, Any] | None = None,
    head_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    neck_kwargs = {"out_chs": out_chs, **(neck_kwargs or {})}
    if fine is not False:
        options = dict(fine) if isinstance(fine, Mapping) else {}
        neck_kwargs["align"] = {s: {"type": "fine", **options} for s in fine_strides}
    return build_segmentor(
        backbone,
        neck="fpn",
        head="semantic_fpn",
        num_classes=num_classes,
        backbone_kwargs=backbone_kwargs,
        neck_kwargs=neck_kwargs,
        head_kwargs={"channels": channels, "dropout": 0.1, "norm": "bn", **(head_kwargs or {})},
        **kwargs,
    )


# _cityscapes(params_m, gmacs): Table 7's Cityscapes figures at 512 x 1024.
_cityscapes = partial(
    PaperFigures,
    input_size=(3, 512, 1024),
    source="FINE (arXiv 2606.14005) Table 7, Cityscapes",
    notes="19 classes; the +1.6 M / +0.8 G of FINE match the authors' earlier version (fine={'preset': "
    "'earlier'}); the paper's module (default) adds 0.53 M / 0.54 G",
)


@register_model(kind="segmentor", backbone="resnet50c", paper=_cityscapes(28.5, 90.9))
def semantic_fpn_r50(**kwargs: Any) -> nn.Module:
    """Semantic FPN, ResNet-50 V1c (FINE Table 7 baseline, mIoU 74.5 on Cityscapes)."""
    return _create_semantic_fpn(fine=False, **kwargs)


@register_model(kind="segmentor", backbone="resnet50c", paper=_cityscapes(30.1, 91.7))
def semantic_fpn_r50_fine(fine: bool | Mapping[str, Any] = True, **kwargs: Any) -> nn.Module:
    """Semantic FPN, ResNet-50 V1c, FINE at the stride-16 and stride-8 fusions (Table 7, mIoU 76.4)."""
    return _create_semantic_fpn(fine=fine, **kwargs)


@register_model(kind="segmentor", backbone="resnet10t")
def test_semantic_fpn_fine(**kwargs: Any) -> nn.Module:
    """Tiny Semantic FPN + FINE for fast tests (ResNet-10-T, 32 channels, 2 heads of 16)."""
    return _create_semantic_fpn(
        fine=kwargs.pop("fine", True), backbone="resnet10t", out_chs=32, channels=16, **{"num_classes": 5, **kwargs}
    )


# ---- Classic object detectors (Table 1) ------------------------------------------------------


def _r50_fpn(fine: bool) -> dict[str, Any]:
    return dict(backbone="resnet50", backbone_kwargs=dict(R50_STAGES), fine=fine, num_classes=TORCHVISION_COCO_CLASSES)


# _fine_paper(params_m, gmacs): Table 1's torchvision detectors, whose figures a count at 800 x 800 reproduces.
_fine_paper = partial(
    PaperFigures,
    input_size=(3, 800, 800),
    source="FINE paper (arXiv 2606.14005) Table 1",
    notes="torchvision's reference figures (91 classes), which a count at 800x800 reproduces",
)


@register_model(kind="detector", paper=_fine_paper(41.8, 134.4), backbone="resnet50")
def faster_rcnn_r50_fpn(**kwargs: Any) -> nn.Module:
    """torchvision's Faster R-CNN ResNet-50 FPN (FINE Table 1 baseline: 41.8M, 134.4G, 37.0 AP)."""
    return create_detector("faster_rcnn", _r50_fpn(False), kwargs)


@register_model(kind="detector", paper=_fine_paper(42.8, 135.5), backbone="resnet50")
def faster_rcnn_r50_fpn_fine(**kwargs: Any) -> nn.Module:
    """Faster R-CNN ResNet-50 FPN + FINE (FINE Table 1: 42.8M, 135.5G, 39.1 AP)."""
    return create_detector("faster_rcnn", _r50_fpn(True), kwargs)


@register_model(kind="detector", paper=_fine_paper(34.0, 151.5), backbone="resnet50")
def retinanet_r50_fpn(**kwargs: Any) -> nn.Module:
    """torchvision's RetinaNet ResNet-50 FPN (FINE Table 1 baseline: 34.0M, 151.5G, 36.4 AP)."""
    return create_detector("retinanet", _r50_fpn(False), kwargs)


@register_model(kind="detector", paper=_fine_paper(35.0, 152.9), backbone="resnet50")
def retinanet_r50_fpn_fine(**kwargs: Any) -> nn.Module:
    """RetinaNet ResNet-50 FPN + FINE (FINE Table 1: 35.0M, 152.9G, 37.3 AP)."""
    return create_detector("retinanet", _r50_fpn(True), kwargs)


@register_model(kind="detector", paper=_fine_paper(32.3, 128.2), backbone="resnet50")
def fcos_r50_fpn(**kwargs: Any) -> nn.Module:
    """torchvision's FCOS ResNet-50 FPN (FINE Table 1 baseline: 32.3M, 128.2G, 39.2 AP)."""
    return create_detector("fcos", _r50_fpn(False), kwargs)


@register_model(kind="detector", paper=_fine_paper(33.3, 129.6), backbone="resnet50")
def fcos_r50_fpn_fine(**kwargs: Any) -> nn.Module:
    """FCOS ResNet-50 FPN + FINE (FINE Table 1: 33.3M, 129.6G, 39.8 AP)."""
    return create_detector("fcos", _r50_fpn(True), kwargs)


@register_model(kind="detector", backbone="resnet50")
def mask_rcnn_r50_fpn(**kwargs: Any) -> nn.Module:
    """torchvision's Mask R-CNN ResNet-50 FPN (44.45M with 91 classes)."""
    return create_detector("mask_rcnn", _r50_fpn(False), kwargs)


@register_model(kind="detector", backbone="resnet50")
def mask_rcnn_r50_fpn_fine(**kwargs: Any) -> nn.Module:
    """Mask R-CNN ResNet-50 FPN + FINE in the FPN's top-down fusions."""
    return create_detector("mask_rcnn", _r50_fpn(True), kwargs)


# ---- RT-DETR (Table 1) -----------------------------------------------------------------------


def _table1_640(
    params: float, gflops: float, what: str, notes: str = "", *, dropped: str = "post-processing"
) -> PaperFigures:
    """Table 1's RT-DETR and YOLO rows at 640 x 640, published as GFLOPs of 2 FLOPs per multiply-add."""
    return PaperFigures(
        params_m=params,
        gmacs=round(gflops / 2, 2),
        input_size=(3, 640, 640),
        source="FINE paper (arXiv 2606.14005) Table 1",
        notes=f"{what}; published as {gflops} GFLOPs = 2 FLOPs per multiply-add (network only, no {dropped})"
        + (f"; {notes}" if notes else ""),
    )


def _rt_detr(depth: int, fine: bool) -> dict[str, Any]:
    size = dict(hidden_expansion=0.5, decoder_layers=3) if depth == 18 else {}
    return dict(backbone=f"resnet{depth}d", frozen_bn=True, fine=fine, **size)


@register_model(kind="detector", paper=_table1_640(20.2, 61.7, "RT-DETRv1 R18"), backbone="resnet18d")
def rt_detr_r18(**kwargs: Any) -> nn.Module:
    """RT-DETR R18-vd (FINE Table 1: 20.2 M, 61.7 GFLOPs, 46.5 AP)."""
    return create_detr("rt_detr", _rt_detr(18, False), kwargs)


@register_model(kind="detector", paper=_table1_640(21.2, 62.9, "RT-DETRv1 R18 + FINE"), backbone="resnet18d")
def rt_detr_r18_fine(**kwargs: Any) -> nn.Module:
    """RT-DETR R18-vd with FINE at the hybrid encoder's two top-down fusions (Table 1: 21.2 M, 62.9 G, 47.3 AP)."""
    return create_detr("rt_detr", _rt_detr(18, True), kwargs)


@register_model(kind="detector", paper=_table1_640(42.9, 138.0, "RT-DETRv1 R50"), backbone="resnet50d")
def rt_detr_r50(**kwargs: Any) -> nn.Module:
    """RT-DETR R50-vd (FINE Table 1: 42.9 M, 138.0 GFLOPs, 52.8 AP)."""
    return create_detr("rt_detr", _rt_detr(50, False), kwargs)


@register_model(kind="detector", paper=_table1_640(44.0, 139.2, "RT-DETRv1 R50 + FINE"), backbone="resnet50d")
def rt_detr_r50_fine(**kwargs: Any) -> nn.Module:
    """RT-DETR R50-vd with FINE in the hybrid encoder (Table 1: 44.0 M, 139.2 G, 53.3 AP)."""
    return create_detr("rt_detr", _rt_detr(50, True), kwargs)


# No published counts for these sizes; counted at RT-DETR's 640 x 640.
_V2 = PaperFigures(input_size=(3, 640, 640), source="RT-DETRv2 (arXiv 2407.17140)", notes="RT-DETR's sizes")


@register_model(kind="detector", paper=_V2, backbone="resnet18d")
def rt_detr_v2_r18(**kwargs: Any) -> nn.Module:
    """RT-DETRv2 R18-vd (arXiv 2407.17140; same sizes as RT-DETR R18)."""
    return create_detr("rt_detr_v2", _rt_detr(18, False), kwargs)


@register_model(kind="detector", paper=_V2, backbone="resnet18d")
def rt_detr_v2_r18_fine(**kwargs: Any) -> nn.Module:
    """RT-DETRv2 R18-vd with FINE in the hybrid encoder."""
    return create_detr("rt_detr_v2", _rt_detr(18, True), kwargs)


@register_model(kind="detector", paper=_V2, backbone="resnet50d")
def rt_detr_v2_r50(**kwargs: Any) -> nn.Module:
    """RT-DETRv2 R50-vd (arXiv 2407.17140)."""
    return create_detr("rt_detr_v2", _rt_detr(50, False), kwargs)


@register_model(kind="detector", paper=_V2, backbone="resnet50d")
def rt_detr_v2_r50_fine(**kwargs: Any) -> nn.Module:
    """RT-DETRv2 R50-vd with FINE in the hybrid encoder."""
    return create_detr("rt_detr_v2", _rt_detr(50, True), kwargs)


# ---- YOLO with FINE in the PAN (Table 1; ultralytics, AGPL-3.0, imported only when built) ----


# The YOLO rows count no NMS.
_yolo_table1 = partial(_table1_640, dropped="NMS")


def _yolo(variant: str, fine: bool, kwargs: dict[str, Any]) -> nn.Module:
    # ultralytics (AGPL-3.0, the msfusion[ultralytics] extra) is imported here, when a model is built.
    from msfusion.models.meta_arch.yolo import build_yolo_detector

    cfg = {"num_classes": COCO_CLASSES_WITH_BACKGROUND, "fine": fine, **kwargs}
    return build_yolo_detector(variant, **cfg)


_TURBO = (
    "the paper's YOLOv12-S is YOLOv12-turbo from the authors' fork (9.1 M: grouped stem convolutions, 5x5 "
    "positional convolution), which installs as a package named 'ultralytics', counted without the attention "
    "products (that turbo counts 19.5 G so, 21.5 G with them); this is PyPI ultralytics' YOLO12-S (9.28 M, "
    "23.4 G, as ultralytics' own model.info() prints)"
)


@register_model(kind="detector", paper=_yolo_table1(11.2, 28.6, "YOLOv8-S"))
def yolov8s(**kwargs: Any) -> nn.Module:
    """YOLOv8-S from ultralytics (AGPL-3.0 extra; FINE Table 1: 11.2 M, 28.6 GFLOPs, 45.0 AP)."""
    return _yolo("yolov8s", False, kwargs)


@register_model(kind="detector", paper=_yolo_table1(12.3, 29.6, "YOLOv8-S + FINE"))
def yolov8s_fine(**kwargs: Any) -> nn.Module:
    """YOLOv8-S with FINE at the PAN's two top-down fusions (Table 1: 12.3 M, 29.6 G, 45.8 AP)."""
    return _yolo("yolov8s", True, kwargs)


@register_model(kind="detector", paper=_yolo_table1(8.1, 24.8, "YOLOv10-S", "with the training-time one-to-many head"))
def yolov10s(**kwargs: Any) -> nn.Module:
    """YOLOv10-S from ultralytics (AGPL-3.0 extra; Table 1: 8.1 M, 24.8 GFLOPs, 46.2 AP)."""
    return _yolo("yolov10s", False, kwargs)


@register_model(kind="detector", paper=_yolo_table1(9.0, 25.7, "YOLOv10-S + FINE"))
def yolov10s_fine(**kwargs: Any) -> nn.Module:
    """YOLOv10-S with FINE at the PAN's two top-down fusions (Table 1: 9.0 M, 25.7 G, 46.7 AP)."""
    return _yolo("yolov10s", True, kwargs)


@register_model(kind="detector", paper=_yolo_table1(9.1, 19.4, "YOLOv12-S", _TURBO))
def yolo12s(**kwargs: Any) -> nn.Module:
    """ultralytics' YOLO12-S (AGPL-3.0 extra), the PyPI stand-in for the paper's YOLOv12-S (Table 1: 9.1 M, 19.4 G)."""
    return _yolo("yolo12s", False, kwargs)


@register_model(kind="detector", paper=_yolo_table1(10.5, 21.2, "YOLOv12-S + FINE", _TURBO))
def yolo12s_fine(**kwargs: Any) -> nn.Module:
    """YOLO12-S with FINE at the PAN's two top-down fusions (Table 1, YOLOv12-S + FINE: 10.5 M, 21.2 G, 48.2 AP)."""
    return _yolo("yolo12s", True, kwargs)
