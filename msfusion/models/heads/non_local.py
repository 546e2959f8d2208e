"""Non-local block, the "NL" context module of SegNeXt Table 5.

Paper: "Non-local Neural Networks", Wang et al., CVPR 2018 (arXiv 1711.07971),
Sec. 3.2-3.3, Fig. 2: embedded-Gaussian pairwise function
``softmax(theta(x)^T phi(x))``, aggregation of ``g(x)``, an output projection
``W_z`` and the residual ``z = W_z y + x``.

Details as in mmcv's ``NonLocal2d`` used by mmseg's NLHead (the code base
SegNeXt is built on): ``reduction=2`` (inner channels C/2), ``use_scale=True``
(energies divided by sqrt(C/2)), 1x1 ``g``/``theta``/``phi`` convolutions with
bias, ``conv_out`` = 1x1 conv (no bias) + norm, no sub-sampling; ``g``,
``theta``, ``phi`` initialised N(0, 0.01) and the ``conv_out`` norm weight to 0,
so the block starts as the identity.

Place in SegNeXt (Table 5, "SegNeXt-B w/ NL"): the block replaces the whole
Hamburger of the LightHamHead, with the head's GN. SegNeXt-B at 512x512 then
counts 27.64 M / 40.9 GMACs, the published 27.6 M / 40.9 G.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from msfusion.layers import ConvNormAct

__all__ = ["NonLocal2d"]


class NonLocal2d(nn.Module):
    """Embedded-Gaussian non-local block: (B, C, H, W) -> (B, C, H, W).

    Keys ``g``, ``theta``, ``phi``, ``conv_out`` (each ``.conv``, and
    ``conv_out.gn``/``.bn``) follow mmcv, so mmseg NLHead weights map one to one.

    Args:
        chs: channels C.
        reduction: inner channels are ``C // reduction`` (2).
        use_scale: divide the energies by sqrt(inner channels).
        norm: norm of ``conv_out`` ("gn": the LightHamHead's GN(32)).
    """

    def __init__(self, chs: int, reduction: int = 2, use_scale: bool = True, norm: str | None = "gn") -> None:
        super().__init__()
        inner = max(chs // reduction, 1)
        self.use_scale = use_scale
        self.g = ConvNormAct(chs, inner, 1, norm=None, act=None)
        self.theta = ConvNormAct(chs, inner, 1, norm=None, act=None)
        self.phi = ConvNormAct(chs, inner, 1, norm=None, act=None)
        self.conv_out = ConvNormAct(inner, chs, 1, norm=norm, act=None)
        for m in (self.g, self.theta, self.phi):
            nn.init.normal_(m.conv.weight, 0.0, 0.01)
            nn.init.zeros_(m.conv.bias)
        if norm is None:
            nn.init.zeros_(self.conv_out.conv.weight)
        else:
            nn.init.zeros_(getattr(self.conv_out, self.conv_out.norm_name).weight)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        query = self.theta(x).flatten(2).transpose(1, 2)  # (B, N, C/2)
        key = self.phi(x).flatten(2).transpose(1, 2)
        value = self.g(x).flatten(2).transpose(1, 2)
        # Fused attention: the (N, N) map of a 64x64 feature is never stored on GPU.
        scale = None if self.use_scale else 1.0
        y = F.scaled_dot_product_attention(query, key, value, scale=scale)
        y = y.transpose(1, 2).reshape(b, -1, h, w)
        return x + self.conv_out(y)
