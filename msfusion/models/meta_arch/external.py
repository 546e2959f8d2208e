"""Registered DETR-family and YOLO detectors of the papers (kind ``"detector"``), their libraries imported lazily.

``build_detector(arch, ...)`` with ``arch`` one of ``EXTERNAL_ARCHS`` lands
here (``build_external_detector``): the DETR archs and the presets below
import ``msfusion.models.meta_arch.detr`` (Hugging Face transformers, the optional extra
``pip install "msfusion[detr]"``) only when called, so ``import msfusion``
works without it. ``arch="yolo"`` with ``backbone`` a YOLO variant
(``"yolov8s"``) builds ultralytics' model (AGPL-3.0, the optional extra
``msfusion[ultralytics]``; ``msfusion.models.meta_arch.yolo``) for the same engine;
the registered ``yolov8s``, ``yolov10s``, ``yolo12s`` and their ``_fine``
versions are FINE Table 1's YOLO rows, ultralytics imported when one is built.
``num_classes`` counts the background (torchvision's convention): the
detectors have ``num_classes - 1`` labels.

- **RT-DETR** ("DETRs Beat YOLOs on Real-time Object Detection", Zhao et
  al., arXiv 2304.08069) R18 / R50 with and without FINE ("Context-Guided
  Semantic Alignment for Feature Fusion Networks", Lee et al., arXiv
  2606.14005, Table 1: 20.2 M / 61.7 G, 42.9 M / 138.0 G; +FINE 21.2 M /
  62.9 G, 44.0 M / 139.2 G at 640 x 640). The backbones are ResNet-vd (deep
  3-conv stem, average-pool shortcut downsampling), i.e. timm's
  ``resnet18d`` / ``resnet50d``, with frozen BatchNorm; R18 uses the
  encoder's CSP expansion 0.5 and 3 decoder layers, R50 expansion 1.0 and 6
  layers. The published "GFLOPs" count 2 FLOPs per multiply-add (the
  recorded figures are halved to multiply-adds).
- **RT-DETRv2** (Lv et al., arXiv 2407.17140): the same encoder and sizes.
- **Deformable DETR** ("Deformable DETR: Deformable Transformers for
  End-to-End Object Detection", Zhu et al., arXiv 2010.04159) R50: 40 M /
  173 G (MSCSA, arXiv 2308.05872, Table 2 baseline), torchvision-style
  ResNet-50 with frozen BatchNorm, stem and first stage frozen; with the
  MSCSA add-on (Table 7 settings: pooling to 1/32, squeeze 1/4, one block, 8
  heads of 32, MLP ratio 2; Table 2: 185 G). The 173 G is the Deformable DETR
  paper's Table 1 figure, counted as DETR counts (Carion et al., arXiv
  2005.12872, "FLOPS computation"): the average over the first 100 COCO
  val2017 images resized to shorter side 800 / longer side at most 1333,
  about 0.9 Mpx, not one 800 x 1280 (1.02 Mpx) image. Counted here at 800 x
  1280 it is 195.9 G; at 800 x 1136, the size where transformers' DETR R50
  on the same backbone reaches DETR's published 86 G under the same rules,
  it is 174 G.
- CEDNet (arXiv 2302.06052) Table 2(a): ConvNeXt-T 42 M / 231 G and
  CEDNet-NeXt-T 43 M / 223 G, mmdetection's get_flops at 800 x 1280. The
  authors' released configurations (CEDNet repository, ``ced-mmdet``
  Deformable DETR configs) train both as the plain variant (300 queries, 6 +
  6 layers, no two-stage, no box refinement): ConvNeXt-T with drop path 0.4
  and layer scale initialised to 1.0 behind mmdetection's ChannelMapper (1x1
  conv + GroupNorm per level, one 3x3 stride-2 conv for the fourth level),
  which is what transformers' input projection is. The CEDNet-NeXt-T row
  matches its count (43.1 M / 223.5 G); the ConvNeXt-T row's printed 42 M /
  231 G exceed the released configuration's count (40.9 M / 199.6 G under
  mmcv's rules, the rules that reproduce every CEDNet row of Table 2 within
  0.5%). ``two_stage=True, with_box_refine=True`` reaches the printed 42.0 M
  but only 204.5 G. The preset is that variant, the one whose parameter
  count matches the table; ``two_stage=False, with_box_refine=False`` gives
  the released configuration. Neither explains the printed 231 G. The
  surplus is outside the backbone: the ConvNeXt-S row (317 G) lies 86 G above
  ConvNeXt-T as ours does (86.3 G), and both ConvNeXt rows exceed this count
  by the same 26.3 G. An FPN on C3-C5 in place of the input projections
  (Table 2's caption names FPN as the default fusion "for methods except
  CEDNet") adds 12.1 G of it.
"""

