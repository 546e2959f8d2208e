"""The all-MLP decoder of SegFormer, SegNeXt's Fig. 3a / Table 7 (a).

Papers: "SegFormer: Simple and Efficient Design for Semantic Segmentation with
Transformers", Xie et al., NeurIPS 2021 (arXiv 2105.15203), Sec. 3.2 and Eq. 1;
SegNeXt (arXiv 2209.08575) Sec. 3.2, Fig. 3a and Table 7 ("SegNeXt-T (a)":
4.4 M, 10.0 GFLOPs at 512x512).

Each selected stage is projected to ``channels`` by a 1x1 conv (SegFormer's
per-stage "MLP"), upsampled to the first selected stage's size (1/4 with all
four stages), concatenated, fused by a 1x1 conv and classified. Layout and keys
follow mmseg's ``SegformerHead`` (the code base SegNeXt is built on):
``convs.{i}`` and ``fusion_conv`` are conv (no bias) + norm + ReLU, concatenated
in stage order, and ``conv_seg`` classifies after Dropout2d.

Norm: GN(32) by default, the ``norm_cfg`` of SegNeXt's head configs, which a
decoder swap in those configs keeps; SegFormer's own configs use (Sync)BN
(``norm="bn"``). Both have 2C parameters and C MACs per pixel, so the counts do
not depend on the choice. SegNeXt-T with this head and all four stages counts
4.34 M / 10.06 GMACs at 512x512 (paper: 4.4 M / 10.0 G).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from msfusion.layers import ConvNormAct, FeatureInfo, resize_to
from msfusion.models.heads.base import DecodeHead
from msfusion.registry import register_model

__all__ = ["MLPHead"]


class MLPHead(DecodeHead):
    """SegFormer's all-MLP decoder (Fig. 3a).

    Input: the producer's feature list, finest first. Output: logits
    (B, num_classes, H_0, W_0) at the finest selected map's resolution
    (H/4, W/4 with the default four strides).

    Args:
        feature_info: the producer's ``feature_info``.
        num_classes: classes K.
        in_strides: strides read (SegFormer: all four stages, 4, 8, 16, 32).
        channels: the unified decoder width (SegFormer's C; 256 for SegNeXt-T).
        dropout: Dropout2d rate before the classifier.
        norm: norm after each 1x1 conv ("gn", "bn", "syncbn").
    """

    def __init__(
        self,
        feature_info: Sequence[FeatureInfo],
        num_classes: int,
        in_strides: Sequence[int] = (4, 8, 16, 32),
        channels: int = 256,
        dropout: float = 0.1,
        norm: str = "gn",
    ) -> None:
        super().__init__(feature_info, num_classes, in_strides, channels, dropout)
        self.convs = nn.ModuleList(ConvNormAct(chs, channels, 1, norm=norm, act="relu") for chs in self.in_channels)
        self.fusion_conv = ConvNormAct(channels * len(self.in_channels), channels, 1, norm=norm, act="relu")

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        inputs = self.select(features)
        size = inputs[0].shape[-2:]
        # Project at each stage's own resolution, then upsample: cheaper than the reverse.
        outs = [resize_to(conv(x), size) for conv, x in zip(self.convs, inputs, strict=True)]
        return self.cls_seg(self.fusion_conv(torch.cat(outs, dim=1)))


@register_model(kind="head")
def mlp(feature_info: Sequence[FeatureInfo], num_classes: int, **kwargs: Any) -> MLPHead:
    """SegFormer's all-MLP head: strides 4, 8, 16, 32 -> logits at 1/4."""
    return MLPHead(feature_info, num_classes, **kwargs)
