"""FINE: Feature Interaction NEtwork, cross-level semantic alignment before fusion.

Paper: "Context-Guided Semantic Alignment for Feature Fusion Networks",
Hyungseop Lee, Jiho Lee, Woochul Kang, arXiv 2606.14005 (2026).

FINE refines the low-level map of a fusion step with the context of the
high-level map before the two are fused (Eq. 3: ``F_fused = f(FINE(F_low,
F_high), Up(F_high))``). ``FINE(chs, low_stride, high_stride)`` is the
``align(low, high) -> low`` hook of the FPN and PAN necks.

What is implemented, and where it comes from:

- **Alignment-Aware Token Sampling** (Sec. 4.2, Eq. 4): ``F_high_hat =
  Down(F_high, k)``, ``F_low_hat = Down(F_low, r*k)``, non-overlapping windows;
  average pooling by default, max pooling and a depthwise convolution (kernel =
  stride, no bias: 6.14 K parameters over the two fusion stages of Table 6) as
  the App. B / Table 6 options.
- **Bottleneck multi-head cross-level attention** (Sec. 4.3, Eq. 5-8): Q from
  the low tokens, K and V from the high tokens, ``W_Q, W_K, W_V, W_O`` of size
  C x C (4 C^2 + 4 C parameters per module), ``h = C / 16`` heads by default
  (per-head dimension d = 16, Sec. 5.3.3 and Table 4), softmax(QK^T / sqrt(d))V;
  the output ``M_hat`` is reshaped and upsampled by r*k (nearest: each token's
  context is broadcast over its r*k x r*k region, Eq. 8) to the exact size of
  F_low.
- **Residual spatial-channel modulation** (Sec. 4.4, Eq. 9): ``F_low * M +
  F_low``.
- **Defaults** (Sec. 5.3.2): r = the stride ratio of the two levels (2 between
  adjacent backbone stages); k = 1 at the l = 3 fusion stage and k = 2 at l = 2.
  Sec. 3 numbers the backbone maps S2, S3, S4 at strides 8, 16, 32, so l = 3
  fuses F_low at stride 16 with F_high at stride 32, and l = 2 fuses stride 8
  with 16: both put the tokens of F_low and F_high on the same stride-32 grid
  (token i of each covers the same image region). The default k is therefore
  ``max(1, 32 // high_stride)``, which extends the rule to other levels (k = 4
  for F_low at stride 4).
- **Options** (Sec. 5.3): ``attention`` "aats" (default) | "vanilla" (dense
  softmax attention between all pixels of F_low and F_high) | "window" (Swin
  windows of M x M = 7 x 7 F_low pixels attending to the co-located F_high
  pixels after the fusion's nearest upsampling; W_K and W_V project F_high
  before that upsampling, which gives the same keys at a quarter of their
  cost) | "area" (YOLOv12 area
  attention: F_low and F_high cut into A = 4 horizontal strips covering the
  same image rows, attention within a strip) | "linear" (SimA softmax-free
  attention: Q and K L1-normalised over the tokens, ``Q (K^T V)``), Table 3;
  ``modulation`` "residual" (Eq. 9) | "direct" (``F_low * M``) | "replace" (the
  attention output used as the refined feature, Fig. 7 "No modulation") |
  "none" (F_low returned unchanged, no parameters: the FINE-free baseline of
  Fig. 7, so a neck can switch FINE off per level).
- **Channel unification** (App. C, Eq. 10): ``high_chs`` different from
  ``chs`` adds a 1x1 convolution projecting F_high to the channels of F_low,
  which is used as is (the YOLO-style necks with unequal channels).
- **The authors' earlier experimental version** (``preset="earlier"``): the
  first author's FINE-FPN code (an OpenReview-era version that differs from the
  arXiv text) samples tokens the same way (low pooled by 2 and high kept at the
  top-most fusion, low by 4 and high by 2 at the next) but then: adds a 2-D
  sine-cosine positional embedding (temperature 10000, channel order sin w, cos
  w, sin h, cos h) to both token sequences; uses softmax-free linear attention
  with Q and K L1-normalised along the token axis, ``Q (K^T V)`` per head,
  followed by an RMSNorm over the head dimension instead of the 1/sqrt(d)
  scale; runs the output through a post-norm transformer layer (``x = q_tokens
  + LN(attn)``, ``x = x + LN(FFN(x))``, FFN 4x with GELU); upsamples bilinearly
  (align_corners False) and modulates directly (``F_low * M``, no ``+ F_low``).
  That is 0.79 M parameters per module at C = 256 instead of 0.26 M.

Overhead, measured with ``msfusion.count_params`` / ``count_macs`` on the
FPN of ResNet-50 with FINE at the l = 2, 3 steps: +0.526 M parameters (2 x
263,168) and +0.73 G multiply-adds at 800x800 on the FPNs of Faster R-CNN,
RetinaNet and FCOS alike. 800x800 is the size at which the same count
reproduces Table 1's baselines (torchvision's published 134.4 / 151.5 /
128.2 G); Table 1 reports +1.0 M each and +1.1 / +1.4 / +1.4 GFLOPs. The
published equations, W_Q, W_K, W_V, W_O, account for about half the
parameters, and no single module fits Table 1's totals: RetinaNet's (34.015
M -> 35.0 M) need an increase below 1.035 M, RT-DETR R50's (42.891 M -> 44.0
M) one of at least 1.059 M, and Faster R-CNN's +1.1 G against RetinaNet's
+1.4 G differ by more than rounding although FINE sees the same maps in
both. On Semantic FPN at 512x1024 FINE adds +0.526 M and +0.54 G, where
Table 7's +1.6 M / +0.8 G are those of the earlier version (+1.580 M, +0.83
G). Against dense ("vanilla") attention in RT-DETR R18 at 640x640, AATS adds
94.5% fewer multiply-adds (Table 3: 93.3%); at 320x320 its own tensors peak
94.3% lower, and it leaves the whole model's peak memory unchanged where
vanilla raises it by 61.5 MB (Table 3 at 640: 99.9% less memory).

Sizes that the pooling does not divide: windows are taken with ``ceil_mode``
(the last row and column of tokens average over the pixels that exist), and
``M_hat`` is upsampled by r*k and cropped to F_low's size, so every pixel gets
the context of the token whose window it lies in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ATTENTIONS",
    "DOWNSAMPLERS",
    "FINE",
    "MODULATIONS",
    "PRESETS",
    "AlignmentAwareTokenSampling",
    "default_kernel",
]

ATTENTIONS = ("aats", "vanilla", "window", "area", "linear", "aats_linear")
MODULATIONS = ("residual", "direct", "replace", "none")
DOWNSAMPLERS = ("avg", "max", "dwconv")
UPSAMPLERS = ("nearest", "bilinear")
PRESETS = ("paper", "earlier")

# Sec. 5.3.2: k = 1 where F_high is at stride 32 (l = 3), k = 2 where it is at 16 (l = 2).
TOKEN_STRIDE = 32


def default_kernel(high_stride: int) -> int:
    """Base sampling kernel k that puts the F_high tokens on the stride-32 grid (Sec. 5.3.2)."""
    return max(1, TOKEN_STRIDE // high_stride)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"FINE: {name} must be one of {list(choices)}, got {value!r}")


def _check_positive_int(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"FINE: {name} must be a positive integer, got {value!r}")


def _down(kind: str, chs: int, size: int) -> nn.Module:
    """Down(., kernel=size) of Eq. 4: non-overlapping windows of size x size."""
    if size == 1:
        return nn.Identity()
    if kind == "avg":
        # ceil_mode: a partial last window averages over the pixels that exist.
        return nn.AvgPool2d(size, size, ceil_mode=True)
    if kind == "max":
        return nn.MaxPool2d(size, size, ceil_mode=True)
    return _DepthwiseDown(chs, size)


class _DepthwiseDown(nn.Module):
    """Depthwise convolution with kernel = stride = size, no bias (Table 6 "DWConv")."""

    def __init__(self, chs: int, size: int) -> None:
        super().__init__()
        self.size = size
        self.conv = nn.Conv2d(chs, chs, size, stride=size, groups=chs, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        pad_h, pad_w = -x.shape[-2] % self.size, -x.shape[-1] % self.size
        # Zero-pad a partial last window so that every pixel lands in a token, as with ceil_mode.
        return self.conv(F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x)


class AlignmentAwareTokenSampling(nn.Module):
    """Alignment-Aware Token Sampling (Sec. 4.2, Eq. 4).

    Condenses F_low with windows of r*k and F_high with windows of k, so that
    with r equal to the stride ratio the two token grids cover the same image
    regions (aligned effective receptive fields, App. F).

    Args:
        chs: channels of both maps (used by the depthwise option).
        low_kernel: r * k.
        high_kernel: k.
        down: "avg" (default, parameter-free), "max" or "dwconv" (App. B, Table 6).
    """

    def __init__(self, chs: int, low_kernel: int, high_kernel: int, down: str = "avg") -> None:
        super().__init__()
        _check_choice("down", down, DOWNSAMPLERS)
        self.low_kernel = low_kernel
        self.high_kernel = high_kernel
        self.low = _down(down, chs, low_kernel)
        self.high = _down(down, chs, high_kernel)

    def forward(self, low: Tensor, high: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C, H, W), (B, C, h, w) -> (B, C, ceil(H/rk), ceil(W/rk)), (B, C, ceil(h/k), ceil(w/k))."""
        return self.low(low), self.high(high)


