"""Our backbones, add-ons and necks inside torchvision's detectors.

``build_detector(arch, backbone=..., addon=..., neck=..., fine=..., num_classes=...)``
composes ``backbone -> [add-on] -> [neck]`` (the feature contract: lists fine
to coarse described by ``feature_info``), wraps the chain so that it returns
the ``OrderedDict[str, Tensor]`` and ``out_channels`` that torchvision's
detectors expect, and builds one of:

- ``"faster_rcnn"``: Faster R-CNN (Ren et al., arXiv 1506.01497) with FPN
  (Lin et al., arXiv 1612.03144, Sec. 4.1-4.2): RPN anchors of one size
  (8 x stride: 32..512 px on P2-P6) and three aspect ratios per level, RoI
  Align 7x7 on P2-P5, two 1024-d FC layers, class-specific box regression;
- ``"mask_rcnn"``: Mask R-CNN (He et al., arXiv 1703.06870): Faster R-CNN plus
  a 14x14 RoI Align, four 3x3 convs, a 2x deconv and per-class 28x28 masks;
- ``"retinanet"``: RetinaNet (Lin et al., arXiv 1708.02002, Sec. 4): P3-P7,
  anchors 4 x stride x {2^0, 2^(1/3), 2^(2/3)} with three aspect ratios,
  focal loss;
- ``"fcos"``: FCOS (Tian et al., arXiv 1904.01355): P3-P7, one point per
  location, centre sampling, GIoU loss, centre-ness;
- ``"cascade_rcnn"`` / ``"cascade_mask_rcnn"``: Cascade (Mask) R-CNN (Cai and
  Vasconcelos, arXiv 1712.00726), see ``msfusion.models.cascade_rcnn``.

Neck defaults follow the detectors' papers and torchvision's builders:
two-stage detectors fuse C2-C5 into P2-P5 and add P6 by stride-2
subsampling of P5 (for the RPN); one-stage detectors fuse C3-C5 into P3-P5
and add P6 = conv3x3/2(P5) and P7 = conv3x3/2(ReLU(P6)). With
``backbone="resnet50"`` (timm), ``neck="fpn"`` and ``num_classes=91`` the
parameter counts equal torchvision's ``fasterrcnn_resnet50_fpn`` (41,808,406),
``maskrcnn_resnet50_fpn`` (44,454,513), ``retinanet_resnet50_fpn``
(34,068,119) and ``fcos_resnet50_fpn`` (32,322,720) built with
``weights=None, weights_backbone=None`` (trainable BatchNorm). torchvision
swaps in ``FrozenBatchNorm2d`` when it loads ImageNet weights, whose affine
terms are buffers, not parameters: ``frozen_bn=True`` does the same here and
the counts drop by the BatchNorm parameters (53,120 for ResNet-50, i.e. the
41.76 M torchvision lists for its pretrained Faster R-CNN).

``num_classes`` follows torchvision: it counts the background, so a dataset
of K object classes (labels 1..K) needs ``num_classes=K+1``; COCO's builders
use 91 (category ids 1..90), a contiguous COCO mapping 81.

Images are normalised once, by the detector (torchvision's
``GeneralizedRCNNTransform``, ImageNet mean and std by default): the data
pipeline hands over float images in [0, 1]. The transform also resizes
(``min_size`` 800, ``max_size`` 1333 by default) and pads the batch to a
multiple of 32 (or of the backbone's ``size_divisor``).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn
from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from msfusion.layers import check_feature_info
from msfusion.layers.frozen_norm import freeze_batch_norm
from msfusion.models.segmentor import build_part
from msfusion.registry import create_model, find_builders, recordable, register_builder

__all__ = [
    "ARCHS",
    "DetectorBackbone",
    "build_detector",
    "build_detector_backbone",
    "freeze_batch_norm",
    "DetectorComplexity",
    "TestResizeTransform",
]

ARCHS = ("faster_rcnn", "mask_rcnn", "cascade_rcnn", "cascade_mask_rcnn", "retinanet", "fcos")
TWO_STAGE = ("faster_rcnn", "mask_rcnn", "cascade_rcnn", "cascade_mask_rcnn")
# torchvision's builder names, accepted as spellings of ours.
_ALIASES = {"fasterrcnn": "faster_rcnn", "maskrcnn": "mask_rcnn", "cascadercnn": "cascade_rcnn"}
# Strides the RoI heads pool from (Mask R-CNN's P2-P5; FPN paper Sec. 4.2, Eq. 1 assigns RoIs to them).
ROI_STRIDES = (4, 8, 16, 32)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _level_name(stride: int) -> str:
    level = math.log2(stride)
    return f"p{int(level)}" if level.is_integer() else f"s{stride}"


class DetectorBackbone(nn.Module):
    """``backbone -> [add-on] -> [neck]`` as a torchvision detection backbone.

    ``forward(images)`` with images (B, 3, H, W) returns an ``OrderedDict``
    from level names (``"p2"`` for stride 4, ..., ``"p7"`` for stride 128) to
    maps (B, out_channels, H/s, W/s), fine to coarse; every level must have
    the same channel count, which ``out_channels`` gives (torchvision's heads
    share their weights over levels).

    Args:
        backbone: returns ``list[Tensor]`` fine to coarse, with ``feature_info``.
        addon: optional list -> list module (e.g. MSCSA), same contract.
        neck: optional list -> list module (e.g. FPN), same contract.
    """

    def __init__(self, backbone: nn.Module, addon: nn.Module | None = None, neck: nn.Module | None = None) -> None:
        super().__init__()
        for producer, role in ((backbone, "backbone"), (addon, "add-on"), (neck, "neck")):
            if producer is not None:
                check_feature_info(getattr(producer, "feature_info", None), f"the {role} {type(producer).__name__}")
        self.backbone = backbone
        self.addon = addon
        self.neck = neck
        last = neck if neck is not None else addon if addon is not None else backbone
        self.feature_info = check_feature_info(last.feature_info, f"the last producer {type(last).__name__}")
        chs = sorted({f["chs"] for f in self.feature_info})
        if len(chs) != 1:
            raise ValueError(
                f"torchvision's detection heads need one channel count on every level, but the features have "
                f"{[f['chs'] for f in self.feature_info]} channels (strides "
                f"{[f['reduction'] for f in self.feature_info]}); add a neck (neck='fpn') or build the backbone "
                "with a pyramid of equal channels"
            )
        self.out_channels = chs[0]
        self.names = [_level_name(f["reduction"]) for f in self.feature_info]
        self.strides = [f["reduction"] for f in self.feature_info]
        self.size_divisor = int(getattr(backbone, "size_divisor", 1) or 1)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute the backbone's activations in the backward pass (``train.grad_checkpointing``).

        The switch goes to the backbone (MSCAN, CEDNet, a timm model behind
        the timm adapter); the add-on and the neck keep their activations.
        ``ValueError`` names a backbone that has no such switch.
        """
        for part in (self.backbone, getattr(self.backbone, "model", None)):
            switch = getattr(part, "set_grad_checkpointing", None)
            if callable(switch):
                switch(enable)
                return
        raise ValueError(
            f"train.grad_checkpointing: the detector's backbone {type(self.backbone).__name__} has no "
            "set_grad_checkpointing(); MSCAN, CEDNet and timm backbones have one. Set train.grad_checkpointing=false."
        )

    def forward_features(self, images: Tensor) -> list[Tensor]:
        """(B, 3, H, W) -> the last producer's maps, fine to coarse."""
        feats = self.backbone(images)
        if self.addon is not None:
            feats = self.addon(feats)
        if self.neck is not None:
            feats = self.neck(feats)
        return list(feats)

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        return OrderedDict(zip(self.names, self.forward_features(images), strict=True))