from __future__ import annotations

import functools
from dataclasses import fields
from typing import Any

from torch import nn

from msfusion.models.meta_arch.detector import DETECTOR_ARCHS, DetectorArgs
from msfusion.registry import PaperFigures, register_builder, register_model

__all__ = ["DETR_ARCHS", "EXTERNAL_ARCHS", "build_external_detector"]

DETR_ARCHS = ("deformable_detr", "rt_detr", "rt_detr_v2")
# build_detector's archs built by other libraries: transformers' DETRs and ultralytics' YOLO (backbone = variant).
EXTERNAL_ARCHS = (*DETR_ARCHS, "yolo")
COCO_CLASSES_WITH_BACKGROUND = 81
# build_detector's arguments that only torchvision's detectors use: a DETR accepts them at their defaults only.
_TORCHVISION_ONLY = ("neck", "neck_kwargs", "roi_strides", "representation", "mask_chs", "head_convs")
# Input settings that build_detector and build_detr share, passed on only when the user changed them.
_INPUT = ("min_size", "max_size", "image_mean", "image_std")


def _import_detr():
    # Raises ImportError naming the extra (pip install "msfusion[detr]") when transformers is missing.
    from msfusion.models.meta_arch import detr

    return detr


def build_external_detector(arch: str, args: DetectorArgs) -> nn.Module:
    """``build_detector``'s arguments for a DETR arch or ``"yolo"`` -> ``build_detr`` / ``build_yolo_detector``.

    Arguments that only torchvision's detectors use must keep their defaults
    (a DETR has no FPN neck or RoI heads); ``min_size``, ``max_size``,
    ``image_mean`` and ``image_std`` override the arch's reference input
    pipeline when changed.
    """
    changed = args.changed()
    for key in _TORCHVISION_ONLY:
        if key in changed and not (key == "neck" and changed[key] is None):
            raise ValueError(
                f"{key}={changed[key]!r} sets a part of torchvision's detectors; {arch} has no FPN neck or RoI heads "
                "(its encoder fuses the levels): leave it out"
            )
    # Input settings pass only when changed (the arch has its own reference pipeline); the rest always.
    given = {f.name: getattr(args, f.name) for f in fields(args) if f.name != "extra"}
    out = {k: v for k, v in given.items() if k not in _TORCHVISION_ONLY and (k not in _INPUT or k in changed)}
    extra = dict(args.extra)
    if arch == "yolo":
        # ultralytics' YOLO carries its own backbone and PAN: the variant is named as the backbone.
        from msfusion.models.meta_arch.yolo import VARIANTS  # no ultralytics import at module level

        if not isinstance(out.get("backbone"), str):
            raise ValueError(
                f"arch 'yolo' takes an ultralytics variant as its backbone (it has its own backbone and PAN), "
                f"got {type(out.get('backbone')).__name__}; choose one of {list(VARIANTS)}"
            )
        own = {"backbone", "num_classes", "fine"}
        bad = sorted(k for k in changed if k not in own)
        if bad:
            raise ValueError(f"{bad} do not apply to YOLO (its backbone and PAN are ultralytics'): leave them out")
        from msfusion.models.meta_arch.yolo import build_yolo_detector

        return build_yolo_detector(out["backbone"], num_classes=out["num_classes"], fine=args.fine, **extra)
    return _import_detr().build_detr(arch, **out, **extra)


def _build_yolo_detector(**kwargs: Any) -> nn.Module:
    # Checkpoints name this builder; ultralytics (AGPL-3.0) is imported only here.
    from msfusion.models.meta_arch.yolo import build_yolo_detector

    return build_yolo_detector(**kwargs)


register_builder("build_yolo_detector", _build_yolo_detector)
# ``build_detector(arch, ...)`` finds these archs in DETECTOR_ARCHS; transformers and ultralytics load on first use.
for _arch in EXTERNAL_ARCHS:
    DETECTOR_ARCHS.register(_arch, functools.partial(build_external_detector, _arch))


