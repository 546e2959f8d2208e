"""CEDNet blocks with convolutional token mixers (CEDNet, arXiv 2302.06052, Sec. 3.3, Fig. 3).

A CED block is a token mixer followed by a two-layer MLP; the LR (long-range)
CED block adds a 7x7 depthwise convolution with dilation 3 and two skip
connections in front of the MLP. This file holds the convolutional mixers:

- ``CEDBlock`` / ``LRCEDBlock``: the default 7x7 depthwise mixer (ConvNeXt style,
  the official ``NeXtBlock`` / ``DNeXtBlock``);
- ``BottleneckBlock`` / ``LRBottleneckBlock``: the ResNet-style mixer of the
  official ``CEDNet_res50`` (Table 5, "vanilla conv 3x3").

The attention mixers (Swin, CSwin) are in ``cednet_mixers.py``. Attribute names
equal the official ones (the released CEDNet code, zhanggang001/CEDNet,
``models/cednet.py``) so that official checkpoints load without renaming.

All blocks take and return (B, C, H, W) tensors.
"""

from __future__ import annotations

from abc import ABCMeta, abstractmethod
from typing import Any

import torch
from torch import Tensor, nn

from msfusion.layers import DropPath, LayerNorm2d

__all__ = [
    "CEDBlock",
    "LRCEDBlock",
    "BottleneckBlock",
    "LRBottleneckBlock",
    "make_norm2d",
    "make_act",
    "init_weights",
    "NORMS",
    "ACTS",
]

NORMS = ("ln", "bn")
ACTS = ("gelu", "relu")


def make_norm2d(norm: str, chs: int) -> nn.Module:
    """The channels-first norm used all over CEDNet.

    ``"ln"``: LayerNorm over C of an NCHW map, eps 1e-6 (the official
    ``LayerNorm(data_format="channels_first")``, numerically F.layer_norm over C).
    ``"bn"``: BatchNorm2d (the official R50 variant).
    """
    if norm == "ln":
        return LayerNorm2d(chs, eps=1e-6)
    if norm == "bn":
        return nn.BatchNorm2d(chs)
    raise ValueError(f"unknown norm {norm!r}; CEDNet allows {NORMS}")


def make_act(act: str) -> nn.Module:
    """``"gelu"`` (exact erf form, the NeXt/Swin/CSwin variants) or ``"relu"`` (R50)."""
    if act == "gelu":
        return nn.GELU()
    if act == "relu":
        return nn.ReLU(inplace=False)
    raise ValueError(f"unknown activation {act!r}; CEDNet allows {ACTS}")


def init_weights(m: nn.Module) -> None:
    """Official init (every CEDNet part): Kaiming-normal (fan-out, linear gain) convs and linears, zero biases."""
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="linear")
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def _dw7_norm_act(dim: int, norm: str, act: str, dilation: int = 1) -> nn.Sequential:
    """7x7 depthwise conv (dilation r, "same" padding) + norm + activation: the LR blocks' long-range mixer."""
    return nn.Sequential(
        nn.Conv2d(dim, dim, 7, padding=3 * dilation, dilation=dilation, groups=dim),
        make_norm2d(norm, dim),
        make_act(act),
    )


