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
  Vasconcelos, arXiv 1712.00726), see ``msfusion.models.meta_arch.cascade_rcnn``.

Neck defaults follow the detectors' papers and torchvision's builders:
two-stage detectors fuse C2-C5 into P2-P5 and add P6 by stride-2
subsampling of P5 (for the RPN); one-stage detectors fuse C3-C5 into P3-P5
and add P6 = conv3x3/2(P5) and P7 = conv3x3/2(ReLU(P6)). CEDNet's own pyramid
(``neck="cednet_pyramid"``) takes the same level sets, P2-P6 and P3-P7. With
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
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

from torch import Tensor, nn
from torchvision.models.detection.transform import GeneralizedRCNNTransform

from msfusion.layers.frozen_norm import freeze_batch_norm
from msfusion.models.chain import (
    FeatureChain,
    build_chain,
    check_finite_input,
    pad_to_size_constraint,
    record_resolved_addon,
)
from msfusion.models.necks.cednet_pyramid import create_backbone_with_pyramid
from msfusion.registry import Registry, recordable, register_builder

__all__ = [
    "DETECTOR_ARCHS",
    "DetectorArgs",
    "TorchvisionArch",
    "torchvision_archs",
    "DetectorBackbone",
    "build_detector",
    "freeze_batch_norm",
    "DetectorComplexity",
    "complexity_view",
    "TestResizeTransform",
]

# Strides the RoI heads pool from (Mask R-CNN's P2-P5; FPN paper Sec. 4.2, Eq. 1 assigns RoIs to them).
ROI_STRIDES = (4, 8, 16, 32)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _level_name(stride: int) -> str:
    level = math.log2(stride)
    return f"p{int(level)}" if level.is_integer() else f"s{stride}"


class DetectorBackbone(FeatureChain):
    """``backbone -> [add-on] -> [neck]`` as a torchvision detection backbone.

    ``forward(images)`` with images (B, 3, H, W) returns an ``OrderedDict``
    from level names (``"p2"`` for stride 4, ..., ``"p7"`` for stride 128) to
    maps (B, out_channels, H/s, W/s), finest first; every level must have
    the same channel count, which ``out_channels`` gives (torchvision's heads
    share their weights over levels).

    Args:
        backbone: returns ``list[Tensor]`` finest first, with ``feature_info``.
        addon: optional list -> list module (e.g. MSCSA), same contract.
        neck: optional list -> list module (e.g. FPN), same contract.
    """

    def __init__(self, backbone: nn.Module, addon: nn.Module | None = None, neck: nn.Module | None = None) -> None:
        super().__init__(backbone, addon, neck)
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

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        # The detector's resized, normalised batch: a NaN pixel would otherwise give no detection at all.
        check_finite_input(images, "detector's image batch (resized and normalised)")
        return OrderedDict(zip(self.names, self.forward_features(images), strict=True))


class TestResizeTransform(GeneralizedRCNNTransform):
    """torchvision's detector transform that resizes only in eval mode (training images arrive sized)."""

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None):
        if self.training:
            return image, target
        return super().resize(image, target)


@dataclass
class DetectorArgs:
    """Every argument of ``build_detector`` but the arch: what an architecture builds from.

    The fields and defaults are ``build_detector``'s (see there); ``extra``
    holds its ``**kwargs`` for the architecture's constructor.
    """

    backbone: str | nn.Module
    num_classes: int
    addon: str | nn.Module | None = None
    neck: str | nn.Module | None = "fpn"
    fine: bool | dict[str, Any] = False
    backbone_kwargs: dict[str, Any] | None = None
    addon_kwargs: dict[str, Any] | None = None
    neck_kwargs: dict[str, Any] | None = None
    frozen_bn: bool = False
    min_size: int | Sequence[int] = 800
    max_size: int = 1333
    image_mean: Sequence[float] = IMAGENET_MEAN
    image_std: Sequence[float] = IMAGENET_STD
    roi_strides: Sequence[int] = ROI_STRIDES
    representation: int = 1024
    mask_chs: int = 256
    head_convs: int = 4
    train_resize: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def changed(self) -> dict[str, Any]:
        """The fields (``extra`` excluded) whose value differs from ``build_detector``'s default."""
        out = {}
        for f in fields(self):
            if f.name == "extra" or f.default is MISSING:
                continue
            value, default = getattr(self, f.name), f.default
            same = list(value) == list(default) if isinstance(value, (list, tuple)) else value == default
            if not same:
                out[f.name] = value
        return out

    def recorded(self, arch: str) -> dict[str, Any]:
        """The arguments as ``build_detector`` takes them, for the checkpoint sidecar."""
        cfg = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        for key in ("image_mean", "image_std", "roi_strides"):
            cfg[key] = list(cfg[key])
        return {"arch": arch, **cfg, **self.extra}


# Every detection architecture ``build_detector`` can build, by name (one file each under
# ``msfusion.models.meta_arch``; the DETRs and YOLO register from their optional-extra modules).
DETECTOR_ARCHS = Registry("detector architecture")