def _create(arch: str, defaults: dict[str, Any], kwargs: dict[str, Any]) -> nn.Module:
    cfg = dict(defaults)
    for key, value in kwargs.items():
        if key.endswith("_kwargs") and isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    cfg.setdefault("num_classes", COCO_CLASSES_WITH_BACKGROUND)
    return _import_detr().build_detr(arch, **cfg)


def _fine_table1(params: float, gflops: float, what: str) -> PaperFigures:
    return PaperFigures(
        params_m=params,
        gmacs=round(gflops / 2, 2),
        input_size=(3, 640, 640),
        source="FINE paper (arXiv 2606.14005) Table 1",
        notes=f"{what}; published as {gflops} GFLOPs = 2 FLOPs per multiply-add (network only, no post-processing)",
    )


def _rt_detr(depth: int, fine: bool) -> dict[str, Any]:
    size = dict(hidden_expansion=0.5, decoder_layers=3) if depth == 18 else {}
    return dict(backbone=f"resnet{depth}d", frozen_bn=True, fine=fine, **size)


# ---- RT-DETR (FINE Table 1) ----------------------------------------------------------------------


@register_model(kind="detector", paper=_fine_table1(20.2, 61.7, "RT-DETRv1 R18"), backbone="resnet18d")
def rt_detr_r18(**kwargs: Any) -> nn.Module:
    """RT-DETR R18-vd (FINE Table 1: 20.2 M, 61.7 GFLOPs, 46.5 AP)."""
    return _create("rt_detr", _rt_detr(18, False), kwargs)


@register_model(kind="detector", paper=_fine_table1(21.2, 62.9, "RT-DETRv1 R18 + FINE"), backbone="resnet18d")
def rt_detr_r18_fine(**kwargs: Any) -> nn.Module:
    """RT-DETR R18-vd with FINE at the hybrid encoder's two top-down fusions (Table 1: 21.2 M, 62.9 G, 47.3 AP)."""
    return _create("rt_detr", _rt_detr(18, True), kwargs)


@register_model(kind="detector", paper=_fine_table1(42.9, 138.0, "RT-DETRv1 R50"), backbone="resnet50d")
def rt_detr_r50(**kwargs: Any) -> nn.Module:
    """RT-DETR R50-vd (FINE Table 1: 42.9 M, 138.0 GFLOPs, 52.8 AP)."""
    return _create("rt_detr", _rt_detr(50, False), kwargs)


@register_model(kind="detector", paper=_fine_table1(44.0, 139.2, "RT-DETRv1 R50 + FINE"), backbone="resnet50d")
def rt_detr_r50_fine(**kwargs: Any) -> nn.Module:
    """RT-DETR R50-vd with FINE in the hybrid encoder (Table 1: 44.0 M, 139.2 G, 53.3 AP)."""
    return _create("rt_detr", _rt_detr(50, True), kwargs)


# No published counts for these sizes; counted at RT-DETR's 640 x 640.
_V2 = PaperFigures(input_size=(3, 640, 640), source="RT-DETRv2 (arXiv 2407.17140)", notes="RT-DETR's sizes")


@register_model(kind="detector", paper=_V2, backbone="resnet18d")
def rt_detr_v2_r18(**kwargs: Any) -> nn.Module:
    """RT-DETRv2 R18-vd (arXiv 2407.17140; same sizes as RT-DETR R18)."""
    return _create("rt_detr_v2", _rt_detr(18, False), kwargs)


@register_model(kind="detector", paper=_V2, backbone="resnet18d")
def rt_detr_v2_r18_fine(**kwargs: Any) -> nn.Module:
    """RT-DETRv2 R18-vd with FINE in the hybrid encoder."""
    return _create("rt_detr_v2", _rt_detr(18, True), kwargs)


@register_model(kind="detector", paper=_V2, backbone="resnet50d")
def rt_detr_v2_r50(**kwargs: Any) -> nn.Module:
    """RT-DETRv2 R50-vd (arXiv 2407.17140)."""
    return _create("rt_detr_v2", _rt_detr(50, False), kwargs)


@register_model(kind="detector", paper=_V2, backbone="resnet50d")
def rt_detr_v2_r50_fine(**kwargs: Any) -> nn.Module:
    """RT-DETRv2 R50-vd with FINE in the hybrid encoder."""
    return _create("rt_detr_v2", _rt_detr(50, True), kwargs)


# ---- Deformable DETR (MSCSA Table 2, CEDNet Table 2(a)) ---------------------------------------------


def _mmdet_paper(params: float | None, gflops: float, source: str, notes: str) -> PaperFigures:
    return PaperFigures(
        params_m=params, gmacs=gflops, input_size=(3, 800, 1280), source=source, macs_rules="mmcv", notes=notes
    )


