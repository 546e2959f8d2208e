"""Registered detectors of the papers' COCO experiments (kind ``"detector"``).

Each preset is ``build_detector`` with one paper's setup; keyword arguments
override it (``*_kwargs`` dicts are merged key by key). ``num_classes``
counts the background (torchvision's convention).

- **CEDNet** ("A Cascade Encoder-Decoder Network for Dense Prediction", Zhang
  et al., arXiv 2302.06052), Table 2(b)-(d): the backbone carries its own
  pyramid and there is no separate neck. RetinaNet reads P3-P7 (strides
  8-128: 1x1 conv + LayerNorm to 256 channels on the last stage's 1/8, 1/16,
  1/32 maps, then two 3x3 stride-2 conv + LayerNorm levels); Mask R-CNN and
  Cascade Mask R-CNN read P2-P6 (P2 = LayerNorm-then-3x3-conv of the
  upsampled P3 plus the reduced stride-4 map; one extra level). Drop path
  0.2 for T; the Cascade head is four 3x3 convs with BatchNorm and one FC (the
  official configs use SyncBN). 80 COCO classes (``num_classes=81``).
- **FINE** ("Context-Guided Semantic Alignment for Feature Fusion Networks",
  Lee et al., arXiv 2606.14005), Table 1 "Classic Object Detectors":
  torchvision's ResNet-50 FPN Faster R-CNN, RetinaNet and FCOS (the
  torchvision reference recipe, 91 classes), without and with FINE in the
  FPN's top-down fusions.
- **MSCSA** ("Vision Backbone Enhancement via Multi-Stage Cross-Scale
  Attention", Shang et al., arXiv 2308.05872), Table 2: mmdetection's Mask
  R-CNN, Cascade Mask R-CNN and RetinaNet with ResNet-50 (and Mask R-CNN with
  PVTv2-B0) plus the MSCSA add-on between the backbone and the FPN, with the
  add-on settings of Table 7 (ResNet-50: pooling to 1/32, squeeze 1/4, one
  block, 8 heads of dimension 32, MLP ratio 2; PVTv2-B0: squeeze 3/4, head
  dimension 15). mmdetection's RetinaNet builds P6 from C5 (``on_input``)
  without a ReLU before P7, and its Cascade head is two FC layers. 80 classes.

The published figures (parameters in M, "FLOPs" in G = multiply-adds) are
recorded with each preset; CEDNet and MSCSA count at 800x1280 with
mmdetection's ``get_flops`` (``msfusion.models.meta_arch.detector.DetectorComplexity``
reproduces it: box heads on 1000 RoIs, mask heads on 100). FINE's baseline
figures are torchvision's published ones (134.4 / 151.5 / 128.2 G), which the
same count reproduces at an 800x800 input.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from msfusion.models.meta_arch.detector import build_detector
from msfusion.registry import PaperFigures, register_model

__all__: list[str] = []

COCO_CLASSES_WITH_BACKGROUND = 81  # 80 categories, mapped to 1..80, plus background
TORCHVISION_COCO_CLASSES = 91  # category ids 1..90 as labels, plus background
R50_STAGES = dict(out_indices=(1, 2, 3, 4))  # C2-C5: ResNet's stride-2 stem output is not a stage


def _merge(defaults: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    out = dict(defaults)
    for key, value in kwargs.items():
        if key.endswith("_kwargs") and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def _create(arch: str, defaults: dict[str, Any], kwargs: dict[str, Any]) -> nn.Module:
    cfg = _merge(defaults, kwargs)
    cfg.setdefault("num_classes", COCO_CLASSES_WITH_BACKGROUND)
    return build_detector(arch, **cfg)


def _cednet(pyramid: str, drop_path_rate: float) -> dict[str, Any]:
    return dict(
        backbone="cednet_next_t",
        neck=None,
        backbone_kwargs=dict(pyramid=pyramid, drop_path_rate=drop_path_rate, layer_scale_init=1e-6),
    )


def _r50_fpn(fine: bool) -> dict[str, Any]:
    return dict(backbone="resnet50", backbone_kwargs=dict(R50_STAGES), fine=fine, num_classes=TORCHVISION_COCO_CLASSES)


def _mscsa(family: str) -> dict[str, Any]:
    # addon="mscsa" takes the backbone's Table 7 row itself (msfusion.models.addons.mscsa.mscsa_config).
    kwargs = dict(R50_STAGES) if family == "resnet50" else {}
    return dict(backbone=family, backbone_kwargs=kwargs, addon="mscsa")


def _cednet_paper(params: float, gflops: float) -> PaperFigures:
    return PaperFigures(
        params_m=params,
        gmacs=gflops,
        input_size=(3, 800, 1280),
        source="CEDNet paper (arXiv 2302.06052) Table 2",
        macs_rules="mmcv",
        notes="mmdetection get_flops (backbone, neck, RPN, box head on 1000 RoIs, mask head on 100)",
    )


def _fine_paper(params: float, gflops: float) -> PaperFigures:
    return PaperFigures(
        params_m=params,
        gmacs=gflops,
        input_size=(3, 800, 800),
        source="FINE paper (arXiv 2606.14005) Table 1",
        notes="torchvision's reference figures (91 classes), which a count at 800x800 reproduces",
    )


def _mscsa_paper(gflops: float, baseline: float, rules: str = "mmcv") -> PaperFigures:
    # PVTv2's detection figures come from PVT's get_flops, which adds the attention matrix products to
    # mmcv's count (mmcv skips matmuls); torchprofile counts them: 195.8 -> 198.5 G against 196 -> 199
    # (mmcv alone: 180.1 -> 181.8 G).
    how = "mmdetection get_flops" if rules == "mmcv" else "PVT's get_flops (mmcv + attention products)"
    return PaperFigures(
        gmacs=gflops,
        input_size=(3, 800, 1280),
        source="MSCSA paper (arXiv 2308.05872) Table 2",
        macs_rules=rules,
        notes=f"{how}; the baseline without MSCSA: {baseline} G",
    )


# ---- CEDNet Table 2 ----------------------------------------------------------------------------


@register_model(kind="detector", paper=_cednet_paper(39, 255), backbone="cednet_next_t")
def retinanet_cednet_next_t(**kwargs: Any) -> nn.Module:
    """RetinaNet on CEDNet-NeXt-T's P3-P7 pyramid (CEDNet Table 2(b): 39M, 255G, 48.3 AP)."""
    return _create("retinanet", _cednet("p3p7", 0.2), kwargs)


