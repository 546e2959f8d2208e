"""UperNet's decode head: a pyramid pooling module on the coarsest map plus an FPN.

Paper: "Unified Perceptual Parsing for Scene Understanding", Xiao et al., ECCV
2018 (arXiv 1807.10221), Sec. 3.1 / Fig. 3 (PPM + FPN, fused at 1/4). It is the
segmentation framework of the CEDNet paper (arXiv 2302.06052, Sec. 4.4 and
Table 3) and of the ConvNeXt / Swin baselines it compares with.

Every detail the paper leaves out follows mmsegmentation's ``UPerHead``, which
the official CEDNet configs use (``ced-mmseg/configs/cednet/upernet_ced_next_*``
in the released CEDNet code): 512 channels, pool scales (1, 2, 3, 6), conv -> BN -> ReLU units
without conv bias, bilinear resizing with ``align_corners=False``, dropout 0.1
before the classifier. Module names equal mmcv's (``lateral_convs.{i}.conv``,
``psp_modules.{j}.1.bn``, ``bottleneck``, ``fpn_convs``, ``fpn_bottleneck``,
``conv_seg``), so an official mmseg UperNet ``decode_head.*`` state dict loads
without renaming.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from msfusion.layers import ConvNormAct, FeatureInfo, resize_to
from msfusion.layers.pooling import AdaptiveAvgPool2d
from msfusion.models.heads.base import DecodeHead
from msfusion.registry import register_model

__all__ = ["PPM", "UPerHead"]


class PPM(nn.ModuleList):
    """Pyramid pooling module (PSPNet): one pooled 1x1 conv branch per scale.

    Input (B, C, h, w); output: a list with one (B, channels, h, w) map per
    pool scale (adaptive average pooling to ``scale x scale``, 1x1 conv -> norm
    -> act, bilinear upsampling back to (h, w)). Branch ``j`` is
    ``Sequential(AdaptiveAvgPool2d, ConvNormAct)``, i.e. keys ``{j}.1.conv``,
    ``{j}.1.bn`` as in mmseg.
    """

    def __init__(
        self,
        pool_scales: Sequence[int],
        in_chs: int,
        channels: int,
        norm: str | None = "bn",
        act: str | None = "relu",
    ) -> None:
        super().__init__(
            # Exportable adaptive pooling (ONNX at any input size); same numbers and keys as nn.AdaptiveAvgPool2d.
            nn.Sequential(AdaptiveAvgPool2d(scale), ConvNormAct(in_chs, channels, 1, norm=norm, act=act))
            for scale in pool_scales
        )
        self.pool_scales = tuple(pool_scales)
        # BatchNorm over a 1x1 pooled map has one value per channel and image.
        self._needs_batch = 1 in self.pool_scales and norm in ("bn", "syncbn")

    def forward(self, x: Tensor) -> list[Tensor]:
        if self.training and self._needs_batch and x.shape[0] == 1:
            raise ValueError(
                "UperNet's pyramid pooling normalises a 1x1 pooled map with BatchNorm, which needs "
                "at least 2 images per batch in training mode. Call model.eval() for inference, "
                "train with batches of 2 or more, or build the head with norm='gn'."
            )
        size = x.shape[-2:]
        return [resize_to(branch(x), size) for branch in self]


class UPerHead(DecodeHead):
    """UperNet head: PPM on the coarsest selected map, then FPN top-down fusion.

    Forward, for selected inputs ``x_0 .. x_{L-1}`` (finest first):

    1. laterals ``l_i = lateral_convs[i](x_i)`` (1x1) for i < L-1, and
       ``l_{L-1} = bottleneck(cat[x_{L-1}, PPM(x_{L-1})])`` (3x3);
    2. top-down: ``l_{i-1} += resize(l_i, size(l_{i-1}))`` for i = L-1 .. 1;
    3. ``p_i = fpn_convs[i](l_i)`` (3x3) for i < L-1, ``p_{L-1} = l_{L-1}``;
    4. all ``p_i`` resized to the size of ``p_0`` and concatenated,
       ``fpn_bottleneck`` (3x3, L*channels -> channels), then ``cls_seg``.

    Input: the backbone's full feature list. Output: logits
    (B, num_classes, h_0, w_0) at the resolution of the first selected input
    (1/4 for the usual c2..c5). Any input sizes work: every fusion resizes to
    the finer map's actual size. In training mode the batch needs at least two
    images when a pool scale is 1 and the norm is BatchNorm (a 1x1 map per
    image), as in mmseg; a batch of one raises ``ValueError`` saying so.

    Args:
        feature_info: the producer's ``feature_info``.
        num_classes: classes K.
        in_strides: strides read, finest first (default 4, 8, 16, 32).
        channels: width of every branch (512 in the official configs).
        pool_scales: output sizes of the PPM's adaptive pools.
        dropout: Dropout2d probability before ``conv_seg``.
        norm: ``"bn"`` (default), ``"syncbn"`` (the official configs, for
            multi-GPU training) or ``"gn"``.
        act: activation of every conv unit.
    """

    def __init__(
        self,
        feature_info: Sequence[FeatureInfo],
        num_classes: int,
        in_strides: Sequence[int] = (4, 8, 16, 32),
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        norm: str | None = "bn",
        act: str | None = "relu",
    ) -> None:
        super().__init__(feature_info, num_classes, in_strides, channels, dropout)
        if not pool_scales or any(int(s) < 1 for s in pool_scales):
            raise ValueError(f"pool_scales must be positive output sizes, e.g. (1, 2, 3, 6); got {pool_scales}")
        last = self.in_channels[-1]
        self.psp_modules = PPM(pool_scales, last, channels, norm=norm, act=act)
        self.bottleneck = ConvNormAct(last + len(pool_scales) * channels, channels, 3, norm=norm, act=act)
        self.lateral_convs = nn.ModuleList(
            ConvNormAct(c, channels, 1, norm=norm, act=act) for c in self.in_channels[:-1]
        )
        self.fpn_convs = nn.ModuleList(
            ConvNormAct(channels, channels, 3, norm=norm, act=act) for _ in self.in_channels[:-1]
        )
        self.fpn_bottleneck = ConvNormAct(len(self.in_channels) * channels, channels, 3, norm=norm, act=act)

    def psp_forward(self, x: Tensor) -> Tensor:
        """(B, C_last, h, w) -> (B, channels, h, w): the PPM branch and its 3x3 bottleneck."""
        return self.bottleneck(torch.cat([x, *self.psp_modules(x)], dim=1))

    def forward_features(self, features: Sequence[Tensor]) -> Tensor:
        """Backbone features -> the fused (B, channels, h_0, w_0) map before ``cls_seg``."""
        inputs = self.select(features)
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs, strict=False)]
        laterals.append(self.psp_forward(inputs[-1]))
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize_to(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals, strict=False)]
        outs.append(laterals[-1])
        size = outs[0].shape[-2:]
        return self.fpn_bottleneck(torch.cat([resize_to(o, size) for o in outs], dim=1))

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        return self.cls_seg(self.forward_features(features))


@register_model(kind="head")
def uper(feature_info: Sequence[FeatureInfo], num_classes: int, **kwargs: Any) -> UPerHead:
    """UperNet's PPM + FPN head: strides 4, 8, 16, 32 -> logits at 1/4."""
    return UPerHead(feature_info, num_classes, **kwargs)
