"""CEDNet blocks with attention token mixers (CEDNet, arXiv 2302.06052, Sec. 3.3, Table 5).

Table 5 swaps the CED block's 7x7 depthwise conv for other token mixers. The
two attention mixers of the released CEDNet code (zhanggang001/CEDNet,
``ced-mmdet/mmdet/models/backbones/cednet.py``) are:

- ``SwinCEDBlock`` / ``LRSwinCEDBlock`` ("CEDNet-Swin-T"): Swin local window
  attention (window 7, heads = C / 32, relative position bias, shifted windows
  in every second block of a sequence), pre-norm and a 4x MLP, no layer scale.
  The LR version adds, after the attention, a norm + GELU with a skip from the
  normalised input, then a 7x7 depthwise conv with dilation 3 (+ norm + GELU)
  with its own skip.
- ``CSwinCEDBlock`` ("CEDNet-CSwin-T"): CSwin cross-shaped window attention
  (half the heads attend in vertical stripes, half in horizontal stripes, LePE
  positional encoding by a 3x3 depthwise conv on V). Its LR version, as in the
  official code, replaces the two stripe branches by one attention over the
  whole map (the lowest-resolution map is small) and has no dilated conv.

Feature maps whose sides are not multiples of the window/stripe are padded
inside and cropped back (Swin pads bottom/right, CSwin pads centred, as in the
official detection code). All blocks take and return (B, C, H, W).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm
from timm.models.swin_transformer import WindowAttention
from torch import Tensor, nn

from msfusion.layers import DropPath
from msfusion.models.backbones.cednet_blocks import make_act

__all__ = ["SwinCEDBlock", "LRSwinCEDBlock", "LePEAttention", "CSwinCEDBlock"]


def _shift_mask(hp: int, wp: int, window: int, shift: int, device: torch.device) -> Tensor:
    """(num_windows, window^2, window^2) additive mask keeping shifted windows' regions apart."""
    region = torch.zeros(1, hp, wp, 1, device=device)
    cuts = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for hs in cuts:
        for ws in cuts:
            region[:, hs, ws, :] = label
            label += 1
    windows = _partition(region, window).squeeze(-1)
    diff = windows.unsqueeze(1) - windows.unsqueeze(2)
    return torch.zeros_like(diff).masked_fill(diff != 0, -100.0)