class TestResizeTransform(GeneralizedRCNNTransform):
    """torchvision's detector transform that resizes only in eval mode (training images arrive sized)."""

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None):
        if self.training:
            return image, target
        return super().resize(image, target)


def _external_archs() -> dict[str, Any]:
    """Detector archs other modules provide (registered as builders ``detector:<arch>``)."""
    return {name.split(":", 1)[1]: fn for name, fn in find_builders("detector:").items()}


def _check_arch(arch: str) -> str:
    arch = _ALIASES.get(arch, arch)
    if arch not in ARCHS:
        raise ValueError(f"unknown detector arch {arch!r}; choose one of {list(ARCHS) + sorted(_external_archs())}")
    return arch


def _default_neck_kwargs(arch: str, info: Sequence[dict]) -> dict[str, Any]:
    """The neck arguments of the detector papers / torchvision builders for ``arch`` on ``info``."""
    strides = [f["reduction"] for f in info]
    if arch in TWO_STAGE:
        wanted, top, extra_type = (4, 8, 16, 32), 64, "maxpool"
    else:
        wanted, top, extra_type = (8, 16, 32), 128, "conv"
    in_strides = [s for s in wanted if s in strides]
    if not in_strides:
        raise ValueError(f"{arch} fuses strides {wanted}, but the features have only strides {strides}")
    extra_levels = max(int(math.log2(top // in_strides[-1])), 0) if top > in_strides[-1] else 0
    return dict(in_strides=in_strides, extra_levels=extra_levels, extra_type=extra_type, extra_source="p5")


def build_detector_backbone(
    arch: str,
    backbone: str | nn.Module,
    *,
    addon: str | nn.Module | None = None,
    neck: str | nn.Module | None = "fpn",
    fine: bool | dict[str, Any] = False,
    backbone_kwargs: dict[str, Any] | None = None,
    addon_kwargs: dict[str, Any] | None = None,
    neck_kwargs: dict[str, Any] | None = None,
    frozen_bn: bool = False,
) -> DetectorBackbone:
    """The feature chain of ``build_detector`` (see there), as a ``DetectorBackbone``."""
    arch = _check_arch(arch)
    if isinstance(backbone, str):
        backbone = create_model(backbone, features_only=True, **(backbone_kwargs or {}))
    elif backbone_kwargs:
        raise ValueError("backbone_kwargs only apply when the backbone is given by name")
    if frozen_bn:
        freeze_batch_norm(backbone)
    info = check_feature_info(getattr(backbone, "feature_info", None), f"the backbone {type(backbone).__name__}")
    addon = build_part(addon, "addon", info, addon_kwargs)
    if addon is not None:
        info = check_feature_info(getattr(addon, "feature_info", None), f"the add-on {type(addon).__name__}")
    if fine and not isinstance(neck, str):
        raise ValueError(
            "fine=True plugs FINE into a neck's fusion steps: give the neck by name (neck='fpn' or 'pan'), "
            "or build the neck module with fine=True yourself"
        )
    if isinstance(neck, str):
        kwargs = {**_default_neck_kwargs(arch, info), **(neck_kwargs or {})}
        if fine:
            kwargs["fine"] = fine
        built = build_part(neck, "neck", info, kwargs)
        # Record only what the user gave: the defaults are a function of arch and features.
        built.model_cfg = {"name": neck, "kwargs": recordable(dict(neck_kwargs or {}), f"neck {neck!r}")}
        neck = built
    else:
        neck = build_part(neck, "neck", info, neck_kwargs)
    return DetectorBackbone(backbone, addon, neck)


def _rpn_anchors(strides: Sequence[int]) -> AnchorGenerator:
    # FPN paper Sec. 4.1: one anchor scale per level, 32^2..512^2 on P2-P6, i.e. 8 x stride; ratios 1:2, 1:1, 2:1.
    return AnchorGenerator(tuple((8 * s,) for s in strides), ((0.5, 1.0, 2.0),) * len(strides))


def _retina_anchors(strides: Sequence[int]) -> AnchorGenerator:
    # RetinaNet Sec. 4: areas 32^2..512^2 on P3-P7 (4 x stride), scales {2^0, 2^(1/3), 2^(2/3)}, ratios {1:2, 1:1, 2:1}.
    sizes = tuple((4 * s, int(4 * s * 2 ** (1 / 3)), int(4 * s * 2 ** (2 / 3))) for s in strides)
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(strides))


def _fcos_anchors(strides: Sequence[int]) -> AnchorGenerator:
    # FCOS locations: one "anchor" of the stride's size per location (torchvision's FCOS reads its size ranges).
    return AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))


