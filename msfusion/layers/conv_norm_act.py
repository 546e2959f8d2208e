"""Convolution -> normalisation -> activation, with mmcv's parameter names.

The official SegNeXt/CEDNet heads are built from mmcv's ``ConvModule``; keeping
its attribute names (``conv``, ``bn``/``gn``) lets official checkpoints load
without renaming.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

__all__ = ["ConvNormAct", "init_conv_fan_out", "make_norm", "make_act"]

_NORMS = ("bn", "gn", "syncbn", None)
_ACTS = ("relu", "gelu", "relu6", "hardswish", None)


def make_norm(norm: str | None, chs: int, num_groups: int = 32) -> nn.Module | None:
    """A 2-D norm layer by name: ``"bn"``, ``"syncbn"``, ``"gn"`` (``num_groups``) or None."""
    if norm is None:
        return None
    if norm == "bn":
        return nn.BatchNorm2d(chs)
    if norm == "syncbn":
        return nn.SyncBatchNorm(chs)
    if norm == "gn":
        if chs % num_groups:
            raise ValueError(f"GroupNorm with {num_groups} groups needs channels divisible by it, got {chs}")
        return nn.GroupNorm(num_groups, chs)
    raise ValueError(f"unknown norm {norm!r}; choose one of {_NORMS}")


def make_act(act: str | None) -> nn.Module | None:
    """An activation by name: ``"relu"``, ``"gelu"``, ``"relu6"``, ``"hardswish"`` or None."""
    if act is None:
        return None
    table = {"relu": nn.ReLU, "gelu": nn.GELU, "relu6": nn.ReLU6, "hardswish": nn.Hardswish}
    if act not in table:
        raise ValueError(f"unknown activation {act!r}; choose one of {_ACTS}")
    return table[act]()


class ConvNormAct(nn.Module):
    """``conv`` -> optional norm (named ``bn`` or ``gn`` as in mmcv) -> optional activation.

    The convolution has a bias only when there is no norm, unless ``bias`` is given.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int | None = None,
        dilation: int = 1,
        groups: int = 1,
        norm: str | None = "bn",
        act: str | None = "relu",
        bias: bool | None = None,
        num_groups: int = 32,
    ) -> None:
        super().__init__()
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        self.conv = nn.Conv2d(
            in_chs,
            out_chs,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=(norm is None) if bias is None else bias,
        )
        self.norm_name = None if norm is None else ("gn" if norm == "gn" else "bn")
        if norm is not None:
            self.add_module(self.norm_name, make_norm(norm, out_chs, num_groups))
        self.act = make_act(act)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.norm_name is not None:
            x = getattr(self, self.norm_name)(x)
        if self.act is not None:
            x = self.act(x)
        return x


def init_conv_fan_out(conv: nn.Conv2d) -> None:
    """He-normal on fan-out per group, zero bias: the conv init of SegNeXt's MSCAN, TopFormer and MSCSA.

    ``weight ~ N(0, sqrt(2 / fan_out))`` with ``fan_out = k_h * k_w * out_chs / groups``
    (He et al., arXiv 1502.01852, Sec. 2.2, the backward-pass form).
    """
    fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels // conv.groups
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / fan_out))
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