def _sincos_embedding(height: int, width: int, chs: int, like: Tensor) -> Tensor:
    """2-D sine-cosine positional embedding (1, C, height, width), channel order sin w, cos w, sin h, cos h."""
    quarter = chs // 4
    omega = 1.0 / (10000.0 ** (torch.arange(quarter, device=like.device, dtype=torch.float32) / quarter))
    ys = torch.arange(height, device=like.device, dtype=torch.float32)[:, None] * omega  # (h, C/4)
    xs = torch.arange(width, device=like.device, dtype=torch.float32)[:, None] * omega  # (w, C/4)
    emb_w = torch.cat([xs.sin(), xs.cos()], dim=1)[None].expand(height, width, 2 * quarter)
    emb_h = torch.cat([ys.sin(), ys.cos()], dim=1)[:, None].expand(height, width, 2 * quarter)
    emb = torch.cat([emb_w, emb_h], dim=2).permute(2, 0, 1)[None]
    return emb.to(like.dtype)


def _upsample_to(x: Tensor, factor: int, size: tuple[int, int], mode: str) -> Tensor:
    """Upsample by ``factor`` and crop to ``size`` (token i covers pixels [i*factor, (i+1)*factor))."""
    if factor == 1:
        return x[..., : size[0], : size[1]]
    if mode == "nearest":
        up = F.interpolate(x, scale_factor=factor, mode="nearest")
    else:
        up = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    return up[..., : size[0], : size[1]]


