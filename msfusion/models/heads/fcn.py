"""The FCN head, used as UperNet's auxiliary head (deep supervision on one feature map).

Paper: "Fully Convolutional Networks for Semantic Segmentation", Long et al.,
CVPR 2015; as an auxiliary head it follows PSPNet (Zhao et al., CVPR 2017,
Sec. 3.3: an extra loss on an intermediate feature, weight 0.4). CEDNet's
ADE20K UperNet (arXiv 2302.06052, Sec. 4.4) attaches it to the c3' map of
stage m-1 (the official CEDNet mmseg configs: ``channels`` 256, ``num_convs``
1, ``concat_input`` False, loss weight 0.4).

Semantics and module names follow mmsegmentation's ``FCNHead``: ``convs.{i}``
(3x3 conv -> BN -> ReLU, no conv bias), an optional ``conv_cat`` over the
concatenation of input and output, and ``conv_seg`` after Dropout2d.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from msfusion.layers import ConvNormAct, FeatureInfo
from msfusion.models.heads.base import DecodeHead
from msfusion.registry import register_model

__all__ = ["FCNHead"]


class FCNHead(DecodeHead):
    """``num_convs`` conv units on one feature map, then the classifier.

    Input: the producer's full feature list; the map of stride ``in_stride``
    (B, C, h, w) is used. Output: logits (B, num_classes, h, w) at that map's
    resolution.

    Args:
        feature_info: the producer's ``feature_info``.
        num_classes: classes K.
        in_stride: the stride of the single map fed to the head (16, the
            third ResNet stage, as mmseg's UperNet configs).
        channels: width of the conv units (256 for auxiliary heads).
        num_convs: conv units; 0 passes the input straight to the classifier
            and then needs ``channels`` equal to the input channels.
        kernel_size: kernel of the conv units.
        dilation: dilation of the conv units.
        concat_input: fuse ``cat[input, convs(input)]`` with one more conv unit.
        dropout: Dropout2d probability before ``conv_seg``.
        norm: ``"bn"``, ``"syncbn"`` or ``"gn"``.
        act: activation of the conv units.
    """

    def __init__(
        self,
        feature_info: Sequence[FeatureInfo],
        num_classes: int,
        in_stride: int = 16,
        channels: int = 256,
        num_convs: int = 1,
        kernel_size: int = 3,
        dilation: int = 1,
        concat_input: bool = False,
        dropout: float = 0.1,
        norm: str | None = "bn",
        act: str | None = "relu",
    ) -> None:
        if not isinstance(in_stride, int):
            raise ValueError(f"FCNHead takes one feature map: in_stride must be an int, got {in_stride!r}")
        super().__init__(feature_info, num_classes, (in_stride,), channels, dropout)
        in_chs = self.in_channels[0]
        if num_convs < 0:
            raise ValueError(f"num_convs must be >= 0, got {num_convs}")
        if num_convs == 0 and in_chs != channels:
            raise ValueError(f"num_convs=0 needs channels equal to the input channels ({in_chs}), got {channels}")
        pad = dilation * (kernel_size // 2)
        units: list[nn.Module] = [
            ConvNormAct(
                in_chs if i == 0 else channels,
                channels,
                kernel_size,
                padding=pad,
                dilation=dilation,
                norm=norm,
                act=act,
            )
            for i in range(num_convs)
        ]
        self.convs = nn.Sequential(*units) if units else nn.Identity()
        self.concat_input = concat_input
        if concat_input:
            self.conv_cat = ConvNormAct(in_chs + channels, channels, kernel_size, norm=norm, act=act)

    def forward_features(self, features: Sequence[Tensor]) -> Tensor:
        """Backbone features -> (B, channels, h, w) before ``cls_seg``."""
        x = self.select(features)[0]
        out = self.convs(x)
        if self.concat_input:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return out

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        return self.cls_seg(self.forward_features(features))


@register_model(kind="head")
def fcn(feature_info: Sequence[FeatureInfo], num_classes: int, **kwargs: Any) -> FCNHead:
    """The FCN head on one map (stride 16 by default), UperNet's auxiliary head."""
    return FCNHead(feature_info, num_classes, **kwargs)
