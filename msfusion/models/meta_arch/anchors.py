"""Anchor generators and RoI pooling that the torchvision-style architectures share (their papers' settings)."""

from __future__ import annotations

from collections.abc import Sequence

from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign

from msfusion.models.meta_arch.detector import DetectorBackbone

__all__ = ["rpn_anchors", "retina_anchors", "fcos_anchors", "roi_pool"]


def rpn_anchors(strides: Sequence[int]) -> AnchorGenerator:
    """FPN paper (arXiv 1612.03144) Sec. 4.1: one anchor scale per level, 8 x stride (32^2..512^2 on P2-P6), ratios 1:2, 1:1, 2:1."""
    return AnchorGenerator(tuple((8 * s,) for s in strides), ((0.5, 1.0, 2.0),) * len(strides))


def retina_anchors(strides: Sequence[int]) -> AnchorGenerator:
    """RetinaNet (arXiv 1708.02002) Sec. 4: 4 x stride x {2^0, 2^(1/3), 2^(2/3)} (32^2..512^2 on P3-P7), three ratios."""
    sizes = tuple((4 * s, int(4 * s * 2 ** (1 / 3)), int(4 * s * 2 ** (2 / 3))) for s in strides)
    return AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(strides))


def fcos_anchors(strides: Sequence[int]) -> AnchorGenerator:
    """FCOS locations: one "anchor" of the stride's size per location (torchvision's FCOS reads its size ranges)."""
    return AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))


def roi_pool(body: DetectorBackbone, output_size: int, roi_strides: Sequence[int]) -> MultiScaleRoIAlign:
    """RoI Align (sampling ratio 2) over the levels at ``roi_strides`` (Mask R-CNN's P2-P5; FPN paper Eq. 1)."""
    names = [n for n, s in zip(body.names, body.strides, strict=True) if s in roi_strides]
    if not names:
        raise ValueError(f"the RoI heads pool from strides {tuple(roi_strides)}, but the features have {body.strides}")
    return MultiScaleRoIAlign(featmap_names=names, output_size=output_size, sampling_ratio=2)