class FINE(nn.Module):
    """Feature Interaction NEtwork: F_low aligned with the context of F_high (Sec. 4, Eq. 3-9).

    Args:
        chs: channels C of F_low (and of F_high unless ``high_chs`` is given).
        low_stride: stride of F_low relative to the image (e.g. 8).
        high_stride: stride of F_high (e.g. 16); a multiple of ``low_stride``.
        high_chs: channels of F_high when they differ from ``chs``: a 1x1
            convolution projects F_high to ``chs`` (App. C, Eq. 10).
        attention: "aats" (Sec. 4.2-4.3), "vanilla", "window", "area",
            "linear" (Table 3), or "aats_linear" (the earlier version's linear
            attention on AATS tokens).
        ratio: alignment-aware sampling ratio r; default ``high_stride //
            low_stride`` (r = 2 for adjacent stages, Sec. 4.2).
        kernel: base sampling kernel k; default ``max(1, 32 // high_stride)``
            (k = 1 at l = 3, k = 2 at l = 2, Sec. 5.3.2).
        num_heads: attention heads h; default ``chs // head_dim``.
        head_dim: per-head dimension d used for the default h (16, Table 4).
        down: AATS operator "avg" | "max" | "dwconv" (Table 6).
        modulation: "residual" (Eq. 9) | "direct" | "replace" | "none" (Sec. 5.3.4).
        upsample: "nearest" (Eq. 8, default) or "bilinear" (the earlier version).
        window_size: M of window attention (7, Table 3).
        num_areas: A of area attention (4, Table 3).
        qkv_bias: biases in W_Q, W_K, W_V, W_O.
        pos_embed: add a 2-D sine-cosine positional embedding to the tokens (earlier version).
        ffn: the earlier version's post-norm transformer layer (LN, FFN 4x GELU, LN).
        preset: "paper" (the defaults above) or "earlier": the first author's
            earlier experimental version (module docstring); explicit keyword
            arguments override the preset.
    """

    def __init__(
        self,
        chs: int,
        low_stride: int,
        high_stride: int,
        *,
        high_chs: int | None = None,
        attention: str | None = None,
        ratio: int | None = None,
        kernel: int | None = None,
        num_heads: int | None = None,
        head_dim: int = 16,
        down: str = "avg",
        modulation: str | None = None,
        upsample: str | None = None,
        window_size: int = 7,
        num_areas: int = 4,
        qkv_bias: bool = True,
        pos_embed: bool | None = None,
        ffn: bool | None = None,
        preset: str = "paper",
    ) -> None:
        super().__init__()
        _check_choice("preset", preset, PRESETS)
        earlier = preset == "earlier"
        attention = attention if attention is not None else ("aats_linear" if earlier else "aats")
        modulation = modulation if modulation is not None else ("direct" if earlier else "residual")
        upsample = upsample if upsample is not None else ("bilinear" if earlier else "nearest")
        pos_embed = earlier if pos_embed is None else pos_embed
        ffn = earlier if ffn is None else ffn
        _check_choice("attention", attention, ATTENTIONS)
        _check_choice("modulation", modulation, MODULATIONS)
        _check_choice("upsample", upsample, UPSAMPLERS)
        _check_choice("down", down, DOWNSAMPLERS)
        for name, value in (("chs", chs), ("low_stride", low_stride), ("high_stride", high_stride)):
            _check_positive_int(name, value)
        if high_stride % low_stride or high_stride < low_stride:
            raise ValueError(
                f"FINE: high_stride ({high_stride}) must be a multiple of low_stride ({low_stride}), e.g. 16 and 8"
            )
        scale = high_stride // low_stride
        ratio = scale if ratio is None else ratio
        kernel = default_kernel(high_stride) if kernel is None else kernel
        for name, value in (("ratio", ratio), ("kernel", kernel), ("window_size", window_size)):
            _check_positive_int(name, value)
        _check_positive_int("num_areas", num_areas)
        if num_heads is None:
            _check_positive_int("head_dim", head_dim)
            if chs % head_dim:
                raise ValueError(
                    f"FINE: chs ({chs}) is not a multiple of head_dim ({head_dim}); pass num_heads dividing {chs} "
                    "or a head_dim dividing it"
                )
            num_heads = chs // head_dim
        _check_positive_int("num_heads", num_heads)
        if chs % num_heads:
            divisors = [d for d in range(1, chs + 1) if chs % d == 0]
            raise ValueError(f"FINE: num_heads ({num_heads}) must divide chs ({chs}); allowed: {divisors}")
        if (pos_embed or ffn) and attention in ("window", "area"):
            raise ValueError(
                f"FINE: pos_embed and ffn (the earlier version's token layer) apply to token attention "
                f"(aats, vanilla, linear, aats_linear), not to {attention!r}"
            )
        if pos_embed and chs % 4:
            raise ValueError(f"FINE: pos_embed needs chs divisible by 4, got {chs}")
        if high_chs is not None:
            _check_positive_int("high_chs", high_chs)

        self.chs = chs
        self.high_chs = chs if high_chs is None else high_chs
        self.low_stride = low_stride
        self.high_stride = high_stride
        self.scale = scale
        self.attention = attention
        self.ratio = ratio
        self.kernel = kernel
        self.num_heads = num_heads
        self.head_dim = chs // num_heads
        self.modulation = modulation
        self.upsample = upsample
        self.window_size = window_size
        self.num_areas = num_areas
        self.preset = preset
        self.use_pos_embed = pos_embed
        self.fused_attention = True  # False materialises the attention matrix (a benchmark of the paper's memory)

        self.sampling: AlignmentAwareTokenSampling | None = None
        if modulation == "none":
            # The FINE-free baseline: nothing to learn, F_low passes through.
            return
        # App. C: only F_high is projected; F_low keeps its channels.
        self.high_proj = nn.Conv2d(self.high_chs, chs, 1) if self.high_chs != chs else nn.Identity()
        if attention in ("aats", "aats_linear"):
            self.sampling = AlignmentAwareTokenSampling(chs, ratio * kernel, kernel, down)
        self.q = nn.Linear(chs, chs, bias=qkv_bias)
        self.k = nn.Linear(chs, chs, bias=qkv_bias)
        self.v = nn.Linear(chs, chs, bias=qkv_bias)
        self.proj = nn.Linear(chs, chs, bias=qkv_bias)
        # Earlier version: RMSNorm over the head dimension replaces the 1/sqrt(d) scale of linear attention.
        self.attn_norm = nn.RMSNorm(self.head_dim) if earlier and attention in ("linear", "aats_linear") else None
        if ffn:
            self.norm1 = nn.LayerNorm(chs)
            self.mlp = nn.Sequential(nn.Linear(chs, 4 * chs), nn.GELU(), nn.Linear(4 * chs, chs))
            self.norm2 = nn.LayerNorm(chs)
        else:
            self.norm1 = self.mlp = self.norm2 = None

    @property
    def token_stride(self) -> int:
        """Stride of the query tokens relative to F_low (r*k for AATS, 1 for the dense options)."""
        return self.ratio * self.kernel if self.sampling is not None else 1

    def extra_repr(self) -> str:
        return (
            f"chs={self.chs}, high_chs={self.high_chs}, strides=({self.low_stride}, {self.high_stride}), "
            f"attention={self.attention!r}, r={self.ratio}, k={self.kernel}, heads={self.num_heads}, "
            f"modulation={self.modulation!r}, preset={self.preset!r}"
        )

    def _check_inputs(self, low: Tensor, high: Tensor) -> None:
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return  # shapes are symbolic there; Python checks would bake them in
        if low.dim() != 4 or high.dim() != 4:
            raise ValueError(f"FINE expects (B, C, H, W) maps, got low {tuple(low.shape)} and high {tuple(high.shape)}")
        if low.shape[1] != self.chs or high.shape[1] != self.high_chs:
            raise ValueError(
                f"FINE was built for {self.chs} low-level and {self.high_chs} high-level channels, got "
                f"{low.shape[1]} and {high.shape[1]}; pass high_chs=... when the levels differ in channels"
            )
        H, W = low.shape[-2:]
        h, w = high.shape[-2:]
        s = self.scale
        ok = all(size in (n // s, -(-n // s)) for n, size in ((H, h), (W, w)))
        if not ok or low.shape[0] != high.shape[0]:
            raise ValueError(
                f"FINE: F_high {tuple(high.shape)} must be F_low {tuple(low.shape)} reduced by the stride ratio "
                f"{self.high_stride}/{self.low_stride} = {s} (rounded down or up: {H // s} or {-(-H // s)} rows, "
                f"{W // s} or {-(-W // s)} columns) with the same batch size"
            )
        if self.sampling is not None:
            rk = self.ratio * self.kernel
            if rk > H or rk > W or self.kernel > h or self.kernel > w:
                raise ValueError(
                    f"FINE: r*k = {self.ratio}*{self.kernel} = {rk} is larger than F_low ({H}x{W}) or k = "
                    f"{self.kernel} than F_high ({h}x{w}); use smaller ratio/kernel (r*k <= {min(H, W)}) or a "
                    "larger input"
                )
        if self.attention == "area" and (H < self.num_areas or h < self.num_areas):
            raise ValueError(
                f"FINE: area attention cuts the maps into {self.num_areas} strips of rows, but F_low has {H} and "
                f"F_high {h} rows; use num_areas <= {min(H, h)} or a larger input"
            )

    def forward(self, low: Tensor, high: Tensor) -> Tensor:
        """Align F_low with the context of F_high.

        Args:
            low: F_low, (B, C, H, W).
            high: F_high, (B, C_high, ceil(H/s) or floor(H/s), ...), s = high_stride / low_stride.

        Returns:
            F_low aligned, (B, C, H, W).
        """
        if self.modulation == "none":
            self._check_inputs(low, high)
            return low
        m = self.modulation_map(low, high)
        if self.modulation == "residual":
            return low * m + low
        if self.modulation == "direct":
            return low * m
        return m

    def modulation_map(self, low: Tensor, high: Tensor) -> Tensor:
        """The spatial-channel modulation map M (Eq. 8), (B, C, H, W), at the size of F_low."""
        if self.modulation == "none":
            raise ValueError("FINE with modulation='none' computes no modulation map")
        self._check_inputs(low, high)
        high = self.high_proj(high)
        if self.attention == "window":
            return self._window(low, high)
        if self.attention == "area":
            return self._area(low, high)
        q_map, kv_map = self.sampling(low, high) if self.sampling is not None else (low, high)
        grid = q_map.shape[-2:]
        q_tokens = q_map.flatten(2).transpose(1, 2)  # (B, N_low, C)
        if self.use_pos_embed:
            q_map = q_map + _sincos_embedding(*grid, self.chs, q_map)
            kv_map = kv_map + _sincos_embedding(*kv_map.shape[-2:], self.chs, kv_map)
        kv_tokens = kv_map.flatten(2).transpose(1, 2)  # (B, N_high, C)
        q = self._heads(self.q(q_map.flatten(2).transpose(1, 2)))
        k, v = self._heads(self.k(kv_tokens)), self._heads(self.v(kv_tokens))
        if self.attention in ("linear", "aats_linear"):
            out = self._linear_attention(q, k, v)
        else:
            out = self._softmax_attention(q, k, v)
        out = self.proj(self._merge(out))
        if self.mlp is not None:
            # Earlier version: post-norm layer whose residual is the sampled F_low tokens.
            out = q_tokens + self.norm1(out)
            out = out + self.norm2(self.mlp(out))
        m_hat = out.transpose(1, 2).reshape(out.shape[0], self.chs, *grid)
        return _upsample_to(m_hat, self.token_stride, low.shape[-2:], self.upsample)

    # -- attention kernels -------------------------------------------------------------------------

    def _heads(self, x: Tensor) -> Tensor:
        """(..., N, C) -> (..., heads, N, d)."""
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(-3, -2)

    def _merge(self, x: Tensor) -> Tensor:
        """(..., heads, N, d) -> (..., N, C)."""
        return x.transpose(-3, -2).flatten(-2)

    def _softmax_attention(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
        """softmax(Q K^T / sqrt(d)) V per head (Eq. 6); ``mask`` True where a key may be attended."""
        if self.fused_attention:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        attn = (q * (self.head_dim**-0.5)) @ k.transpose(-2, -1)
        if mask is not None:
            attn = attn.masked_fill(~mask, float("-inf"))
        return attn.softmax(-1) @ v

    def _linear_attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """SimA: Q and K L1-normalised over the tokens, then Q (K^T V); no softmax, linear in N."""
        q = F.normalize(q, p=1.0, dim=-2, eps=1e-6)
        k = F.normalize(k, p=1.0, dim=-2, eps=1e-6)
        out = q @ (k.transpose(-2, -1) @ v)
        return self.attn_norm(out) if self.attn_norm is not None else out

    def _window(self, low: Tensor, high: Tensor) -> Tensor:
        """Window attention (Table 3, M x M windows): F_low pixels attend to co-located F_high pixels."""
        B, C, H, W = low.shape
        M = self.window_size
        # K and V of F_high at F_low's resolution, by the fusion's own nearest upsampling, so windows co-locate.
        # W_K and W_V act on each pixel alone and nearest upsampling only copies pixels, so projecting before
        # the upsampling gives the same keys and values with 1/scale^2 of the projection's multiply-adds.
        high = high.permute(0, 2, 3, 1)  # (B, h, w, C)
        key, value = (
            _upsample_to(proj(high).permute(0, 3, 1, 2), self.scale, (H, W), "nearest") for proj in (self.k, self.v)
        )
        pad_h, pad_w = -H % M, -W % M
        valid = torch.ones(1, 1, H, W, dtype=torch.bool, device=low.device)
        if pad_h or pad_w:
            low, key, value = (F.pad(x, (0, pad_w, 0, pad_h)) for x in (low, key, value))
            valid = F.pad(valid, (0, pad_w, 0, pad_h), value=False)
        Hp, Wp = H + pad_h, W + pad_w

        def windows(x: Tensor) -> Tensor:  # (B, C', Hp, Wp) -> (B, nW, M*M, C')
            x = x.reshape(x.shape[0], x.shape[1], Hp // M, M, Wp // M, M)
            return x.permute(0, 2, 4, 3, 5, 1).reshape(x.shape[0], (Hp // M) * (Wp // M), M * M, x.shape[1])

        q, k, v = self._heads(self.q(windows(low))), self._heads(windows(key)), self._heads(windows(value))
        # Padded keys are never attended; padded queries are cropped below.
        mask = windows(valid)[0][:, None, None, :, 0] if (pad_h or pad_w) else None  # (nW, 1, 1, M*M)
        out = self.proj(self._merge(self._softmax_attention(q, k, v, mask)))  # (B, nW, M*M, C)
        out = out.reshape(B, Hp // M, Wp // M, M, M, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, Hp, Wp)
        return out[..., :H, :W]

    def _area(self, low: Tensor, high: Tensor) -> Tensor:
        """Area attention (Table 3, A strips): each strip of F_low rows attends to the same strip of F_high."""
        B, C = low.shape[:2]
        rows = []
        for low_a, high_a in zip(
            torch.tensor_split(low, self.num_areas, dim=2),
            torch.tensor_split(high, self.num_areas, dim=2),
            strict=True,
        ):
            q_tokens = low_a.flatten(2).transpose(1, 2)
            kv_tokens = high_a.flatten(2).transpose(1, 2)
            q, k, v = self._heads(self.q(q_tokens)), self._heads(self.k(kv_tokens)), self._heads(self.v(kv_tokens))
            out = self.proj(self._merge(self._softmax_attention(q, k, v)))
            rows.append(out.transpose(1, 2).reshape(B, C, *low_a.shape[-2:]))
        return torch.cat(rows, dim=2)
