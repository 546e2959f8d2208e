"""The dense (one-stage) detectors on msfusion's feature chain: RetinaNet and FCOS (torchvision's models).

- ``"retinanet"``: RetinaNet (Lin et al., arXiv 1708.02002, Sec. 4): P3-P7,
  anchors 4 x stride x {2^0, 2^(1/3), 2^(2/3)} with three aspect ratios,
  focal loss.
- ``"fcos"``: FCOS (Tian et al., arXiv 1904.01355): P3-P7, one point per
  location, centre sampling, GIoU loss, centre-ness; ``head_convs`` 3x3
  conv + GroupNorm + ReLU layers per tower (4 in the paper).
"""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.models.detection import FCOS, RetinaNet
from torchvision.models.detection.fcos import FCOSHead

from msfusion.models.meta_arch.anchors import fcos_anchors, retina_anchors
from msfusion.models.meta_arch.detector import (
    DETECTOR_ARCHS,
    DetectorArgs,
    DetectorBackbone,
    DetectorComplexity,
    TorchvisionArch,
)

__all__ = ["RetinaNetArch", "FCOSArch"]


class RetinaNetArch(TorchvisionArch):
    """RetinaNet: shared classification and box subnets on every level."""

    name = "retinanet"

    def make(self, body: DetectorBackbone, args: DetectorArgs, transform: dict) -> nn.Module:
        parts = {"anchor_generator": retina_anchors(body.strides), **args.extra}
        return RetinaNet(body, args.num_classes, **transform, **parts)

    def complexity(self, counter: DetectorComplexity, feats: list[Tensor]) -> list[Tensor]:
        return list(counter.detector.head(feats).values())


class FCOSArch(RetinaNetArch):
    """FCOS: anchor-free points, classification, box and centre-ness towers."""

    name = "fcos"
    options = ("head_convs",)

    def make(self, body: DetectorBackbone, args: DetectorArgs, transform: dict) -> nn.Module:
        parts = dict(
            anchor_generator=fcos_anchors(body.strides),
            head=FCOSHead(body.out_channels, 1, args.num_classes, num_convs=args.head_convs),
        )
        return FCOS(body, args.num_classes, **transform, **{**parts, **args.extra})


DETECTOR_ARCHS.register("retinanet", RetinaNetArch())
DETECTOR_ARCHS.register("fcos", FCOSArch())