@register_model(kind="detector", paper=_cednet_paper(49, 274), backbone="cednet_next_t")
def mask_rcnn_cednet_next_t(**kwargs: Any) -> nn.Module:
    """Mask R-CNN on CEDNet-NeXt-T's P2-P6 pyramid (CEDNet Table 2(c): 49M, 274G, 49.2 box / 44.1 mask AP)."""
    return _create("mask_rcnn", _cednet("p2p6", 0.2), kwargs)


@register_model(kind="detector", paper=_cednet_paper(87, 753), backbone="cednet_next_t")
def cascade_mask_rcnn_cednet_next_t(**kwargs: Any) -> nn.Module:
    """Cascade Mask R-CNN on CEDNet-NeXt-T's P2-P6 (CEDNet Table 2(d): 87M, 753G, 52.5 box / 45.9 mask AP)."""
    return _create("cascade_mask_rcnn", {**_cednet("p2p6", 0.2), "box_head": "4conv1fc"}, kwargs)


# ---- FINE Table 1 ------------------------------------------------------------------------------


@register_model(kind="detector", paper=_fine_paper(41.8, 134.4), backbone="resnet50")
def faster_rcnn_r50_fpn(**kwargs: Any) -> nn.Module:
    """torchvision's Faster R-CNN ResNet-50 FPN (FINE Table 1 baseline: 41.8M, 134.4G, 37.0 AP)."""
    return _create("faster_rcnn", _r50_fpn(False), kwargs)


@register_model(kind="detector", paper=_fine_paper(42.8, 135.5), backbone="resnet50")
def faster_rcnn_r50_fpn_fine(**kwargs: Any) -> nn.Module:
    """Faster R-CNN ResNet-50 FPN + FINE (FINE Table 1: 42.8M, 135.5G, 39.1 AP)."""
    return _create("faster_rcnn", _r50_fpn(True), kwargs)


@register_model(kind="detector", paper=_fine_paper(34.0, 151.5), backbone="resnet50")
def retinanet_r50_fpn(**kwargs: Any) -> nn.Module:
    """torchvision's RetinaNet ResNet-50 FPN (FINE Table 1 baseline: 34.0M, 151.5G, 36.4 AP)."""
    return _create("retinanet", _r50_fpn(False), kwargs)


