"""Recurrent criss-cross attention, the "CC" context module of SegNeXt Table 5.

Paper: "CCNet: Criss-Cross Attention for Semantic Segmentation", Huang et al.,
ICCV 2019 (arXiv 1811.11721), Sec. 3.2-3.3: every pixel attends to the pixels
of its row and its column (H + W - 1 positions, the pixel itself counted once);
applying the same module twice (recurrence R = 2, shared weights) gives every
pixel a path to every other pixel.

Details from the official code (speedinghzl/CCNet) and mmcv's pure-PyTorch
``CrissCrossAttention``: query/key projections to C/8 channels and a value
projection to C channels, all 1x1 convolutions with bias; one softmax over the
concatenated column and row energies, with the pixel itself masked out of the
column branch; output ``gamma * attention + x`` with a learnable scalar
``gamma`` initialised to 0.

Place in SegNeXt (Table 5, "SegNeXt-B w/ CC"): the module replaces the
Hamburger of the LightHamHead, (B, C, H, W) -> (B, C, H, W). SegNeXt publishes
no code for this ablation. We build CCNet's RCCA module (``conva`` -> R x CCA ->
``convb``) with 1x1 convolutions and the head's GN norms in the Hamburger's place
(the Hamburger's own in/out convolutions are 1x1 as well); CCNet's concat
bottleneck is left out because the head's ``align`` convolution follows. This
gives 27.97 M / 35.62 GMACs for SegNeXt-B at 512x512 against the published
27.8 M / 35.7 G; the bare CCA (no conva/convb) would give 27.44 M / 33.47 G,
6% under the published GFLOPs.
Everything is plain PyTorch (``einsum``), no CUDA extension, so ``count_macs``
sees every attention product.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from msfusion.layers import ConvNormAct

__all__ = ["CrissCrossAttention", "RecurrentCrissCrossAttention", "criss_cross_attention"]


def criss_cross_attention(query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """Attention of every pixel over its row and column.

    Args:
        query: (B, Cq, H, W).
        key: (B, Cq, H, W).
        value: (B, C, H, W).

    Returns:
        (B, C, H, W): for each pixel, the softmax-weighted sum of the values on
        its column and its row (the pixel itself once, through the row branch).
    """
    height = query.shape[2]
    # energy_col[b, i, j, i'] = <q(i, j), k(i', j)>; energy_row[b, i, j, j'] = <q(i, j), k(i, j')>
    energy_col = torch.einsum("bchw,bciw->bhwi", query, key)
    # A float identity cast to bool: onnxruntime has no boolean EyeLike kernel (ONNX export).
    self_mask = torch.eye(height, device=query.device).bool()[:, None, :]
    energy_col = energy_col.masked_fill(self_mask, float("-inf"))
    energy_row = torch.einsum("bchw,bchj->bhwj", query, key)
    attn = torch.softmax(torch.cat([energy_col, energy_row], dim=-1), dim=-1)
    attn_col, attn_row = attn.split([height, attn.shape[-1] - height], dim=-1)
    out = torch.einsum("bciw,bhwi->bchw", value, attn_col)
    return out + torch.einsum("bchj,bhwj->bchw", value, attn_row)


class CrissCrossAttention(nn.Module):
    """One criss-cross attention step (CCNet Sec. 3.2): (B, C, H, W) -> (B, C, H, W).

    Args:
        chs: channels C.
        reduction: query/key channels are ``C // reduction`` (8 in CCNet).
    """

    def __init__(self, chs: int, reduction: int = 8) -> None:
        super().__init__()
        qk_chs = max(chs // reduction, 1)
        self.query_conv = nn.Conv2d(chs, qk_chs, 1)
        self.key_conv = nn.Conv2d(chs, qk_chs, 1)
        self.value_conv = nn.Conv2d(chs, chs, 1)
        # Zero-initialised: the module starts as the identity (CCNet, mmcv).
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        out = criss_cross_attention(self.query_conv(x), self.key_conv(x), self.value_conv(x))
        return self.gamma * out + x


class RecurrentCrissCrossAttention(nn.Module):
    """CCNet's RCCA module with 1x1 convolutions: conva, R shared CCA steps, convb.

    (B, C, H, W) -> (B, C, H, W). Keys: ``conva``, ``cca``, ``convb`` (CCNet names).

    Args:
        chs: channels C.
        recurrence: R, CCA steps with shared weights (2 in CCNet and mmseg's CCHead).
        reduction: query/key channel reduction of the CCA (8).
        norm: norm of ``conva``/``convb`` ("gn": the LightHamHead's GN(32)).
    """

    def __init__(self, chs: int, recurrence: int = 2, reduction: int = 8, norm: str | None = "gn") -> None:
        super().__init__()
        if recurrence < 1:
            raise ValueError(f"recurrence must be >= 1, got {recurrence}")
        self.recurrence = recurrence
        self.conva = ConvNormAct(chs, chs, 1, norm=norm, act="relu")
        self.cca = CrissCrossAttention(chs, reduction)
        self.convb = ConvNormAct(chs, chs, 1, norm=norm, act="relu")

    def forward(self, x: Tensor) -> Tensor:
        x = self.conva(x)
        for _ in range(self.recurrence):
            x = self.cca(x)
        return self.convb(x)
