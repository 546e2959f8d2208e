"""Faster R-CNN and Mask R-CNN with FPN on msfusion's feature chain (torchvision's models).

- ``"faster_rcnn"``: Faster R-CNN (Ren et al., arXiv 1506.01497) with FPN
  (Lin et al., arXiv 1612.03144, Sec. 4.1-4.2): RPN anchors of one size per
  level and three aspect ratios, RoI Align 7x7 on P2-P5, two 1024-d FC
  layers, class-specific box regression.
- ``"mask_rcnn"``: Mask R-CNN (He et al., arXiv 1703.06870): Faster R-CNN plus
  a 14x14 RoI Align, four 3x3 convs, a 2x deconv and per-class 28x28 masks.
"""

from __future__ import annotations

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

__all__ = ["FasterRCNNArch", "MaskRCNNArch"]


class FasterRCNNArch(TorchvisionArch):
    """Faster R-CNN + FPN: RPN on P2-P6, box head on RoIs pooled from ``roi_strides``."""

    name = "faster_rcnn"
    pyramid = "p2p6"
    # mask_chs is accepted at any value for the whole R-CNN family, as before the architecture registry.
    options = ("representation", "mask_chs")

    def box_parts(self, body: DetectorBackbone, args: DetectorArgs) -> dict[str, nn.Module]:
        chs = body.out_channels
        return dict(
            rpn_anchor_generator=rpn_anchors(body.strides),
            box_roi_pool=roi_pool(body, 7, args.roi_strides),
            box_head=TwoMLPHead(chs * 7 * 7, args.representation),
            box_predictor=FastRCNNPredictor(args.representation, args.num_classes),
        )

    def make(self, body: DetectorBackbone, args: DetectorArgs, transform: dict) -> nn.Module:
        parts = {**self.box_parts(body, args), **args.extra}
        return FasterRCNN(body, None, **transform, **parts)  # the class count is in box_predictor

    def complexity(self, counter: DetectorComplexity, feats: list[Tensor]) -> list[Tensor]:
        det = counter.detector
        outs = list(det.rpn.head(feats)[0])
        heads = det.roi_heads
        counter.box_and_mask(heads.box_head, heads.box_predictor, feats[0], heads.mask_head, heads.mask_predictor)
        return outs


class MaskRCNNArch(FasterRCNNArch):
    """Mask R-CNN + FPN: Faster R-CNN plus the mask branch on 14x14 RoIs."""

    name = "mask_rcnn"
    predicts_masks = True

    def make(self, body: DetectorBackbone, args: DetectorArgs, transform: dict) -> nn.Module:
        parts = dict(
            self.box_parts(body, args),
            mask_roi_pool=roi_pool(body, 14, args.roi_strides),
            mask_head=MaskRCNNHeads(body.out_channels, [args.mask_chs] * 4, 1),
            mask_predictor=MaskRCNNPredictor(args.mask_chs, args.mask_chs, args.num_classes),
        )
        return MaskRCNN(body, None, **transform, **{**parts, **args.extra})


DETECTOR_ARCHS.register("faster_rcnn", FasterRCNNArch(), aliases=("fasterrcnn",))
DETECTOR_ARCHS.register("mask_rcnn", MaskRCNNArch(), aliases=("maskrcnn",))
