"""Cascade R-CNN and Cascade Mask R-CNN on msfusion's feature chain (arXiv 1712.00726; ``msfusion.models.meta_arch.cascade_rcnn``)."""

from __future__ import annotations

from torch import nn

from msfusion.models.meta_arch.cascade_rcnn import CascadeRCNN
from msfusion.models.meta_arch.detector import DETECTOR_ARCHS, DetectorArgs, DetectorBackbone
from msfusion.models.meta_arch.rcnn import RCNNArch, StageHeads

__all__ = ["CascadeRCNNArch", "CascadeMaskRCNNArch"]


class CascadeRCNNArch(RCNNArch):
    """Three box stages at IoU 0.5, 0.6, 0.7 after torchvision's RPN."""

    name = "cascade_rcnn"

    def make(self, body: DetectorBackbone, args: DetectorArgs, transform: dict) -> nn.Module:
        return CascadeRCNN(
            body,
            args.num_classes,
            with_mask=self.predicts_masks,
            representation=args.representation,
            mask_chs=args.mask_chs,
            **transform,
            **{**self.rpn_and_pools(body, args), **args.extra},
        )

    def stage_heads(self, roi_heads: nn.Module) -> list[StageHeads]:
        masks = roi_heads.mask_heads or [None] * len(roi_heads.stages)
        predictors = roi_heads.mask_predictors or [None] * len(roi_heads.stages)
        return [
            (stage.box_head, stage.box_predictor, mask, pred)
            for stage, mask, pred in zip(roi_heads.stages, masks, predictors, strict=True)
        ]


class CascadeMaskRCNNArch(CascadeRCNNArch):
    """Cascade R-CNN with a mask head per stage (masks averaged over stages at test time)."""

    name = "cascade_mask_rcnn"
    predicts_masks = True


DETECTOR_ARCHS.register("cascade_rcnn", CascadeRCNNArch(), aliases=("cascadercnn",))
DETECTOR_ARCHS.register("cascade_mask_rcnn", CascadeMaskRCNNArch())