@register_model(kind="detector", paper=_fine_paper(35.0, 152.9), backbone="resnet50")
def retinanet_r50_fpn_fine(**kwargs: Any) -> nn.Module:
    """RetinaNet ResNet-50 FPN + FINE (FINE Table 1: 35.0M, 152.9G, 37.3 AP)."""
    return _create("retinanet", _r50_fpn(True), kwargs)


@register_model(kind="detector", paper=_fine_paper(32.3, 128.2), backbone="resnet50")
def fcos_r50_fpn(**kwargs: Any) -> nn.Module:
    """torchvision's FCOS ResNet-50 FPN (FINE Table 1 baseline: 32.3M, 128.2G, 39.2 AP)."""
    return _create("fcos", _r50_fpn(False), kwargs)


@register_model(kind="detector", paper=_fine_paper(33.3, 129.6), backbone="resnet50")
def fcos_r50_fpn_fine(**kwargs: Any) -> nn.Module:
    """FCOS ResNet-50 FPN + FINE (FINE Table 1: 33.3M, 129.6G, 39.8 AP)."""
    return _create("fcos", _r50_fpn(True), kwargs)


@register_model(kind="detector", backbone="resnet50")
def mask_rcnn_r50_fpn(**kwargs: Any) -> nn.Module:
    """torchvision's Mask R-CNN ResNet-50 FPN (44.45M with 91 classes)."""
    return _create("mask_rcnn", _r50_fpn(False), kwargs)


@register_model(kind="detector", backbone="resnet50")
def mask_rcnn_r50_fpn_fine(**kwargs: Any) -> nn.Module:
    """Mask R-CNN ResNet-50 FPN + FINE in the FPN's top-down fusions."""
    return _create("mask_rcnn", _r50_fpn(True), kwargs)


# ---- MSCSA Table 2 -----------------------------------------------------------------------------


@register_model(kind="detector", paper=_mscsa_paper(271, 260), backbone="resnet50_mscsa")
def mask_rcnn_r50_mscsa(**kwargs: Any) -> nn.Module:
    """Mask R-CNN, ResNet-50 + MSCSA + FPN (MSCSA Table 2: 271G, 42.2 box / 38.7 mask AP)."""
    return _create("mask_rcnn", _mscsa("resnet50"), kwargs)


@register_model(kind="detector", paper=_mscsa_paper(253, 239), backbone="resnet50_mscsa")
def retinanet_r50_mscsa(**kwargs: Any) -> nn.Module:
    """RetinaNet, ResNet-50 + MSCSA + FPN, P6 from C5 (MSCSA Table 2: 253G, 39.0 AP)."""
    defaults = {**_mscsa("resnet50"), "neck_kwargs": dict(extra_source="c5", relu_before_extra=False)}
    return _create("retinanet", defaults, kwargs)


@register_model(kind="detector", paper=_mscsa_paper(405, 394), backbone="resnet50_mscsa")
def cascade_mask_rcnn_r50_mscsa(**kwargs: Any) -> nn.Module:
    """Cascade Mask R-CNN, ResNet-50 + MSCSA + FPN (MSCSA Table 2: 405G, 43.4 box / 37.7 mask AP)."""
    return _create("cascade_mask_rcnn", _mscsa("resnet50"), kwargs)


@register_model(kind="detector", paper=_mscsa_paper(199, 196, rules="torchprofile"), backbone="pvt_v2_b0_mscsa")
def mask_rcnn_pvt_v2_b0_mscsa(**kwargs: Any) -> nn.Module:
    """Mask R-CNN, PVTv2-B0 + MSCSA + FPN (MSCSA Table 2: 199G, 41.0 box / 37.8 mask AP)."""
    return _create("mask_rcnn", _mscsa("pvt_v2_b0"), kwargs)


# ---- tiny variants for the tests -----------------------------------------------------------------


@register_model(kind="detector", backbone="test_cednet_next")
def test_retinanet_cednet(**kwargs: Any) -> nn.Module:
    """A tiny RetinaNet on a tiny CEDNet's P3-P7 pyramid (tests only)."""
    defaults = dict(
        backbone="test_cednet_next",
        neck=None,
        backbone_kwargs=dict(pyramid="p3p7", pyramid_chs=32),
        num_classes=4,
        min_size=64,
        max_size=128,
    )
    return _create("retinanet", defaults, kwargs)
