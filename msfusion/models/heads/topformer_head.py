"""TopFormer's segmentation head: sum at 1/8, one 1x1 conv, the classifier.

Paper: "TopFormer: Token Pyramid Transformer for Mobile Semantic Segmentation",
Zhang et al., CVPR 2022 (arXiv 2204.05525), Sec. 3.3 "Segmentation Head":
the injected maps of strides 16 and 32 are upsampled bilinearly
(align_corners False) to the stride-8 map and added to it; a 1x1 conv + BN +
ReLU, dropout 0.1 and a 1x1 classifier give the logits at 1/8. The released
TopFormer-T makes the 1x1 conv depthwise (``dw=True``) to save computation;
S and B use a full 1x1 conv. The head has 0.020 / 0.066 / 0.105 M parameters
for T / S / B with 150 classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn
from torch import Tensor

from msfusion.layers import ConvNormAct, FeatureInfo, check_feature_info, indices_for_strides, resize_to
from msfusion.models.heads.base import DecodeHead
from msfusion.registry import register_model

__all__ = ["TopFormerHead"]


class TopFormerHead(DecodeHead):
    """Sum of the maps at the finest stride read, 1x1 conv + BN + ReLU, dropout, classifier.

    ``forward(features)`` takes the producer's maps and returns logits
    (B, num_classes, H/s, W/s) at the finest stride s of ``in_strides`` (8).

    Args:
        feature_info: the producer's ``feature_info``.
        num_classes: classes K.
        in_strides: strides summed (TopFormer: 8, 16, 32).
        channels: channels of the sum; None takes those of the finest map read.
            A map with other channels is first brought to ``channels`` by a 1x1
            conv + BN (never the case on TopFormer, whose injected maps all have
            ``channels``), so the head also fits other backbones.
        dw: depthwise 1x1 fuse conv (TopFormer-T).
        dropout: Dropout2d rate before the classifier.
    """

    def __init__(
        self,
        feature_info: Sequence[FeatureInfo],
        num_classes: int,
        in_strides: Sequence[int] = (8, 16, 32),
        channels: int | None = None,
        dw: bool = False,
        dropout: float = 0.1,
    ) -> None:
        info = check_feature_info(feature_info, "the features given to TopFormerHead")
        index = indices_for_strides(info, in_strides, "TopFormerHead")
        finest = min(range(len(index)), key=lambda k: info[index[k]]["reduction"])
        channels = int(channels or info[index[finest]]["chs"])
        super().__init__(info, num_classes, in_strides, channels, dropout)
        self.finest = finest
        self.align = nn.ModuleList(
            [nn.Identity() if c == channels else ConvNormAct(c, channels, 1, act=None) for c in self.in_channels]
        )
        self.fuse = ConvNormAct(channels, channels, 1, groups=channels if dw else 1, act="relu")
        nn.init.normal_(self.conv_seg.weight, 0.0, 0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        inputs = [align(x) for align, x in zip(self.align, self.select(features), strict=True)]
        size = inputs[self.finest].shape[-2:]
        x = inputs[self.finest]
        for k, f in enumerate(inputs):
            if k != self.finest:
                x = x + resize_to(f, size)
        return self.cls_seg(self.fuse(x))


@register_model(kind="head")
def topformer_head(feature_info: Sequence[FeatureInfo], num_classes: int, **kwargs) -> TopFormerHead:
    """TopFormer's head (Sec. 3.3): strides 8, 16, 32 summed at 1/8, 1x1 conv, classifier."""
    return TopFormerHead(feature_info, num_classes, **kwargs)