def _roi_pool(body: DetectorBackbone, output_size: int, roi_strides: Sequence[int]) -> MultiScaleRoIAlign:
    names = [n for n, s in zip(body.names, body.strides, strict=True) if s in roi_strides]
    if not names:
        raise ValueError(f"the RoI heads pool from strides {tuple(roi_strides)}, but the features have {body.strides}")
    return MultiScaleRoIAlign(featmap_names=names, output_size=output_size, sampling_ratio=2)


def build_detector(
    arch: str,
    *,
    backbone: str | nn.Module,
    num_classes: int,
    addon: str | nn.Module | None = None,
    neck: str | nn.Module | None = "fpn",
    fine: bool | dict[str, Any] = False,
    backbone_kwargs: dict[str, Any] | None = None,
    addon_kwargs: dict[str, Any] | None = None,
    neck_kwargs: dict[str, Any] | None = None,
    frozen_bn: bool = False,
    min_size: int | Sequence[int] = 800,
    max_size: int = 1333,
    image_mean: Sequence[float] = IMAGENET_MEAN,
    image_std: Sequence[float] = IMAGENET_STD,
    roi_strides: Sequence[int] = ROI_STRIDES,
    representation: int = 1024,
    mask_chs: int = 256,
    head_convs: int = 4,
    train_resize: bool = True,
    **kwargs: Any,
) -> nn.Module:
    """Compose a torchvision detector from our parts.

    Example::

        mf.build_detector("faster_rcnn", backbone="resnet50", num_classes=91)          # = torchvision's
        mf.build_detector("retinanet", backbone="resnet50", fine=True, num_classes=81)  # FINE Table 1
        mf.build_detector("mask_rcnn", backbone="resnet50", addon="mscsa", num_classes=81,
                          addon_kwargs=dict(squeeze_ratio=0.25))                        # MSCSA Table 2
        mf.build_detector("retinanet", backbone="cednet_next_t", neck=None, num_classes=81,
                          backbone_kwargs=dict(pyramid="p3p7"))                         # CEDNet Table 2

    Training: ``model(images, targets)`` with ``images`` a list of (3, H_i,
    W_i) float tensors in [0, 1] and ``targets`` a list of dicts with
    ``boxes`` (N_i, 4) float xyxy in pixels, ``labels`` (N_i,) int64 in
    1..num_classes-1 and, for Mask R-CNN, ``masks`` (N_i, H_i, W_i) uint8;
    returns a dict of scalar losses. Inference (``model.eval()``):
    ``model(images)`` returns one dict per image with ``boxes`` (D, 4),
    ``labels`` (D,), ``scores`` (D,) and for mask models ``masks`` (D, 1, H_i,
    W_i) probabilities, in the input image's pixel coordinates.

    Args:
        arch: one of ``ARCHS`` (torchvision's spellings ``fasterrcnn``,
            ``maskrcnn`` are accepted).
        backbone: a name built with ``create_model(name, features_only=True)``
            (ours or any timm model) or a feature module.
        num_classes: classes including the background (torchvision's convention).
        addon: an add-on name (``"mscsa"``) or module, or None.
        neck: a neck name (``"fpn"``, ``"pan"``), a module, or None to feed the
            backbone's (or add-on's) maps straight to the heads (CEDNet's
            built-in pyramids). A named neck gets the arch's defaults (module
            doc) unless ``neck_kwargs`` overrides them.
        fine: FINE in every fusion step of a named neck (``True`` or FINE's kwargs).
        backbone_kwargs, addon_kwargs, neck_kwargs: arguments of named parts.
        frozen_bn: freeze the backbone's BatchNorm as torchvision does with
            pretrained weights (``FrozenBatchNorm2d``).
        min_size, max_size: the detector's test (and train) resize.
        train_resize: resize training images too (torchvision's behaviour).
            False leaves them as the data pipeline made them: large-scale
            jittering's 1024x1024 crops must reach the network unchanged.
        image_mean, image_std: normalisation applied by the detector, in [0, 1] units.
        roi_strides: the levels the RoI heads pool from (two-stage archs).
        representation: two-stage archs: features of the box head's FC layers
            (1024, the FPN paper's and torchvision's).
        mask_chs: mask archs: channels of the mask head's four 3x3 convs and
            deconv (256, Mask R-CNN's).
        head_convs: FCOS: 3x3 conv + GroupNorm + ReLU layers in each of its
            classification and regression towers (4 in the paper).
        **kwargs: passed to the torchvision constructor (e.g.
            ``box_detections_per_img``, ``rpn_post_nms_top_n_test``,
            ``score_thresh``) or to ``CascadeRCNN`` (``box_head="4conv1fc"``).

    Returns:
        The torchvision detector, with ``model_cfg`` for checkpoints and
        ``feature_info`` of the pyramid it detects on.
    """
    external = _external_archs()
    if arch in external:  # transformers' DETRs, ultralytics' YOLO (optional extras): msfusion.models.detr, .yolo
        return external[arch](**{k: v for k, v in locals().items() if k not in ("arch", "external")})
    arch = _check_arch(arch)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(
            f"num_classes counts the background (torchvision's convention) and must be at least 2, got {num_classes!r}"
        )
    cfg = dict(
        arch=arch,
        backbone=backbone,
        num_classes=num_classes,
        addon=addon,
        neck=neck,
        fine=fine,
        backbone_kwargs=backbone_kwargs,
        addon_kwargs=addon_kwargs,
        neck_kwargs=neck_kwargs,
        frozen_bn=frozen_bn,
        min_size=min_size,
        max_size=max_size,
        image_mean=list(image_mean),
        image_std=list(image_std),
        roi_strides=list(roi_strides),
        representation=representation,
        mask_chs=mask_chs,
        head_convs=head_convs,
        train_resize=train_resize,
        **kwargs,
    )
    body = build_detector_backbone(
        arch,
        backbone,
        addon=addon,
        neck=neck,
        fine=fine,
        backbone_kwargs=backbone_kwargs,
        addon_kwargs=addon_kwargs,
        neck_kwargs=neck_kwargs,
        frozen_bn=frozen_bn,
    )
    common = dict(
        min_size=min_size,
        max_size=max_size,
        image_mean=list(image_mean),
        image_std=list(image_std),
        size_divisible=math.lcm(32, body.size_divisor),
    )
    if arch not in TWO_STAGE and (representation != 1024 or mask_chs != 256):
        raise ValueError(f"representation and mask_chs size the R-CNN heads; {arch} has none")
    if arch != "fcos" and head_convs != 4:
        raise ValueError(f"head_convs sets FCOS's towers; {arch}'s heads have a fixed depth")
    chs = body.out_channels
    if arch in ("faster_rcnn", "mask_rcnn"):
        kwargs.setdefault("rpn_anchor_generator", _rpn_anchors(body.strides))
        kwargs.setdefault("box_roi_pool", _roi_pool(body, 7, roi_strides))
        kwargs.setdefault("box_head", TwoMLPHead(chs * 7 * 7, representation))
        kwargs.setdefault("box_predictor", FastRCNNPredictor(representation, num_classes))
        if arch == "mask_rcnn":
            kwargs.setdefault("mask_roi_pool", _roi_pool(body, 14, roi_strides))
            kwargs.setdefault("mask_head", MaskRCNNHeads(chs, [mask_chs] * 4, 1))
            kwargs.setdefault("mask_predictor", MaskRCNNPredictor(mask_chs, mask_chs, num_classes))
            model = MaskRCNN(body, None, **common, **kwargs)  # the class count is in box_predictor
        else:
            model = FasterRCNN(body, None, **common, **kwargs)
    elif arch in ("cascade_rcnn", "cascade_mask_rcnn"):
        from msfusion.models.cascade_rcnn import CascadeRCNN

        kwargs.setdefault("rpn_anchor_generator", _rpn_anchors(body.strides))
        kwargs.setdefault("box_roi_pool", _roi_pool(body, 7, roi_strides))
        if arch == "cascade_mask_rcnn":
            kwargs.setdefault("mask_roi_pool", _roi_pool(body, 14, roi_strides))
        model = CascadeRCNN(
            body,
            num_classes,
            with_mask=arch == "cascade_mask_rcnn",
            representation=representation,
            mask_chs=mask_chs,
            **common,
            **kwargs,
        )
    elif arch == "retinanet":
        kwargs.setdefault("anchor_generator", _retina_anchors(body.strides))
        model = RetinaNet(body, num_classes, **common, **kwargs)
    else:
        kwargs.setdefault("anchor_generator", _fcos_anchors(body.strides))
        kwargs.setdefault("head", FCOSHead(body.out_channels, 1, num_classes, num_convs=head_convs))
        model = FCOS(body, num_classes, **common, **kwargs)
    if not train_resize:
        model.transform = TestResizeTransform(**{k: common[k] for k in ("min_size", "max_size")},
                                              image_mean=common["image_mean"], image_std=common["image_std"],
                                              size_divisible=common["size_divisible"])  # fmt: skip
    model.arch = arch
    model.num_classes = num_classes
    model.feature_info = body.feature_info
    model.model_cfg = {"builder": "build_detector", "kwargs": recordable(cfg, "build_detector")}
    return model


