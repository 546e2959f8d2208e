"""Cascade R-CNN and Cascade Mask R-CNN on msfusion's feature chain (arXiv 1712.00726; ``msfusion.models.meta_arch.cascade_rcnn``)."""

from __future__ import annotations

from torch import Tensor, nn

from msfusion.models.meta_arch.anchors import roi_pool, rpn_anchors
from msfusion.models.meta_arch.cascade_rcnn import CascadeRCNN
from msfusion.models.meta_arch.detector import (
    DETECTOR_ARCHS,
    DetectorArgs,
    DetectorBackbone,
    DetectorComplexity,
    TorchvisionArch,
)

__all__ = ["CascadeRCNNArch", "CascadeMaskRCNNArch"]


class CascadeRCNNArch(TorchvisionArch):
    """Three box stages at IoU 0.5, 0.6, 0.7 after torchvision's RPN."""

    name = "cascade_rcnn"
    pyramid = "p2p6"
    options = ("representation", "mask_chs")

    def make(self, body: DetectorBackbone, args: DetectorArgs, transform: dict) -> nn.Module:
        parts = dict(rpn_anchor_generator=rpn_anchors(body.strides), box_roi_pool=roi_pool(body, 7, args.roi_strides))
        if self.predicts_masks:
            parts["mask_roi_pool"] = roi_pool(body, 14, args.roi_strides)
        return CascadeRCNN(
            body,
            args.num_classes,
            with_mask=self.predicts_masks,
            representation=args.representation,
            mask_chs=args.mask_chs,
            **transform,
            **{**parts, **args.extra},
        )

    def complexity(self, counter: DetectorComplexity, feats: list[Tensor]) -> list[Tensor]:
        det = counter.detector
        outs = list(det.rpn.head(feats)[0])
        heads = det.roi_heads
        for t, stage in enumerate(heads.stages):
            mask = heads.mask_heads[t] if heads.mask_heads is not None else None
            mask_pred = heads.mask_predictors[t] if heads.mask_predictors is not None else None
            counter.box_and_mask(stage.box_head, stage.box_predictor, feats[0], mask, mask_pred)
        return outs


class CascadeMaskRCNNArch(CascadeRCNNArch):
    """Cascade R-CNN with a mask head per stage (masks averaged over stages at test time)."""

    name = "cascade_mask_rcnn"
    predicts_masks = True


DETECTOR_ARCHS.register("cascade_rcnn", CascadeRCNNArch(), aliases=("cascadercnn",))
DETECTOR_ARCHS.register("cascade_mask_rcnn", CascadeMaskRCNNArch())
