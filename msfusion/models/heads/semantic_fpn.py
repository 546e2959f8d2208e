"""Semantic FPN: the semantic segmentation branch of Panoptic FPN.

Paper: Kirillov, Girshick, He, Dollar, "Panoptic Feature Pyramid Networks",
CVPR 2019 (arXiv 1901.02446), Sec. 3 / Fig. 3: from each FPN level (strides 4,
8, 16, 32), a chain of upsampling stages, each a 3x3 conv with 128 channels,
GroupNorm (32 groups), ReLU and 2x bilinear upsampling, until stride 4 (three
stages from 1/32, two from 1/16, one from 1/8; the 1/4 level gets one conv and
no upsampling); the four stride-4 maps are summed element-wise, and a 1x1 conv
gives the class logits at 1/4, which the segmentor upsamples to the image.

Module names and the chain lengths equal mmsegmentation's ``FPNHead``
(``scale_heads.{i}.{j}.conv``, with the upsampling layers at the odd positions
``j``; ``max(1, log2(stride_i / stride_0))`` convs per level; ``conv_seg``), so
its Semantic FPN checkpoints load; its configs use SyncBN (``norm="syncbn"``)
where the paper uses GroupNorm (the default here), and dropout 0.1 before the
classifier.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from msfusion.layers import ConvNormAct, FeatureInfo, resize_to
from msfusion.models.heads.base import DecodeHead
from msfusion.registry import register_model

__all__ = ["SemanticFPNHead"]


class SemanticFPNHead(DecodeHead):
    """Panoptic FPN's semantic branch (Kirillov et al., arXiv 1901.02446, Sec. 3, Fig. 3).

    Forward, for selected maps ``x_i`` at strides ``s_0 < s_1 < ...``:
    ``y_i = scale_heads[i](x_i)``, where each stage is 3x3 conv -> norm -> ReLU
    -> bilinear upsampling (align_corners=False) by 2; then
    ``logits = conv_seg(dropout(sum_i y_i))``. Every upsampling goes to the
    exact size of the selected map of half the stride when there is one, so
    odd sizes need no extra resampling (a 2x upsampling of a 13x17 map to
    fuse with a 25x33 one goes straight to 25x33); for even sizes this is the
    same as the paper's 2x.

    Input: the producer's full list (finest first). Output: logits
    (B, num_classes, H_0, W_0) at the first selected stride (1/4).

    Args:
        feature_info: the producer's ``feature_info`` (usually an FPN's).
        num_classes: classes K.
        in_strides: strides read, finest first; each a power-of-two multiple
            of the first (default 4, 8, 16, 32 as the paper).
        channels: width of every stage (128 in the paper).
        dropout: Dropout2d probability before ``conv_seg``.
        norm: ``"gn"`` (the paper), ``"bn"`` or ``"syncbn"`` (mmseg's configs).
        num_groups: GroupNorm groups (32 in the paper).
        act: activation of every stage.
    """

    def __init__(
        self,
        feature_info: Sequence[FeatureInfo],
        num_classes: int,
        in_strides: Sequence[int] = (4, 8, 16, 32),
        channels: int = 128,
        dropout: float = 0.1,
        norm: str | None = "gn",
        num_groups: int = 32,
        act: str | None = "relu",
    ) -> None:
        super().__init__(feature_info, num_classes, in_strides, channels, dropout)
        base = self.in_strides[0]
        steps = []
        for s in self.in_strides:
            ratio = s / base
            if ratio < 1 or ratio != 2 ** round(math.log2(ratio)):
                raise ValueError(
                    f"SemanticFPNHead: every stride must be a power-of-two multiple of the first, finest first; "
                    f"got in_strides {list(self.in_strides)}"
                )
            steps.append(round(math.log2(ratio)))
        self.num_upsamples = tuple(steps)
        self.scale_heads = nn.ModuleList()
        for in_chs, n_up in zip(self.in_channels, steps, strict=True):
            layers: list[nn.Module] = []
            for k in range(max(1, n_up)):
                layers.append(
                    ConvNormAct(in_chs if k == 0 else channels, channels, 3, norm=norm, act=act, num_groups=num_groups)
                )
                if n_up:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))

    def _scale_head(self, i: int, x: Tensor, sizes: dict[int, tuple[int, int]]) -> Tensor:
        """Run ``scale_heads[i]`` on (B, C_i, H_i, W_i); each upsampling goes to the map of half the stride."""
        stride = self.in_strides[i]
        for layer in self.scale_heads[i]:
            if isinstance(layer, nn.Upsample):
                stride //= 2
                size = sizes.get(stride, (x.shape[-2] * 2, x.shape[-1] * 2))
                x = resize_to(x, size)
            else:
                x = layer(x)
        return x

    def forward_features(self, features: Sequence[Tensor]) -> Tensor:
        """Producer features -> the summed (B, channels, H_0, W_0) map before ``cls_seg``."""
        inputs = self.select(features)
        sizes = {s: tuple(x.shape[-2:]) for s, x in zip(self.in_strides, inputs, strict=True)}
        out = self._scale_head(0, inputs[0], sizes)
        for i in range(1, len(inputs)):
            out = out + resize_to(self._scale_head(i, inputs[i], sizes), out.shape[-2:])
        return out

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        return self.cls_seg(self.forward_features(features))


@register_model(kind="head")
def semantic_fpn(feature_info: Sequence[FeatureInfo], num_classes: int, **kwargs: Any) -> SemanticFPNHead:
    """Panoptic FPN's semantic branch: strides 4, 8, 16, 32 -> logits at 1/4, 128 channels, GN."""
    return SemanticFPNHead(feature_info, num_classes, **kwargs)
