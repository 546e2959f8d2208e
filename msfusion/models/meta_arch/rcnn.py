"""Faster R-CNN and Mask R-CNN with FPN on msfusion's feature chain (torchvision's models).

- ``"faster_rcnn"``: Faster R-CNN (Ren et al., arXiv 1506.01497) with FPN
  (Lin et al., arXiv 1612.03144, Sec. 4.1-4.2): RPN anchors of one size per
  level and three aspect ratios, RoI Align 7x7 on P2-P5, two 1024-d FC
  layers, class-specific box regression.
- ``"mask_rcnn"``: Mask R-CNN (He et al., arXiv 1703.06870): Faster R-CNN plus
  a 14x14 RoI Align, four 3x3 convs, a 2x deconv and per-class 28x28 masks.

``RCNNArch`` holds what the whole R-CNN family shares (Cascade R-CNN too:
``msfusion.models.meta_arch.cascade``): the RPN on P2-P6, the RoI Align
pools, and the counting of its RoI heads.
"""

from __future__ import annotations

from abc import abstractmethod

from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor

from msfusion.models.meta_arch.anchors import roi_pool, rpn_anchors
from msfusion.models.meta_arch.detector import (
    DETECTOR_ARCHS,
    DetectorArgs,
    DetectorBackbone,
    DetectorComplexity,
    TorchvisionArch,
)

__all__ = ["RCNNArch", "FasterRCNNArch", "MaskRCNNArch"]

# One stage of RoI heads as ``DetectorComplexity.box_and_mask`` runs it: box head, box predictor,
# and the mask head and predictor (None without masks).
StageHeads = tuple[nn.Module, nn.Module, nn.Module | None, nn.Module | None]


class RCNNArch(TorchvisionArch):
    """The R-CNN family: an RPN on P2-P6, then RoI heads on boxes pooled from ``roi_strides``.

    A subclass builds its detector in ``make`` (with ``rpn_and_pools``) and
    lists its RoI heads per stage in ``stage_heads``, which ``complexity``
    counts on 1000 box RoIs and 100 mask RoIs each.
    """

    pyramid = "p2p6"
    # mask_chs is accepted at any value for the whole R-CNN family, as before the architecture registry.
    options = ("representation", "mask_chs")

    def rpn_and_pools(self, body: DetectorBackbone, args: DetectorArgs) -> dict[str, nn.Module]:
        """The RPN's anchors, the 7x7 box RoI Align and, for mask archs, the 14x14 mask RoI Align (no weights)."""
        parts = dict(rpn_anchor_generator=rpn_anchors(body.strides), box_roi_pool=roi_pool(body, 7, args.roi_strides))
        if self.predicts_masks:
            parts["mask_roi_pool"] = roi_pool(body, 14, args.roi_strides)
        return parts

    @abstractmethod
    def stage_heads(self, roi_heads: nn.Module) -> list[StageHeads]:
        """The detector's RoI heads, one ``StageHeads`` per stage."""

    def complexity(self, counter: DetectorComplexity, feats: list[Tensor]) -> list[Tensor]:
        outs = list(counter.detector.rpn.head(feats)[0])
        for box_head, predictor, mask_head, mask_pred in self.stage_heads(counter.detector.roi_heads):
            counter.box_and_mask(box_head, predictor, feats[0], mask_head, mask_pred)
        return outs


class FasterRCNNArch(RCNNArch):
    """Faster R-CNN + FPN: RPN on P2-P6, box head on RoIs pooled from ``roi_strides``."""

    name = "faster_rcnn"

    def box_parts(self, body: DetectorBackbone, args: DetectorArgs) -> dict[str, nn.Module]:
        return dict(
            self.rpn_and_pools(body, args),
            box_head=TwoMLPHead(body.out_channels * 7 * 7, args.representation),
            box_predictor=FastRCNNPredictor(args.representation, args.num_classes),
        )

    def make(self, body: DetectorBackbone, args: DetectorArgs, transform: dict) -> nn.Module:
        parts = {**self.box_parts(body, args), **args.extra}
        return FasterRCNN(body, None, **transform, **parts)  # the class count is in box_predictor

    def stage_heads(self, roi_heads: nn.Module) -> list[StageHeads]:
        return [(roi_heads.box_head, roi_heads.box_predictor, roi_heads.mask_head, roi_heads.mask_predictor)]


class MaskRCNNArch(FasterRCNNArch):
    """Mask R-CNN + FPN: Faster R-CNN plus the mask branch on 14x14 RoIs."""

    name = "mask_rcnn"
    predicts_masks = True

    def make(self, body: DetectorBackbone, args: DetectorArgs, transform: dict) -> nn.Module:
        parts = dict(
            self.box_parts(body, args),
            mask_head=MaskRCNNHeads(body.out_channels, [args.mask_chs] * 4, 1),
            mask_predictor=MaskRCNNPredictor(args.mask_chs, args.mask_chs, args.num_classes),
        )
        return MaskRCNN(body, None, **transform, **{**parts, **args.extra})


DETECTOR_ARCHS.register("faster_rcnn", FasterRCNNArch(), aliases=("fasterrcnn",))
DETECTOR_ARCHS.register("mask_rcnn", MaskRCNNArch(), aliases=("maskrcnn",))
