"""MSCSA's registered models: backbones with the add-on (Table 6/7), Semantic FPN (Table 3), detectors (Table 2).

Paper: "Vision Backbone Enhancement via Multi-Stage Cross-Scale Attention",
Shang et al., arXiv 2308.05872. Table 7 gives each backbone's MSCSA
configuration: pooling size, squeeze ratio, depth, heads, head dimension and
MLP ratio.

- ``<backbone>_mscsa`` is a classifier (Fig. 4, App. A): the backbone, MSCSA
  "in parallel" reading all four stages, and a global-average-pool + Linear
  head on the MSCSA output. With ``features_only=True`` it is a backbone
  instead (Fig. 5): the backbone's four maps, each fused with MSCSA's output,
  with the backbone's channels and strides.
- ResNet-18/50, PVTv2-B0/B1/B2, Swin-T and ConvNeXt-T are timm's models. They
  take the stride-4 to stride-32 stages; ResNet's stride-2 stem output is left
  out.
- CoaT Tiny/Small + MSCSA (Table 6/7): timm's CoaT without its parallel
  blocks, i.e. only the four serial stages (``msfusion.models.backbones.coat``). MSCSA takes the place of the
  parallel blocks and pools to 1/16 for classification and 1/32 for dense
  prediction. The 1/32 map is resized up to 1/16 bilinearly (the official
  code's resizing).
- ``semantic_fpn_pvt_v2_b{0,1,2}_mscsa``: the Semantic FPN segmentors of
  Table 3 (App. C.3), with 150 ADE20K classes by default (the rows without
  MSCSA: ``msfusion.models.presets.baselines``).
- Detectors, Table 2: mmdetection's Mask
  R-CNN, Cascade Mask R-CNN and RetinaNet with ResNet-50 (and Mask R-CNN with
  PVTv2-B0) plus the MSCSA add-on between the backbone and the FPN, with the
  add-on settings of Table 7 (ResNet-50: pooling to 1/32, squeeze 1/4, one
  block, 8 heads of dimension 32, MLP ratio 2; PVTv2-B0: squeeze 3/4, head
  dimension 15). mmdetection's RetinaNet builds P6 from C5 (``on_input``)
  without a ReLU before P7, and its Cascade head is two FC layers. 80 classes. Counted at 800x1280 with mmdetection's
  ``get_flops`` (``DetectorComplexity`` reproduces it). Deformable DETR R50 +
  MSCSA (Table 2: 185 G) with Deformable DETR's own settings (frozen BatchNorm,
  stem and first stage frozen; the add-on's BatchNorm trainable).

Not provided: the TopFormer, P2T-Tiny and Shunted-T rows of Table 7. Neither
timm nor msfusion has those backbones. TopFormer+MSCSA also replaces
TopFormer's own Scale-Aware Semantics Extractor and keeps its segmentation
head, so it is a different model rather than an add-on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from msfusion.layers.features import select_features
from msfusion.models.addons import mscsa as _addon
from msfusion.models.addons.mscsa import MSCSA
from msfusion.models.backbones.coat import COAT_CONFIGS, CoaTSerial
from msfusion.models.chain import FeatureChain
from msfusion.models.meta_arch.classifier import Classifier
from msfusion.models.meta_arch.segmentor import build_segmentor
from msfusion.models.presets import create_detector, create_detr
from msfusion.registry import PaperFigures, create_model, register_model

__all__ = [
    "TABLE7",
    "BackboneWithAddon",
    "create_semantic_fpn",
    "ade20k_figures",
    "DEFORMABLE_DETR_R50",
    "detr_protocol_figures",
]

# Table 7's rows of the backbones built here (the add-on's table; TopFormer's rows: msfusion.models.presets.topformer).
TABLE7: dict[str, dict[str, Any]] = {k: v for k, v in _addon.TABLE7.items() if not k.startswith("topformer")}


# Our family name -> (timm model name, feature kwargs). ResNet's stride-2 stem output is not a stage.
_TIMM_BACKBONES: dict[str, tuple[str, dict[str, Any]]] = {
    "resnet18": ("resnet18", dict(out_indices=(1, 2, 3, 4))),
    "resnet50": ("resnet50", dict(out_indices=(1, 2, 3, 4))),
    "pvt_v2_b0": ("pvt_v2_b0", {}),
    "pvt_v2_b1": ("pvt_v2_b1", {}),
    "pvt_v2_b2": ("pvt_v2_b2", {}),
    "swin_t": ("swin_tiny_patch4_window7_224", {}),
    "convnext_t": ("convnext_tiny", {}),
}


class BackboneWithAddon(FeatureChain):
    """A backbone followed by an add-on, exposed as one feature backbone (a ``FeatureChain``).

    This is what ``create_model("<backbone>_mscsa", features_only=True)`` returns.
    The outputs are the add-on's maps, finest first, with the add-on's
    ``feature_info``; for dense MSCSA these are the backbone's channels and strides.
    The input constraint (``size_divisor``, ``min_size``) is the backbone's: the
    add-on takes maps of any size.

    Args:
        backbone: feature producer.
        addon: module list -> list built on ``backbone.feature_info``.
        out_indices: which of the add-on's outputs to return (all by default).
    """

    def __init__(self, backbone: nn.Module, addon: nn.Module, out_indices: Sequence[int] | None = None) -> None:
        super().__init__(backbone, addon)
        info = [dict(f, module=f"addon.{f['module']}") for f in addon.feature_info]
        self.out_indices, self._chain_feature_info = select_features(info, out_indices)

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = self.forward_features(x)
        return [feats[i] for i in self.out_indices]


def _create_backbone(family: str, **kwargs: Any) -> nn.Module:
    if family in COAT_CONFIGS:
        return CoaTSerial(**{**COAT_CONFIGS[family], **kwargs})
    name, feature_kwargs = _TIMM_BACKBONES[family]
    return create_model(name, features_only=True, **{**feature_kwargs, **kwargs})


def _create_mscsa_model(
    family: str,
    *,
    num_classes: int = 1000,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Backbone + MSCSA with Table 7's configuration; ``kwargs`` override it (e.g. ablations)."""
    backbone = _create_backbone(family, **(backbone_kwargs or {}))
    cfg = dict(TABLE7[family])
    dense_pool_stride = cfg.pop("dense_pool_stride", cfg["pool_stride"])
    if features_only:
        cfg["pool_stride"] = dense_pool_stride
        cfg.update(kwargs)
        addon = MSCSA(backbone.feature_info, mode="dense", allow_upsample=True, **cfg)
        return BackboneWithAddon(backbone, addon, out_indices)
    if out_indices is not None:
        raise ValueError("out_indices only applies with features_only=True")
    cfg.update(kwargs)
    addon = MSCSA(backbone.feature_info, mode="classification", allow_upsample=True, **cfg)
    return Classifier(backbone, num_classes, addon=addon)