def _detr_protocol_paper(params: float | None, gflops: float, source: str, notes: str) -> PaperFigures:
    # Detectron2's flop_count with bmm (one per multiply-add of conv / linear / matrix products): the
    # torchprofile rules. The published figure is a mean over COCO images of about 0.9 Mpx (module doc).
    return PaperFigures(params_m=params, gmacs=gflops, input_size=(3, 800, 1280), source=source, notes=notes)


# torchvision-style ResNet-50 as the official Deformable DETR trains it: frozen BatchNorm, stem and layer1 frozen.
_R50 = dict(backbone="resnet50", frozen_bn=True, frozen_stages=2)


@register_model(
    kind="detector",
    paper=_detr_protocol_paper(
        40,
        173,
        "MSCSA paper (arXiv 2308.05872) Table 2; Deformable DETR README",
        "plain variant; 173 G is DETR's protocol: mean over the first 100 COCO val2017 images at 800 / 1333 "
        "(about 0.9 Mpx; 174 G here at 800 x 1136), not 800 x 1280",
    ),
    backbone="resnet50",
)
def deformable_detr_r50(**kwargs: Any) -> nn.Module:
    """Deformable DETR R50, single-stage without box refinement (40 M, 173 G, 44.5 AP)."""
    return _create("deformable_detr", _R50, kwargs)


@register_model(
    kind="detector",
    paper=_detr_protocol_paper(
        None,
        185,
        "MSCSA paper (arXiv 2308.05872) Table 2",
        "baseline without MSCSA: 173 G, DETR's protocol (module doc); 187 G here at 800 x 1136",
    ),
    backbone="resnet50_mscsa",
)
def deformable_detr_r50_mscsa(**kwargs: Any) -> nn.Module:
    """Deformable DETR R50 + MSCSA (Table 2: 185 G, 45.6 AP); the add-on's BatchNorm stays trainable."""
    from msfusion.models.presets.mscsa import TABLE7

    return _create("deformable_detr", {**_R50, "addon": "mscsa", "addon_kwargs": dict(TABLE7["resnet50"])}, kwargs)


@register_model(
    kind="detector",
    paper=_mmdet_paper(
        42,
        231,
        "CEDNet paper (arXiv 2302.06052) Table 2(a)",
        "two-stage with box refinement, the variant whose count matches (42.0 M, 204.5 G); the authors' "
        "released config is the plain variant, 40.9 M / 199.6 G (module doc)",
    ),
    backbone="convnext_tiny",
)
def deformable_detr_convnext_t(**kwargs: Any) -> nn.Module:
    """Deformable DETR ConvNeXt-T, two-stage with box refinement (42.0 M as printed); drop path 0.4, layer scale 1.0.

    ``two_stage=False, with_box_refine=False`` is the authors' released configuration (40.9 M; module doc).
    """
    defaults = dict(
        backbone="convnext_tiny",
        backbone_kwargs=dict(drop_path_rate=0.4, ls_init_value=1.0),
        two_stage=True,
        with_box_refine=True,
    )
    return _create("deformable_detr", defaults, kwargs)


@register_model(
    kind="detector",
    paper=_mmdet_paper(43, 223, "CEDNet paper (arXiv 2302.06052) Table 2(a)", "plain variant on the last stage's maps"),
    backbone="cednet_next_t",
)
def deformable_detr_cednet_next_t(**kwargs: Any) -> nn.Module:
    """Deformable DETR on CEDNet-NeXt-T's stride 8/16/32 outputs, plain variant (43.1 M; module doc)."""
    defaults = dict(backbone="cednet_next_t", backbone_kwargs=dict(drop_path_rate=0.2, layer_scale_init=1e-6))
    return _create("deformable_detr", defaults, kwargs)


# ---- YOLO with FINE in the PAN (FINE Table 1; ultralytics, AGPL-3.0, imported only when built) ------------


def _yolo_table1(params: float, gflops: float, what: str, notes: str = "") -> PaperFigures:
    return PaperFigures(
        params_m=params,
        gmacs=round(gflops / 2, 2),
        input_size=(3, 640, 640),
        source="FINE paper (arXiv 2606.14005) Table 1",
        notes=f"{what}; published as {gflops} GFLOPs = 2 FLOPs per multiply-add (network only, no NMS)"
        + (f"; {notes}" if notes else ""),
    )


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
