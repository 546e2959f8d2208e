"""Multi-scale convolutional attention (MSCA) and its relatives, shared by MSCAN and the MSCA head.

Paper: "SegNeXt: Rethinking Convolutional Attention Design for Semantic
Segmentation", Guo et al., NeurIPS 2022 (arXiv 2209.08575), Sec. 3.1, Eq. 1-2,
Fig. 2b; VAN's large-kernel attention (Guo et al., arXiv 2202.09741) is the
"w/o MSCA" ablation of Table 8. These blocks live in ``layers`` because two
model families use them: the MSCAN encoder and SegNeXt's appendix MSCA head.
Module names equal the released code's (``conv0``, ``conv{i}_1``,
``spatial_gating_unit``), so official checkpoints load.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msfusion.layers.features import is_channels_last

__all__ = ["STRIP_KERNELS", "MSCA", "LargeKernelAttention", "SpatialAttention"]

STRIP_KERNELS = (7, 11, 21)
# Channels-last training on CPU runs the strip branches contiguous on maps of at least this many pixels per
# channel (64 x 64); measured faster at 128x128 and 64x64, slower at 32x32 (torch 2.14, oneDNN).
_CONTIGUOUS_STRIPS_MIN_PIXELS = 4096


class MSCA(nn.Module):
    """Multi-scale convolutional attention (Sec. 3.1, Eq. 1-2, Fig. 2b).

    ``Att = Conv1x1(DW5x5(F) + sum_k Strip_k(DW5x5(F)))``, ``Out = Att * F``.
    Each strip branch is a depthwise 1xk then kx1 convolution. Shapes are
    preserved: (B, C, H, W) -> (B, C, H, W).

    Args:
        chs: channels C.
        branch_kernels: strip-branch kernel sizes, a subset of (7, 11, 21).
        channel_mixer: keep the 1x1 convolution (Table 6 ablates it).
        attention: multiply with the input (Table 6 ablates it).
    """

    def __init__(
        self,
        chs: int,
        branch_kernels: Sequence[int] = STRIP_KERNELS,
        channel_mixer: bool = True,
        attention: bool = True,
    ) -> None:
        super().__init__()
        unknown = sorted(set(branch_kernels) - set(STRIP_KERNELS))
        if unknown:
            raise ValueError(f"branch_kernels must be a subset of {STRIP_KERNELS}, got {tuple(branch_kernels)}")
        self.branch_kernels = tuple(sorted(set(branch_kernels)))
        self.conv0 = nn.Conv2d(chs, chs, 5, padding=2, groups=chs)
        # Official names: branch i -> conv{i}_1 (1xk) and conv{i}_2 (kx1), i = index in (7, 11, 21).
        for k in self.branch_kernels:
            i = STRIP_KERNELS.index(k)
            self.add_module(f"conv{i}_1", nn.Conv2d(chs, chs, (1, k), padding=(0, k // 2), groups=chs))
            self.add_module(f"conv{i}_2", nn.Conv2d(chs, chs, (k, 1), padding=(k // 2, 0), groups=chs))
        self.conv3 = nn.Conv2d(chs, chs, 1) if channel_mixer else nn.Identity()
        self.attention = attention

    def forward(self, x: Tensor) -> Tensor:
        attn = self.conv0(x)
        if (
            attn.requires_grad
            and attn.device.type == "cpu"
            and is_channels_last(attn)
            and attn.shape[-2] * attn.shape[-1] >= _CONTIGUOUS_STRIPS_MIN_PIXELS
        ):
            return self._forward_strips_contiguous(x, attn)
        branches = attn
        for k in self.branch_kernels:
            i = STRIP_KERNELS.index(k)
            branches = branches + getattr(self, f"conv{i}_2")(getattr(self, f"conv{i}_1")(attn))
        attn = self.conv3(branches)
        return attn * x if self.attention else attn

    def _forward_strips_contiguous(self, x: Tensor, attn: Tensor) -> Tensor:
        """Channels-last training on CPU: the strip branches run in the contiguous layout.

        oneDNN's channels-last backward of depthwise 1xk convolutions is several times slower
        than the contiguous one (1x21 at 2x64x128x128: about 270 vs 45 ms, torch 2.14), and a
        convolution follows its weight's layout, so the strip weights are made contiguous too.
        The same function; only the float summation order differs. SegNeXt-S's training step
        (batch 2, 512x512, channels-last, one thread) is about 1.1x faster with it.
        """
        strips_in = attn.contiguous()
        strips = None
        for k in self.branch_kernels:
            i = STRIP_KERNELS.index(k)
            branch = _conv_contiguous(
                getattr(self, f"conv{i}_2"), _conv_contiguous(getattr(self, f"conv{i}_1"), strips_in)
            )
            strips = branch if strips is None else strips + branch
        branches = attn if strips is None else attn + strips.contiguous(memory_format=torch.channels_last)
        attn = self.conv3(branches)
        return attn * x if self.attention else attn


def _conv_contiguous(conv: nn.Conv2d, x: Tensor) -> Tensor:
    weight = conv.weight.clone(
        memory_format=torch.contiguous_format
    )  # size-1 dims: .contiguous() may keep NHWC strides
    return F.conv2d(x, weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class LargeKernelAttention(nn.Module):
    """VAN's large-kernel attention, the "w/o MSCA" encoder of Table 8.

    A 21x21 receptive field decomposed as 5x5 depthwise, 7x7 depthwise with
    dilation 3, and 1x1; the result multiplies the input (VAN, arXiv 2202.09741).
    Keys ``conv0``, ``conv_spatial``, ``conv1`` follow VAN.
    """

    def __init__(self, chs: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(chs, chs, 5, padding=2, groups=chs)
        self.conv_spatial = nn.Conv2d(chs, chs, 7, padding=9, groups=chs, dilation=3)
        self.conv1 = nn.Conv2d(chs, chs, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv1(self.conv_spatial(self.conv0(x))) * x


class SpatialAttention(nn.Module):
    """The attention sub-layer: 1x1, GELU, MSCA, 1x1, plus an inner shortcut.

    The inner shortcut (on top of the block's residual) is in the official code,
    following VAN (the released SegNeXt code; SegNeXt issue #22).
    """

    def __init__(self, chs: int, gating: nn.Module) -> None:
        super().__init__()
        self.proj_1 = nn.Conv2d(chs, chs, 1)
        self.activation = nn.GELU()
        self.spatial_gating_unit = gating
        self.proj_2 = nn.Conv2d(chs, chs, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj_2(self.spatial_gating_unit(self.activation(self.proj_1(x)))) + x