def _partition(x: Tensor, window: int) -> Tensor:
    """(B, H, W, C) -> (B * H/w * W/w, w*w, C), batch-major."""
    b, h, w, c = x.shape
    x = x.view(b, h // window, window, w // window, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def _merge(windows: Tensor, window: int, b: int, h: int, w: int) -> Tensor:
    """Inverse of ``_partition``: (B * nW, w*w, C) -> (B, H, W, C)."""
    x = windows.view(b, h // window, w // window, window, window, -1).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, -1)


class _PreNormMLP(nn.Module):
    """The Swin and CSwin blocks' MLP branch: ``DropPath(MLP(LN(x)))`` on channels-last tokens (..., C)."""

    def _init_mlp(self, dim: int, mlp_ratio: float, act: str, drop_path: float) -> None:
        self.norm2 = LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, int(mlp_ratio * dim))
        self.act = make_act(act)
        self.pwconv2 = nn.Linear(int(mlp_ratio * dim), dim)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _mlp(self, x: Tensor) -> Tensor:
        return self.drop_path(self.pwconv2(self.act(self.pwconv1(self.norm2(x)))))


class SwinCEDBlock(_PreNormMLP):
    """Swin-mixer CED block (official ``SwinBlock``): ``x + W-MSA(LN(x))``, then ``x + MLP(LN(x))``.

    Args:
        dim: channels C.
        drop_path: stochastic-depth rate of both residual branches.
        num_heads: attention heads (official: C // 32).
        window_size: side of the square attention window.
        shift: shift the windows by half a window (every second block of a
            sequence; the shift is skipped when the map fits in one window, as in
            the official ImageNet code).
        act: MLP activation.
        mlp_ratio: MLP hidden width over C.
        norm: unused (the Swin blocks always use channels-last LayerNorm); kept
            so all blocks share one signature.
        layer_scale_init: unused (no layer scale in the Swin blocks).
        roll_back_unshifted: reproduce a quirk of the official ImageNet code,
            which skips the forward roll when the map fits in one window but
            still rolls the attention output back by half a window. Off by
            default (a shift that was never applied is not undone); turn it on
            for weights trained with the official code. With it on, outputs
            equal the official ``CEDNet_swin_tiny`` to float64 precision.
        **long_range: the LR block's arguments (``LRSwinCEDBlock``).
    """

    def __init__(
        self,
        dim: int,
        drop_path: float = 0.0,
        num_heads: int = 1,
        window_size: int = 7,
        shift: bool = False,
        act: str = "gelu",
        mlp_ratio: float = 4.0,
        norm: str = "ln",
        layer_scale_init: float = 0.0,
        roll_back_unshifted: bool = False,
        **long_range: Any,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Swin block: channels {dim} must be divisible by num_heads {num_heads}")
        self.window_size = window_size
        self.shift_size = window_size // 2 if shift else 0
        self.roll_back_unshifted = roll_back_unshifted
        self.norm1 = LayerNorm(dim, eps=1e-6)
        self.attn = WindowAttention(dim, num_heads=num_heads, window_size=window_size)
        self._init_mlp(dim, mlp_ratio, act, drop_path)
        self.build_long_range(dim, act, **long_range)

    def build_long_range(self, dim: int, act: str) -> None:
        """The LR block's extra layers (``LRSwinCEDBlock``); the plain block has none."""

    def window_attention(self, x: Tensor) -> Tensor:
        """(B, H, W, C) channels-last -> (B, H, W, C), padding to whole windows inside."""
        b, h, w, c = x.shape
        ws = self.window_size
        pad_b, pad_r = (-h) % ws, (-w) % ws
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        hp, wp = h + pad_b, w + pad_r
        shift = self.shift_size if max(hp, wp) > ws else 0
        mask = None
        if shift:
            x = torch.roll(x, shifts=(-shift, -shift), dims=(1, 2))
            mask = _shift_mask(hp, wp, ws, shift, x.device).to(x.dtype)
        x = self.attn(_partition(x, ws), mask=mask)
        x = _merge(x, ws, b, hp, wp)
        back = self.shift_size if self.roll_back_unshifted else shift
        if back:
            x = torch.roll(x, shifts=(back, back), dims=(1, 2))
        return x[:, :h, :w, :]

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        x = x.permute(0, 2, 3, 1)
        x = x + self.drop_path(self.window_attention(self.norm1(x)))
        x = x + self._mlp(x)
        return x.permute(0, 3, 1, 2)


class LRSwinCEDBlock(SwinCEDBlock):
    """Long-range Swin-mixer block (official ``DSwinBlock``).

    ``y = LN1(x)``; ``y = Act(LN(W-MSA(y))) + y``; ``y = Act(LN(DW7x7_dil(y))) + y``;
    ``x = x + DropPath(y)``; then ``x + MLP(LN2(x))``. Arguments as
    ``SwinCEDBlock``, and ``dilation``, the dilation r of the 7x7 depthwise
    conv (3).
    """

    def build_long_range(self, dim: int, act: str, dilation: int = 3) -> None:
        self.norm_act1 = nn.Sequential(LayerNorm(dim, eps=1e-6), make_act(act))
        self.dwconv2 = nn.Conv2d(dim, dim, 7, padding=3 * dilation, dilation=dilation, groups=dim)
        self.norm_act2 = nn.Sequential(LayerNorm(dim, eps=1e-6), make_act(act))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        x = x.permute(0, 2, 3, 1)
        y = self.norm1(x)
        y = self.norm_act1(self.window_attention(y)) + y
        y = self.norm_act2(self.dwconv2(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)) + y
        x = x + self.drop_path(y)
        x = x + self._mlp(x)
        return x.permute(0, 3, 1, 2)


class LePEAttention(nn.Module):
    """One branch of CSwin attention with locally-enhanced positional encoding.

    The map is cut into stripes (``orientation`` 0: full-height stripes
    ``split_size`` wide; 1: full-width stripes ``split_size`` high; -1: one
    window over the whole map). Attention runs inside each stripe and a 3x3
    depthwise conv of V (inside the stripe, zero padded) is added to its output.

    Args:
        dim: channels of this branch.
        orientation: 0, 1 or -1 (see above).
        split_size: stripe width.
        num_heads: heads of this branch.
    """

    def __init__(self, dim: int, orientation: int, split_size: int = 7, num_heads: int = 1) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"CSwin branch: channels {dim} must be divisible by heads {num_heads}")
        self.orientation = orientation
        self.split_size = split_size
        self.num_heads = num_heads
        self.get_v = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, qkv: Tensor, h: int, w: int) -> Tensor:
        """qkv (3, B, H*W, C) -> (B, H*W, C)."""
        if self.orientation == -1:
            hs, ws = h, w
        elif self.orientation == 0:
            hs, ws = h, self.split_size
        else:
            hs, ws = self.split_size, w
        pad_h, pad_w = (-h) % hs, (-w) % ws
        top, left = pad_h // 2, pad_w // 2
        _, b, _, c = qkv.shape
        qkv = qkv.transpose(-2, -1).reshape(3, b, c, h, w)
        qkv = F.pad(qkv, (left, pad_w - left, top, pad_h - top))
        hp, wp = h + pad_h, w + pad_w

        def stripes(t: Tensor) -> Tensor:  # (B, C, Hp, Wp) -> (B * nW, C, hs, ws)
            t = t.reshape(b, c, hp // hs, hs, wp // ws, ws).permute(0, 2, 4, 1, 3, 5)
            return t.reshape(-1, c, hs, ws)

        def heads(t: Tensor) -> Tensor:  # (B', C, hs, ws) -> (B', heads, hs*ws, C/heads)
            return t.reshape(t.shape[0], self.num_heads, c // self.num_heads, hs * ws).transpose(-2, -1)

        q, k, v = (stripes(t) for t in qkv.unbind(0))
        lepe = self.get_v(v)
        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v)) + heads(lepe)
        out = out.transpose(1, 2).reshape(-1, hs * ws, c)
        out = out.view(b, hp // hs, wp // ws, hs, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, c)
        return out[:, top : top + h, left : left + w, :].reshape(b, h * w, c)


class CSwinCEDBlock(_PreNormMLP):
    """CSwin-mixer CED block (official ``CSwinBlock``): ``x + proj(CSwinAttn(LN(x)))``, then ``x + MLP(LN(x))``.

    Args:
        dim: channels C.
        drop_path: stochastic-depth rate.
        num_heads: heads in all (split between the two stripe branches).
        split_size: stripe width.
        long_range: the LR version (one attention over the whole map).
        act: MLP activation.
        mlp_ratio: MLP hidden width over C.
        norm: unused (channels-last LayerNorm always).
        layer_scale_init: unused (no layer scale in the CSwin blocks).
    """

    def __init__(
        self,
        dim: int,
        drop_path: float = 0.0,
        num_heads: int = 2,
        split_size: int = 7,
        long_range: bool = False,
        act: str = "gelu",
        mlp_ratio: float = 4.0,
        norm: str = "ln",
        layer_scale_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.norm1 = LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        if long_range:
            self.attns = nn.ModuleList([LePEAttention(dim, -1, split_size, num_heads)])
        else:
            if num_heads % 2 or dim % 2:
                raise ValueError(
                    f"CSwin block: channels ({dim}) and num_heads ({num_heads}) must be even "
                    "(half go to the vertical, half to the horizontal stripes)"
                )
            self.attns = nn.ModuleList([LePEAttention(dim // 2, i, split_size, num_heads // 2) for i in range(2)])
        self._init_mlp(dim, mlp_ratio, act, drop_path)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        b, c, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)
        qkv = self.qkv(self.norm1(x)).reshape(b, -1, 3, c).permute(2, 0, 1, 3)
        if len(self.attns) == 2:
            half = c // 2
            y = torch.cat([self.attns[0](qkv[..., :half], h, w), self.attns[1](qkv[..., half:], h, w)], dim=2)
        else:
            y = self.attns[0](qkv, h, w)
        x = x + self.drop_path(self.proj(y))
        x = x + self._mlp(x)
        return x.transpose(1, 2).reshape(b, c, h, w)