class TorchvisionArch(ABC):
    """A torchvision-style detection architecture on msfusion's feature chain.

    ``__call__(args)`` builds the chain as a ``DetectorBackbone`` (``build_backbone``) with the
    architecture's neck defaults, then the architecture's heads (``make``).
    A subclass sets ``name``, ``pyramid`` and the ``options`` it reads, and
    implements ``make`` and ``complexity``; registering an instance with
    ``DETECTOR_ARCHS.register`` makes it a ``build_detector`` arch.

    Attributes:
        name: the registered name.
        pyramid: the neck's default levels: ``"p2p6"`` (two-stage: C2-C5 into
            P2-P5, P6 by max-pooling P5, FPN paper Sec. 4.1) or ``"p3p7"``
            (one-stage: C3-C5 into P3-P5, P6 = conv3x3/2(P5), P7 = conv3x3/2(ReLU(P6)),
            RetinaNet Sec. 4).
        predicts_masks: the architecture predicts instance masks (its data
            must decode them).
        options: the ``build_detector`` arguments among ``representation``,
            ``mask_chs``, ``head_convs`` that this architecture reads.
    """

    name: str = ""
    pyramid: str = "p3p7"
    predicts_masks: bool = False
    options: tuple[str, ...] = ()

    @abstractmethod
    def make(self, body: DetectorBackbone, args: DetectorArgs, transform: dict[str, Any]) -> nn.Module:
        """The detector on ``body``; ``transform`` holds torchvision's resize/normalise arguments."""

    @abstractmethod
    def complexity(self, counter: DetectorComplexity, feats: list[Tensor]) -> list[Tensor]:
        """The heads' fixed-cost forward for ``count_macs`` (see ``DetectorComplexity``)."""

    def neck_defaults(self, info: Sequence[dict], neck: str = "fpn") -> dict[str, Any]:
        """The neck arguments of the detector papers / torchvision builders on ``info``."""
        if neck == "cednet_pyramid":  # CEDNet Table 2: P3-P7 for RetinaNet, P2-P6 for the R-CNNs
            return dict(levels=self.pyramid)
        strides = [f["reduction"] for f in info]
        if self.pyramid == "p2p6":
            wanted, top, extra_type = (4, 8, 16, 32), 64, "maxpool"
        else:
            wanted, top, extra_type = (8, 16, 32), 128, "conv"
        in_strides = [s for s in wanted if s in strides]
        if not in_strides:
            raise ValueError(f"{self.name} fuses strides {wanted}, but the features have only strides {strides}")
        extra_levels = max(int(math.log2(top // in_strides[-1])), 0) if top > in_strides[-1] else 0
        return dict(in_strides=in_strides, extra_levels=extra_levels, extra_type=extra_type, extra_source="p5")

    def check_options(self, args: DetectorArgs) -> None:
        changed = args.changed()
        unused = [k for k in ("representation", "mask_chs", "head_convs") if k in changed and k not in self.options]
        if unused:
            readers = {
                "representation": "the R-CNN box heads",
                "mask_chs": "the mask heads",
                "head_convs": "FCOS's towers",
            }
            raise ValueError(
                f"{unused} size {', '.join(readers[k] for k in unused)}; {self.name} has none (it reads "
                f"{list(self.options) or 'none of them'})"
            )

    def build_backbone(self, args: DetectorArgs) -> DetectorBackbone:
        """The feature chain of ``build_detector`` (see there) with this architecture's neck defaults."""
        backbone, backbone_kwargs, fine = args.backbone, args.backbone_kwargs, args.fine
        neck, neck_kwargs = args.neck, args.neck_kwargs
        if fine and not isinstance(neck, str):
            raise ValueError(
                "fine=True plugs FINE into a neck's fusion steps: give the neck by name (neck='fpn' or 'pan'), "
                "or build the neck module with fine=True yourself"
            )
        if fine and "fine" in (neck_kwargs or {}):
            raise ValueError("give fine= or neck_kwargs['fine'], not both")
        if isinstance(backbone, str):
            # (msfusion 0.1.0 spelled the neck ``cednet_pyramid`` as backbone arguments: pyramid=, pyramid_chs=)
            backbone, neck, neck_kwargs = create_backbone_with_pyramid(backbone, backbone_kwargs, neck, neck_kwargs)
            backbone_kwargs = None
        if args.frozen_bn:
            freeze_batch_norm(backbone)  # before the add-on and neck are built on it
        backbone, addon, neck, _ = build_chain(
            backbone,
            args.addon,
            neck,
            backbone_kwargs=backbone_kwargs,
            addon_kwargs=args.addon_kwargs,
            neck_kwargs=neck_kwargs,
            # The neck arguments of the detector papers, on the features (recorded: only what the user gave).
            neck_defaults=lambda info: {**self.neck_defaults(info, neck), **({"fine": fine} if fine else {})},
        )
        return DetectorBackbone(backbone, addon, neck)

    def __call__(self, args: DetectorArgs) -> nn.Module:
        # Record the arguments as given, before ``make`` fills ``extra`` with modules (anchors, heads).
        recorded = recordable(args.recorded(self.name), "build_detector")
        args = replace(args, extra=dict(args.extra))
        if not isinstance(args.num_classes, int) or args.num_classes < 2:
            raise ValueError(
                "num_classes counts the background (torchvision's convention) and must be at least 2, "
                f"got {args.num_classes!r}"
            )
        self.check_options(args)
        body = self.build_backbone(args)
        transform = dict(
            min_size=args.min_size,
            max_size=args.max_size,
            image_mean=list(args.image_mean),
            image_std=list(args.image_std),
            size_divisible=math.lcm(32, body.size_divisor),
        )
        model = self.make(body, args, transform)
        if not args.train_resize:
            model.transform = TestResizeTransform(**transform)
        model.arch = self.name
        model.num_classes = args.num_classes
        model.feature_info = body.feature_info
        record_resolved_addon(recorded, body)
        model.model_cfg = {"builder": "build_detector", "kwargs": recorded}
        return model


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
        mf.build_detector("mask_rcnn", backbone="resnet50", addon="mscsa",
                          num_classes=81)  # = mask_rcnn_r50_mscsa: MSCSA Table 2, Table 7's ResNet-50 row
        mf.build_detector("retinanet", backbone="cednet_next_t", neck="cednet_pyramid",
                          num_classes=81)                                               # CEDNet Table 2

    Training: ``model(images, targets)`` with ``images`` a list of (3, H_i,
    W_i) float tensors in [0, 1] and ``targets`` a list of dicts with
    ``boxes`` (N_i, 4) float xyxy in pixels, ``labels`` (N_i,) int64 in
    1..num_classes-1 and, for Mask R-CNN, ``masks`` (N_i, H_i, W_i) uint8;
    returns a dict of scalar losses. Inference (``model.eval()``):
    ``model(images)`` returns one dict per image with ``boxes`` (D, 4),
    ``labels`` (D,), ``scores`` (D,) and for mask models ``masks`` (D, 1, H_i,
    W_i) probabilities, in the input image's pixel coordinates.

    Args:
        arch: a registered architecture (``DETECTOR_ARCHS.names()``: torchvision's
            R-CNN family, RetinaNet, FCOS, Cascade; the DETRs and YOLO with their
            extras); torchvision's spellings ``fasterrcnn``, ``maskrcnn`` are accepted.
        backbone: a name built with ``create_model(name, features_only=True)``
            (ours or any timm model) or a feature module.
        num_classes: classes including the background (torchvision's convention).
        addon: an add-on name (``"mscsa"``) or module, or None.
        neck: a neck name (``"fpn"``, ``"pan"``, ``"cednet_pyramid"``), a
            module, or None to feed the backbone's (or add-on's) maps straight
            to the heads. A named neck gets the arch's defaults (module doc;
            CEDNet's pyramid: the arch's levels) unless ``neck_kwargs``
            overrides them.
        fine: FINE in a named neck's top-down fusions whose finer map has
            stride 8 or 16 (FINE's stages l = 2 and 3, Sec. 3-4; a C2-C5 FPN's
            stride-4 fusion stays plain); ``True`` or FINE's kwargs.
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
    args = DetectorArgs(
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
        image_mean=image_mean,
        image_std=image_std,
        roi_strides=roi_strides,
        representation=representation,
        mask_chs=mask_chs,
        head_convs=head_convs,
        train_resize=train_resize,
        extra=kwargs,
    )
    return DETECTOR_ARCHS.get(arch)(args)


def torchvision_archs() -> list[str]:
    """The registered architectures built on torchvision's detectors (``TorchvisionArch``), sorted."""
    return [n for n in DETECTOR_ARCHS.names() if isinstance(DETECTOR_ARCHS.get(n), TorchvisionArch)]


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

    def box_and_mask(
        self,
        box_head: nn.Module,
        predictor: nn.Module,
        like: Tensor,
        mask_head: nn.Module | None = None,
        mask_pred: nn.Module | None = None,
    ) -> None:
        """Run a box head and predictor on ``num_rois`` RoIs, and a mask head on ``num_mask_rois``."""
        chs = self.detector.backbone.out_channels
        rois = like.new_zeros(self.num_rois, chs, 7, 7)
        predictor(box_head(rois))
        if mask_head is not None:
            mask_pred(mask_head(like.new_zeros(self.num_mask_rois, chs, 14, 14)))

    def forward(self, images: Tensor) -> list[Tensor]:
        det = self.detector
        images = pad_to_size_constraint(images, det.transform.size_divisible)
        feats = list(det.backbone(images).values())
        return DETECTOR_ARCHS.get(det.arch).complexity(self, feats)


def complexity_view(detector: nn.Module) -> nn.Module:
    """The module whose forward ``count_macs`` runs for ``detector``: mmdetection's ``get_flops`` convention.

    The detector's ``complexity_module`` where its class names one (DETR, YOLO,
    Panoptic FPN), else :class:`DetectorComplexity` (torchvision-style
    detectors: dense parts on the image, box heads on 1000 RoIs, masks on 100).
    """
    return getattr(detector, "complexity_module", DetectorComplexity)(detector)