def _imagenet(base: float, gmacs: float) -> PaperFigures:
    return PaperFigures(
        gmacs=gmacs,
        input_size=(3, 224, 224),
        source="MSCSA Table 6 (ImageNet-1k, 224x224)",
        notes=f"baseline without MSCSA: {base} GFLOPs",
        extra={"baseline_gmacs": base},
    )


@register_model(kind="classifier")
def resnet18_mscsa(**kwargs: Any) -> nn.Module:
    """ResNet-18 + MSCSA (Table 7: 1/32, squeeze 5/8, depth 1, 8 heads, head dim 24, MLP 2)."""
    return _create_mscsa_model("resnet18", **kwargs)


@register_model(kind="classifier", paper=_imagenet(4.1, 4.6))
def resnet50_mscsa(**kwargs: Any) -> nn.Module:
    """ResNet-50 + MSCSA (Table 7: 1/32, squeeze 1/4, depth 1, 8 heads, head dim 32, MLP 2)."""
    return _create_mscsa_model("resnet50", **kwargs)


@register_model(kind="classifier", paper=_imagenet(0.57, 0.65))
def pvt_v2_b0_mscsa(**kwargs: Any) -> nn.Module:
    """PVTv2-B0 + MSCSA (Table 7: 1/32, squeeze 3/4, depth 1, 8 heads, head dim 15, MLP 2)."""
    return _create_mscsa_model("pvt_v2_b0", **kwargs)


@register_model(kind="classifier", paper=_imagenet(2.1, 2.3))
def pvt_v2_b1_mscsa(**kwargs: Any) -> nn.Module:
    """PVTv2-B1 + MSCSA (Table 7: 1/32, squeeze 5/8, depth 1, 8 heads, head dim 24, MLP 2)."""
    return _create_mscsa_model("pvt_v2_b1", **kwargs)