class _CEDBlockBase(nn.Module, metaclass=ABCMeta):
    """A token mixer (``build_mixer``, one per subclass), then a 4x MLP in channels-last with layer scale.

    ``x + DropPath(gamma * MLP(mixer(x)))``; the subclass's ``forward`` applies its mixer.

    Args:
        dim: channels C.
        drop_path: stochastic-depth rate of the residual branch.
        norm: ``"ln"`` (default) or ``"bn"``, the norm of the mixer.
        act: ``"gelu"`` (default) or ``"relu"``.
        layer_scale_init: initial value of ``gamma``; 0 or less removes it (official behaviour).
        mlp_ratio: hidden width of the MLP over C.
        **mixer: the subclass's mixer arguments (``kernel_size``, ``dilation``).
    """

    def __init__(
        self,
        dim: int,
        drop_path: float = 0.0,
        norm: str = "ln",
        act: str = "gelu",
        layer_scale_init: float = 1e-6,
        mlp_ratio: float = 4.0,
        **mixer: Any,
    ) -> None:
        super().__init__()
        self.build_mixer(dim, norm, act, **mixer)
        hidden = int(mlp_ratio * dim)
        self.pwconv1 = nn.Linear(dim, hidden)
        self.act = make_act(act)
        self.pwconv2 = nn.Linear(hidden, dim)
        self.gamma = nn.Parameter(layer_scale_init * torch.ones(dim)) if layer_scale_init > 0 else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    @abstractmethod
    def build_mixer(self, dim: int, norm: str, act: str) -> None:
        """Create the block's token-mixer layers as attributes (their names are the checkpoint keys)."""

    def _mlp(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        x = self.pwconv2(self.act(self.pwconv1(x)))
        if self.gamma is not None:
            x = self.gamma * x
        return x.permute(0, 3, 1, 2)


class CEDBlock(_CEDBlockBase):
    """CED block (Sec. 3.3, solid elements of Fig. 3), the official ``NeXtBlock``.

    ``x + DropPath(gamma * MLP(LN(DWConv7x7(x))))`` with a 4x MLP and GELU.
    Arguments as ``_CEDBlockBase``, and ``kernel_size``, the depthwise kernel
    of the token mixer (7).
    """

    def build_mixer(self, dim: int, norm: str, act: str, kernel_size: int = 7) -> None:
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = make_norm2d(norm, dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        return x + self.drop_path(self._mlp(self.norm(self.dwconv(x))))


class LRCEDBlock(_CEDBlockBase):
    """Long-range CED block (Sec. 3.3, solid + dashed elements of Fig. 3), the official ``DNeXtBlock``.

    ``y = x + Act(LN(DW7x7(x)))``; ``y = y + Act(LN(DW7x7_dil(y)))``;
    ``out = x + DropPath(gamma * MLP(y))``. Each depthwise conv carries its own
    norm and activation inside its skip; the MLP input is not normalised again
    (as in the released CEDNet code). Arguments as ``_CEDBlockBase``, and
    ``dilation``, the dilation r of the second 7x7 depthwise conv (paper: r = 3).
    """

    def build_mixer(self, dim: int, norm: str, act: str, dilation: int = 3) -> None:
        self.dwconv1 = _dw7_norm_act(dim, norm, act)
        self.dwconv2 = _dw7_norm_act(dim, norm, act, dilation)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        y = x + self.dwconv1(x)
        y = y + self.dwconv2(y)
        return x + self.drop_path(self._mlp(y))


def _conv_norm(in_chs: int, out_chs: int, kernel_size: int, norm: str, act: str | None) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_chs, out_chs, kernel_size, padding=kernel_size // 2, bias=False),
        make_norm2d(norm, out_chs),
    ]
    if act is not None:
        layers.append(make_act(act))
    return nn.Sequential(*layers)


class BottleneckBlock(nn.Module):
    """ResNet-style CED block of the official ``CEDNet_res50`` (Table 5, token mixer "vanilla conv 3x3").

    ``Act(x + DropPath(Conv1x1_{4C->C}(Conv1x1_{C->4C}(Conv3x3(x)))))``, each conv
    bias-free and followed by a norm (BN in the official variant) and, except the
    last, the activation. The 3x3 conv is the token mixer, the two 1x1 convs the MLP.

    Args:
        dim: channels C.
        drop_path: stochastic-depth rate.
        norm: ``"bn"`` in the official variant; ``"ln"`` allowed.
        act: ``"relu"`` in the official variant.
        layer_scale_init: unused (the official block has no layer scale); accepted
            so every block has the same signature.
        mlp_ratio: expansion of the 1x1 pair.
        **long_range: the LR block's arguments (``LRBottleneckBlock``).
    """

    def __init__(
        self,
        dim: int,
        drop_path: float = 0.0,
        norm: str = "bn",
        act: str = "relu",
        layer_scale_init: float = 0.0,
        mlp_ratio: float = 4.0,
        **long_range: Any,
    ) -> None:
        super().__init__()
        hidden = int(mlp_ratio * dim)
        self.conv1 = _conv_norm(dim, dim, 3, norm, act)
        self.conv2 = _conv_norm(dim, hidden, 1, norm, act)
        self.conv3 = _conv_norm(hidden, dim, 1, norm, None)
        self.act = make_act(act)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.build_long_range(dim, norm, act, **long_range)

    def build_long_range(self, dim: int, norm: str, act: str) -> None:
        """The LR block's extra mixer (``LRBottleneckBlock``); the plain block has none."""

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        y = self.conv3(self.conv2(self.conv1(x)))
        return self.act(x + self.drop_path(y))


class LRBottleneckBlock(BottleneckBlock):
    """Long-range bottleneck block, the official ``DBottleneck``.

    As ``BottleneckBlock`` but the 3x3 conv gets a skip, and a 7x7 depthwise
    conv with dilation r (+ norm + act, with a bias as in the official code)
    follows with its own skip, before the 1x1 pair. Arguments as
    ``BottleneckBlock``, and ``dilation``, the dilation r (3).
    """

    def build_long_range(self, dim: int, norm: str, act: str, dilation: int = 3) -> None:
        self.dwconv1 = _dw7_norm_act(dim, norm, act, dilation)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        y = x + self.conv1(x)
        y = y + self.dwconv1(y)
        y = self.conv3(self.conv2(y))
        return self.act(x + self.drop_path(y))