register_builder("build_detector", build_detector)


class DetectorComplexity(nn.Module):
    """A detector's fixed-cost forward for ``msfusion.count_macs``, as mmdetection's ``forward_dummy``.

    The papers' detection "FLOPs" (mmdetection's ``get_flops``; CEDNet Table 2,
    MSCSA Table 2 at 800x1280) run the backbone, neck and dense heads on the
    padded image, then the box head(s) on 1000 RoIs and the mask head(s) on
    100 RoIs (the first 100 of them), whatever the image holds; anchor
    decoding, NMS and RoI Align cost no multiply-adds and are left out. The
    image is taken as already resized and normalised.

    Args:
        detector: a model of ``build_detector``.
        num_rois: RoIs through the box head(s).
        num_mask_rois: RoIs through the mask head(s).
    """

    def __init__(self, detector: nn.Module, num_rois: int = 1000, num_mask_rois: int = 100) -> None:
        super().__init__()
        self.detector = detector
        self.num_rois = num_rois
        self.num_mask_rois = num_mask_rois

    def _box_and_mask(self, box_head: nn.Module, predictor: nn.Module, like: Tensor, mask_head=None, mask_pred=None):
        chs = self.detector.backbone.out_channels
        rois = like.new_zeros(self.num_rois, chs, 7, 7)
        predictor(box_head(rois))
        if mask_head is not None:
            mask_pred(mask_head(like.new_zeros(self.num_mask_rois, chs, 14, 14)))

    def forward(self, images: Tensor) -> list[Tensor]:
        det = self.detector
        d = det.transform.size_divisible
        h, w = images.shape[-2:]
        images = nn.functional.pad(images, (0, (d - w % d) % d, 0, (d - h % d) % d))
        feats = list(det.backbone(images).values())
        outs: list[Tensor] = []
        arch = getattr(det, "arch", "")
        if arch in ("retinanet", "fcos"):
            out = det.head(feats)
            return list(out.values())
        outs.extend(det.rpn.head(feats)[0])
        heads = det.roi_heads
        if arch in ("cascade_rcnn", "cascade_mask_rcnn"):
            for t, stage in enumerate(heads.stages):
                mask = heads.mask_heads[t] if heads.mask_heads is not None else None
                mask_pred = heads.mask_predictors[t] if heads.mask_predictors is not None else None
                self._box_and_mask(stage.box_head, stage.box_predictor, feats[0], mask, mask_pred)
        else:
            self._box_and_mask(heads.box_head, heads.box_predictor, feats[0], heads.mask_head, heads.mask_predictor)
        return outs