@register_model(kind="classifier")
def pvt_v2_b2_mscsa(**kwargs: Any) -> nn.Module:
    """PVTv2-B2 + MSCSA (Table 7: 1/32, no squeeze, depth 1, 8 heads, head dim 35, MLP 2)."""
    return _create_mscsa_model("pvt_v2_b2", **kwargs)


@register_model(kind="classifier", paper=_imagenet(4.4, 5.0))
def swin_t_mscsa(**kwargs: Any) -> nn.Module:
    """Swin-T + MSCSA (Table 7: 1/32, squeeze 3/4, depth 1, 12 heads, head dim 28, MLP 2)."""
    return _create_mscsa_model("swin_t", **kwargs)


@register_model(kind="classifier", paper=_imagenet(4.5, 5.1))
def convnext_t_mscsa(**kwargs: Any) -> nn.Module:
    """ConvNeXt-T + MSCSA (Table 7: 1/32, squeeze 3/4, depth 1, 12 heads, head dim 28, MLP 2)."""
    return _create_mscsa_model("convnext_t", **kwargs)


@register_model(kind="classifier", paper=_imagenet(4.4, 4.4))
def coat_tiny_mscsa(**kwargs: Any) -> nn.Module:
    """CoaT Tiny, parallel blocks replaced by MSCSA (Table 7: 1/16 (1/32), depth 3, 8 heads, head dim 22, MLP 1.5)."""
    return _create_mscsa_model("coat_tiny", **kwargs)


@register_model(kind="classifier", paper=_imagenet(13.0, 13.0))
def coat_small_mscsa(**kwargs: Any) -> nn.Module:
    """CoaT Small, parallel blocks replaced by MSCSA (Table 7: 1/16 (1/32), depth 3, 8 heads, head dim 52, MLP 2)."""
    return _create_mscsa_model("coat_small", **kwargs)


def create_semantic_fpn(
    family: str,
    *,
    mscsa: bool,
    num_classes: int = 150,
    backbone_kwargs: dict[str, Any] | None = None,
    addon_kwargs: dict[str, Any] | None = None,
    neck_kwargs: dict[str, Any] | None = None,
    head_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Semantic FPN on a backbone, with or without dense MSCSA (Table 3, App. C.3).

    The FPN has 256 channels and the head has 128 channels with dropout 0.1,
    as PVTv2's Semantic FPN configuration has. BN stands in for its SyncBN,
    which is the same on one process and counts the same.
    """
    backbone = _create_backbone(family, **(backbone_kwargs or {}))
    addon = None
    if mscsa:
        cfg = dict(TABLE7[family])
        cfg["pool_stride"] = cfg.pop("dense_pool_stride", cfg["pool_stride"])
        cfg.update(addon_kwargs or {})
        addon = MSCSA(backbone.feature_info, mode="dense", allow_upsample=True, **cfg)
    elif addon_kwargs:
        raise ValueError("addon_kwargs apply to the _mscsa segmentors only")
    return build_segmentor(
        backbone,
        addon=addon,
        neck="fpn",
        head="semantic_fpn",
        num_classes=num_classes,
        neck_kwargs={"out_chs": 256, **(neck_kwargs or {})},
        head_kwargs={"channels": 128, "dropout": 0.1, "norm": "bn", **(head_kwargs or {})},
        **kwargs,
    )


def ade20k_figures(gmacs: float, base: float | None = None) -> PaperFigures:
    notes = "Semantic FPN, 150 classes" + (f"; baseline without MSCSA: {base} GFLOPs" if base else "")
    return PaperFigures(
        gmacs=gmacs,
        input_size=(3, 512, 512),
        source="MSCSA Table 3 (ADE20K, 512x512)",
        notes=notes,
        extra={"baseline_gmacs": base} if base else {},
    )


@register_model(kind="segmentor", backbone="pvt_v2_b0_mscsa", paper=ade20k_figures(26.0, 25.0))
def semantic_fpn_pvt_v2_b0_mscsa(**kwargs: Any) -> nn.Module:
    """Semantic FPN on PVTv2-B0 + dense MSCSA (Table 3; Table 7 configuration)."""
    return create_semantic_fpn("pvt_v2_b0", mscsa=True, **kwargs)


@register_model(kind="segmentor", backbone="pvt_v2_b1_mscsa", paper=ade20k_figures(36.0, 34.0))
def semantic_fpn_pvt_v2_b1_mscsa(**kwargs: Any) -> nn.Module:
    """Semantic FPN on PVTv2-B1 + dense MSCSA (Table 3; Table 7 configuration)."""
    return create_semantic_fpn("pvt_v2_b1", mscsa=True, **kwargs)


@register_model(kind="segmentor", backbone="pvt_v2_b2_mscsa", paper=ade20k_figures(49.0, 46.0))
def semantic_fpn_pvt_v2_b2_mscsa(**kwargs: Any) -> nn.Module:
    """Semantic FPN on PVTv2-B2 + dense MSCSA (Table 3; Table 7 configuration)."""
    return create_semantic_fpn("pvt_v2_b2", mscsa=True, **kwargs)


# ---- Detectors (Table 2) ---------------------------------------------------------------------


def _mscsa(family: str) -> dict[str, Any]:
    # addon="mscsa" takes the backbone's Table 7 row itself (msfusion.models.addons.mscsa.mscsa_config).
    # The backbone's stages as the classifiers take them (ResNet: C2-C5, its stride-2 stem output left out).
    return dict(backbone=family, backbone_kwargs=dict(_TIMM_BACKBONES[family][1]), addon="mscsa")


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


@register_model(kind="detector", paper=_mscsa_paper(271, 260), backbone="resnet50_mscsa")
def mask_rcnn_r50_mscsa(**kwargs: Any) -> nn.Module:
    """Mask R-CNN, ResNet-50 + MSCSA + FPN (MSCSA Table 2: 271G, 42.2 box / 38.7 mask AP)."""
    return create_detector("mask_rcnn", _mscsa("resnet50"), kwargs)


@register_model(kind="detector", paper=_mscsa_paper(253, 239), backbone="resnet50_mscsa")
def retinanet_r50_mscsa(**kwargs: Any) -> nn.Module:
    """RetinaNet, ResNet-50 + MSCSA + FPN, P6 from C5 (MSCSA Table 2: 253G, 39.0 AP)."""
    defaults = {**_mscsa("resnet50"), "neck_kwargs": dict(extra_source="c5", relu_before_extra=False)}
    return create_detector("retinanet", defaults, kwargs)


@register_model(kind="detector", paper=_mscsa_paper(405, 394), backbone="resnet50_mscsa")
def cascade_mask_rcnn_r50_mscsa(**kwargs: Any) -> nn.Module:
    """Cascade Mask R-CNN, ResNet-50 + MSCSA + FPN (MSCSA Table 2: 405G, 43.4 box / 37.7 mask AP)."""
    return create_detector("cascade_mask_rcnn", _mscsa("resnet50"), kwargs)


@register_model(kind="detector", paper=_mscsa_paper(199, 196, rules="torchprofile"), backbone="pvt_v2_b0_mscsa")
def mask_rcnn_pvt_v2_b0_mscsa(**kwargs: Any) -> nn.Module:
    """Mask R-CNN, PVTv2-B0 + MSCSA + FPN (MSCSA Table 2: 199G, 41.0 box / 37.8 mask AP)."""
    return create_detector("mask_rcnn", _mscsa("pvt_v2_b0"), kwargs)


# ---- Deformable DETR (Table 2) ---------------------------------------------------------------


def detr_protocol_figures(params: float | None, gflops: float, source: str, notes: str) -> PaperFigures:
    # Detectron2's flop_count with bmm (one per multiply-add of conv / linear / matrix products): the
    # torchprofile rules. The published figure is a mean over COCO images of about 0.9 Mpx (module doc).
    return PaperFigures(params_m=params, gmacs=gflops, input_size=(3, 800, 1280), source=source, notes=notes)


# torchvision-style ResNet-50 as the official Deformable DETR trains it: frozen BatchNorm, stem and layer1 frozen.
DEFORMABLE_DETR_R50 = dict(backbone="resnet50", frozen_bn=True, frozen_stages=2)


@register_model(
    kind="detector",
    paper=detr_protocol_figures(
        None,
        185,
        "MSCSA paper (arXiv 2308.05872) Table 2",
        "baseline without MSCSA: 173 G, DETR's protocol (module doc); 187 G here at 800 x 1136",
    ),
    backbone="resnet50_mscsa",
)
def deformable_detr_r50_mscsa(**kwargs: Any) -> nn.Module:
    """Deformable DETR R50 + MSCSA (Table 2: 185 G, 45.6 AP); the add-on's BatchNorm stays trainable."""
    return create_detr(
        "deformable_detr", {**DEFORMABLE_DETR_R50, "addon": "mscsa", "addon_kwargs": dict(TABLE7["resnet50"])}, kwargs
    )
