"""TopFormer: the Token Pyramid Module, the Scale-Aware Semantics Extractor and Semantics Injection.

Paper: "TopFormer: Token Pyramid Transformer for Mobile Semantic Segmentation",
Zhang, Huang, Luo, Chen, Wang, Liu, Yu, Shen, CVPR 2022 (arXiv 2204.05525).

Implements (Sec. 3, Fig. 2):

- Token Pyramid Module (Sec. 3.1): a 3x3 stride-2 conv stem (16 channels,
  BN, ReLU), then MobileNetV2 inverted residual blocks given as
  ``(kernel, expansion, channels, stride)`` rows. A block is a 1x1 expansion
  (BN, ReLU; left out when the expansion is 1), a depthwise ``kernel`` conv
  (BN, ReLU) and a linear 1x1 projection (BN), with a residual when the stride
  is 1 and the channels stay. The outputs of four chosen blocks form the token
  pyramid at strides 4, 8, 16 and 32.
- Pooling of the pyramid (Sec. 3.1): every level is average-pooled to the
  size of the 1/32 level pooled once more by 2, ``floor((h - 1) / 2) + 1``,
  i.e. 1/64 of the input for segmentation; the pooled levels are concatenated
  on channels (208 / 296 / 384 channels for T / S / B). Classification pools
  to 1/32 (``pool_stride=32``).
- Scale-Aware Semantics Extractor, SASE (Sec. 3.2): 4 transformer blocks,
  each ``x + DropPath(Attention(x))`` then ``x + DropPath(FFN(x))`` without
  pre-norm. The attention projects q and k with 1x1 conv + BN to 16 channels
  per head and v to 32 per head, takes ``softmax(q k^T) v`` (the released
  TopFormer code does not apply the 1/sqrt(d) scale; neither do we), then
  ReLU6 and a 1x1 conv + BN back to the token channels. The FFN is 1x1 conv +
  BN (ratio 2), 3x3 depthwise conv with bias, ReLU6, 1x1 conv + BN. Heads:
  4 / 6 / 8 for T / S / B; DropPath rates rise linearly from 0 to 0.1.
- Semantics Injection Module (Sec. 3.3): the global tokens are split back
  into the levels' channel groups; for the levels at strides 8, 16 and 32,
  ``out = BN(conv1x1(local)) * Up(h_sigmoid(BN(conv1x1(global)))) +
  Up(BN(conv1x1(global)))`` with bilinear upsampling (align_corners False)
  and ``h_sigmoid(x) = ReLU6(x + 3) / 6``, to 128 / 192 / 256 channels.

Variants (T / S / B), as released with the paper: pyramid channels
16/32/64/96, 24/48/96/128 and 32/64/128/160, taken after blocks 3, 5, 7 and
9 (T, 9 blocks) or 3, 5, 7 and 10 (S, B, 10 blocks). The segmentation
models (backbone + the simple head, ADE20K, 150 classes, 512x512) have
1.39 / 3.04 / 5.06 M parameters and 0.56 / 1.15 / 1.80 G multiply-adds with
torchprofile's rules, measured on the released code; the paper's README
rounds them to 1.4 / 3.1 / 5.1 M and 0.6 / 1.2 / 1.8 GFLOPs.

``TopFormer`` with ``features_only=True`` is the segmentation backbone: it
returns the injected maps at strides 8, 16 and 32. Otherwise it is the
ImageNet classifier of MSCSA's Table 6 (arXiv 2308.05872): the pyramid
pooled to 1/32, the extractor, global average pooling and a linear layer
(TopFormer-T: 1.5 M parameters, 0.13 GFLOPs at 224x224). Its ``extractor``
is SASE or MSCSA ("MSCSA replaces SASE", MSCSA Tables 3 and 6).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msfusion.layers import (
    ConvNormAct,
    DropPath,
    check_feature_info,
    check_image_batch,
    init_conv_fan_out,
    make_act,
    resize_to,
)
from msfusion.layers.features import select_features
from msfusion.layers.pooling import adaptive_avg_pool2d
from msfusion.models.addons.mscsa import MSCSA
from msfusion.registry import PaperFigures, register_model

__all__ = [
    "InvertedResidual",
    "TokenPyramidModule",
    "pool_token_pyramid",
    "SASEAttention",
    "SASEFeedForward",
    "SASEBlock",
    "ScaleAwareSemanticsExtractor",
    "SemanticsInjection",
    "TopFormer",
    "TOPFORMER_CFGS",
    "topformer_config",
    "EXTRACTORS",
]

EXTRACTORS = ("sase", "mscsa")


class InvertedResidual(nn.Module):
    """MobileNetV2's inverted residual block (TopFormer Sec. 3.1). (B, C_in, H, W) -> (B, C_out, H/s, W/s).

    Args:
        in_chs: input channels.
        out_chs: output channels.
        kernel_size: depthwise kernel (3 or 5).
        stride: depthwise stride (1 or 2).
        expand_ratio: hidden channels ``round(in_chs * expand_ratio)``; 1 skips the expansion conv.
        act: activation after the expansion and the depthwise conv.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: int = 3,
        stride: int = 1,
        expand_ratio: float = 1.0,
        act: str = "relu",
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"inverted residual stride must be 1 or 2, got {stride}")
        hidden = int(round(in_chs * expand_ratio))
        self.expand = ConvNormAct(in_chs, hidden, 1, act=act) if expand_ratio != 1 else None
        self.dw = ConvNormAct(hidden, hidden, kernel_size, stride=stride, groups=hidden, act=act)
        self.project = ConvNormAct(hidden, out_chs, 1, act=None)
        self.use_residual = stride == 1 and in_chs == out_chs

    def forward(self, x: Tensor) -> Tensor:
        out = self.expand(x) if self.expand is not None else x
        out = self.project(self.dw(out))
        return x + out if self.use_residual else out


class TokenPyramidModule(nn.Module):
    """The Token Pyramid Module (Sec. 3.1): images -> 4 maps, finest first (strides 4, 8, 16, 32).

    ``forward`` takes (B, 3, H, W) and returns the outputs of the blocks in
    ``pyramid_indices``, described by ``feature_info``. Any input size works
    (each stride-2 conv gives ``ceil(h / 2)``).

    Args:
        layers: ``(kernel, expansion, channels, stride)`` per inverted residual block.
        pyramid_indices: the blocks (0-based) whose outputs form the pyramid.
        stem_chs: channels of the 3x3 stride-2 stem.
        act: activation of the stem and the blocks (ReLU in TopFormer).
        in_chans: input channels.
    """

    def __init__(
        self,
        layers: Sequence[Sequence[int]],
        pyramid_indices: Sequence[int],
        stem_chs: int = 16,
        act: str = "relu",
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if not pyramid_indices or any(not 0 <= i < len(layers) for i in pyramid_indices):
            raise ValueError(f"pyramid_indices {tuple(pyramid_indices)} must name blocks 0..{len(layers) - 1}")
        if list(pyramid_indices) != sorted(set(pyramid_indices)):
            raise ValueError(f"pyramid_indices must increase strictly, got {tuple(pyramid_indices)}")
        self.in_chans = in_chans
        self.stem = ConvNormAct(in_chans, stem_chs, 3, stride=2, act=act)
        blocks, stride, chs, info = [], 2, stem_chs, []
        for i, (kernel, expansion, out_chs, block_stride) in enumerate(layers):
            blocks.append(InvertedResidual(chs, out_chs, kernel, block_stride, expansion, act))
            chs, stride = out_chs, stride * block_stride
            if i in pyramid_indices:
                info.append(dict(chs=out_chs, reduction=stride, module=f"layers.{i}"))
        self.layers = nn.Sequential(*blocks)
        self.pyramid_indices = tuple(int(i) for i in pyramid_indices)
        self.feature_info = check_feature_info(info, "the token pyramid (pyramid_indices)")

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.stem(x)
        outs = []
        for i, block in enumerate(self.layers[: self.pyramid_indices[-1] + 1]):
            x = block(x)
            if i in self.pyramid_indices:
                outs.append(x)
        return outs


def pool_token_pyramid(feats: Sequence[Tensor], factor: int) -> Tensor:
    """Average-pool every level to the coarsest level's size reduced by ``factor``; concatenate on channels.

    The target is ``floor((h - 1) / factor) + 1`` of the coarsest map, the size a
    stride-``factor`` conv would give (Sec. 3.1: 1/64 for segmentation with factor 2).
    (B, C_i, H_i, W_i) per level -> (B, sum(C_i), h, w).
    """
    h, w = feats[-1].shape[-2:]
    size = ((h - 1) // factor + 1, (w - 1) // factor + 1)
    # msfusion.layers.pooling's adaptive pooling exports to ONNX with sizes taken from the input.
    return torch.cat([f if tuple(f.shape[-2:]) == size else adaptive_avg_pool2d(f, size) for f in feats], dim=1)


class SASEAttention(nn.Module):
    """SASE multi-head attention over all tokens (Sec. 3.2). (B, C, h, w) -> (B, C, h, w).

    Args:
        dim: token channels C.
        num_heads: heads.
        key_dim: query/key channels per head (16).
        attn_ratio: value channels per head as a multiple of ``key_dim`` (2).
        act: activation before the output projection (ReLU6).
    """

    def __init__(
        self, dim: int, num_heads: int, key_dim: int = 16, attn_ratio: float = 2.0, act: str = "relu6"
    ) -> None:
        super().__init__()
        if num_heads < 1 or key_dim < 1:
            raise ValueError(f"num_heads and key_dim must be positive, got {num_heads} and {key_dim}")
        self.num_heads, self.key_dim = num_heads, key_dim
        self.value_dim = int(attn_ratio * key_dim)
        self.q = ConvNormAct(dim, key_dim * num_heads, 1, act=None)
        self.k = ConvNormAct(dim, key_dim * num_heads, 1, act=None)
        self.v = ConvNormAct(dim, self.value_dim * num_heads, 1, act=None)
        self.proj = nn.Sequential(make_act(act), ConvNormAct(self.value_dim * num_heads, dim, 1, act=None))

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        heads = self.num_heads

        def tokens(t: Tensor) -> Tensor:  # (B, heads * d, h, w) -> (B, heads, N, d)
            return t.reshape(b, heads, -1, h * w).transpose(-2, -1)

        # scale=1: TopFormer's attention has no 1/sqrt(d) factor (see the module docstring).
        out = F.scaled_dot_product_attention(tokens(self.q(x)), tokens(self.k(x)), tokens(self.v(x)), scale=1.0)
        return self.proj(out.transpose(-2, -1).reshape(b, heads * self.value_dim, h, w))


class SASEFeedForward(nn.Module):
    """SASE FFN (Sec. 3.2): 1x1 conv + BN, 3x3 depthwise conv, ReLU6, 1x1 conv + BN. (B, C, h, w) -> same.

    Args:
        dim: channels C.
        mlp_ratio: hidden channels ``int(dim * mlp_ratio)`` (2).
        act: activation after the depthwise conv.
    """

    def __init__(self, dim: int, mlp_ratio: float = 2.0, act: str = "relu6") -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.fc1 = ConvNormAct(dim, hidden, 1, act=None)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = make_act(act)
        self.fc2 = ConvNormAct(hidden, dim, 1, act=None)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x))))


class SASEBlock(nn.Module):
    """One SASE transformer block: ``x + DropPath(attn(x))``, then ``x + DropPath(mlp(x))``, no pre-norm."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        key_dim: int = 16,
        attn_ratio: float = 2.0,
        mlp_ratio: float = 2.0,
        drop_path: float = 0.0,
        act: str = "relu6",
    ) -> None:
        super().__init__()
        self.attn = SASEAttention(dim, num_heads, key_dim, attn_ratio, act)
        self.mlp = SASEFeedForward(dim, mlp_ratio, act)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(x))
        return x + self.drop_path(self.mlp(x))


class ScaleAwareSemanticsExtractor(nn.Module):
    """SASE (Sec. 3.2) on the pooled token pyramid: list of pyramid maps -> ``[tokens]``.

    ``forward_fused(feats)`` returns the global tokens (B, sum(C_i), h, w) at
    ``pool_stride``; ``forward(feats)`` returns them in a one-element list
    described by ``feature_info`` (the add-on contract, as MSCSA's
    classification form). ``split_chs`` gives the per-level channel groups.

    Args:
        feature_info: the pyramid's ``feature_info`` (strides must end at the coarsest level).
        pool_stride: stride of the pooled tokens: 64 for segmentation, 32 for
            classification; a multiple of the coarsest pyramid stride.
        depth: transformer blocks (4).
        num_heads: heads (4 / 6 / 8 for T / S / B).
        key_dim, attn_ratio, mlp_ratio, act: as ``SASEBlock``.
        drop_path_rate: DropPath of the last block; rates rise linearly from 0.
    """

    def __init__(
        self,
        feature_info: Sequence[dict],
        pool_stride: int = 64,
        depth: int = 4,
        num_heads: int = 8,
        key_dim: int = 16,
        attn_ratio: float = 2.0,
        mlp_ratio: float = 2.0,
        drop_path_rate: float = 0.1,
        act: str = "relu6",
    ) -> None:
        super().__init__()
        info = check_feature_info(feature_info, "the token pyramid given to SASE")
        coarsest = info[-1]["reduction"]
        if pool_stride < coarsest or pool_stride % coarsest:
            raise ValueError(
                f"pool_stride={pool_stride} must be a multiple of the coarsest pyramid stride {coarsest} "
                "(TopFormer pools to 1/64 for segmentation, 1/32 for classification)"
            )
        if depth < 1:
            raise ValueError(f"depth must be at least 1 block, got {depth}")
        self.pool_factor = pool_stride // coarsest
        self.pool_stride = int(pool_stride)
        self.split_chs = [f["chs"] for f in info]
        self.dim = sum(self.split_chs)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.Sequential(
            *[SASEBlock(self.dim, num_heads, key_dim, attn_ratio, mlp_ratio, rates[i], act) for i in range(depth)]
        )
        self.feature_info = [dict(chs=self.dim, reduction=self.pool_stride, module="blocks")]

    def forward_fused(self, feats: Sequence[Tensor]) -> Tensor:
        chs = [int(f.shape[1]) for f in feats]
        if chs != self.split_chs:
            raise ValueError(f"SASE was built for pyramid channels {self.split_chs}, got {chs}")
        return self.blocks(pool_token_pyramid(feats, self.pool_factor))

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        return [self.forward_fused(feats)]


class SemanticsInjection(nn.Module):
    """Semantics Injection Module (Sec. 3.3): local tokens x global semantics -> fused map.

    ``out = local_embedding(x) * Up(h_sigmoid(global_act(g))) + Up(global_embedding(g))``,
    each embedding a 1x1 conv + BN. (B, C_local, H, W), (B, C_global, h, w) -> (B, out_chs, H, W).
    """

    def __init__(self, local_chs: int, global_chs: int, out_chs: int) -> None:
        super().__init__()
        self.local_embedding = ConvNormAct(local_chs, out_chs, 1, act=None)
        self.global_embedding = ConvNormAct(global_chs, out_chs, 1, act=None)
        self.global_act = ConvNormAct(global_chs, out_chs, 1, act=None)
        self.hard_sigmoid = nn.Hardsigmoid()  # ReLU6(x + 3) / 6

    def forward(self, x: Tensor, g: Tensor) -> Tensor:
        size = x.shape[-2:]
        # The gate is formed at the coarse size, then upsampled (TopFormer's order).
        weight = resize_to(self.hard_sigmoid(self.global_act(g)), size)
        return self.local_embedding(x) * weight + resize_to(self.global_embedding(g), size)


def _build_extractor(name: str, info: list[dict], pool_stride: int, kwargs: dict[str, Any]) -> nn.Module:
    if name == "sase":
        return ScaleAwareSemanticsExtractor(info, pool_stride=pool_stride, **kwargs)
    if name == "mscsa":
        # MSCSA's multi-stage map without its own fusion layers: TopFormer's injection modules use it.
        return MSCSA(info, mode="classification", pool_stride=pool_stride, **kwargs)
    raise ValueError(f"extractor must be one of {EXTRACTORS}, got {name!r}")


class TopFormer(nn.Module):
    """TopFormer (Fig. 2): token pyramid -> pooled tokens -> SASE or MSCSA -> injection or classifier.

    With ``features_only=True``: (B, 3, H, W) -> the injected maps at
    ``inject_strides`` (default 8, 16, 32), each (B, inject_chs, ~H/s, ~W/s),
    described by ``feature_info``; inputs need at least ``min_size`` pixels
    per side (the pyramid is pooled to 1/64). Otherwise: (B, 3, H, W) ->
    (B, num_classes) through global average pooling and a linear layer.

    Args:
        layers, pyramid_indices, stem_chs: the token pyramid (``TokenPyramidModule``).
        extractor: "sase" (TopFormer) or "mscsa" (MSCSA in place of SASE).
        extractor_kwargs: the extractor's arguments (``ScaleAwareSemanticsExtractor``
            or ``MSCSA``: depth, heads, ...).
        pool_stride: stride of the pooled tokens; None gives 64 with
            ``features_only`` and 32 for classification (MSCSA Table 7).
        inject_strides: pyramid strides that get a Semantics Injection Module.
        inject_chs: output channels of the injection modules (128 / 192 / 256).
        num_classes: classifier classes (0: pooled features).
        drop_rate: dropout before the classifier.
        in_chans: input channels.
        features_only: return the injected maps instead of class logits.
        out_indices: which injected maps to return.
    """

    def __init__(
        self,
        layers: Sequence[Sequence[int]],
        pyramid_indices: Sequence[int],
        stem_chs: int = 16,
        extractor: str = "sase",
        extractor_kwargs: dict[str, Any] | None = None,
        pool_stride: int | None = None,
        inject_strides: Sequence[int] = (8, 16, 32),
        inject_chs: int = 128,
        num_classes: int = 1000,
        drop_rate: float = 0.0,
        in_chans: int = 3,
        features_only: bool = False,
        out_indices: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.tpm = TokenPyramidModule(layers, pyramid_indices, stem_chs, in_chans=in_chans)
        pyramid = self.tpm.feature_info
        pool_stride = pool_stride or (64 if features_only else 32)
        self.extractor = _build_extractor(extractor, pyramid, pool_stride, dict(extractor_kwargs or {}))
        self.features_only = features_only
        # The injected maps need a pooled token grid: at least ``pool_stride`` input pixels per side.
        self.min_size = int(pool_stride) if features_only else 1
        if features_only:
            strides = [f["reduction"] for f in pyramid]
            missing = [s for s in inject_strides if s not in strides]
            if missing or not inject_strides:
                raise ValueError(f"inject_strides {tuple(inject_strides)} must be pyramid strides from {strides}")
            self.inject_index = tuple(strides.index(s) for s in sorted(set(inject_strides)))
            split = self.extractor.split_chs
            self.inject = nn.ModuleList(
                [SemanticsInjection(pyramid[i]["chs"], split[i], inject_chs) for i in self.inject_index]
            )
            info = [
                dict(chs=inject_chs, reduction=pyramid[i]["reduction"], module=f"inject.{k}")
                for k, i in enumerate(self.inject_index)
            ]
            self.out_indices, self.feature_info = select_features(info, out_indices)
            self.num_classes = 0
            self.head = None
        else:
            if out_indices is not None:
                raise ValueError("out_indices only applies with features_only=True")
            self.inject = None
            self.feature_info = [dict(f) for f in self.extractor.feature_info]
            self.num_classes = int(num_classes)
            self.head_drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()
            dim = self.feature_info[-1]["chs"]
            self.head = nn.Linear(dim, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(_init_weights)

    def _check_size(self, x: Tensor) -> None:
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return
        h, w = x.shape[-2:]
        if min(h, w) < self.min_size:
            raise ValueError(
                f"TopFormer pools its token pyramid to 1/{self.min_size} of the input, so the input must be at "
                f"least {self.min_size}x{self.min_size} pixels; got {h}x{w}. Pad or resize the image (the "
                "segmentor pads small inputs itself)."
            )

    def forward_features(self, x: Tensor) -> tuple[list[Tensor], Tensor]:
        """(B, 3, H, W) -> (pyramid maps finest first, global tokens (B, sum(C_i), h, w))."""
        check_image_batch(x, self.in_chans)
        self._check_size(x)
        pyramid = self.tpm(x)
        return pyramid, self.extractor.forward_fused(pyramid)

    def forward_head(self, tokens: Tensor) -> Tensor:
        """(B, C, h, w) global tokens -> (B, num_classes) by global average pooling and a linear layer."""
        return self.head(self.head_drop(tokens.mean(dim=(2, 3))))

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        pyramid, tokens = self.forward_features(x)
        if not self.features_only:
            return self.forward_head(tokens)
        parts = torch.split(tokens, self.extractor.split_chs, dim=1)
        outs = [sim(pyramid[i], parts[i]) for sim, i in zip(self.inject, self.inject_index, strict=True)]
        return [outs[i] for i in self.out_indices]

    def checkpoint_filter_fn(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Official TopFormer keys (``tpm.*``, ``trans.*``, ``SIM.*``) -> ours."""
        from msfusion.convert.topformer import from_official

        return from_official(state_dict, inject_index=getattr(self, "inject_index", (1, 2, 3)))


def _init_weights(m: nn.Module) -> None:
    """TopFormer's init: He-normal on fan-out for convs, BN (1, 0), linear normal(0, 0.01)."""
    if isinstance(m, nn.Conv2d):
        init_conv_fan_out(m)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, 0.0, 0.01)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


# Token pyramid rows (kernel, expansion, channels, stride) and the configurations of TopFormer-T/S/B.
def _pyramid(c: Sequence[int], last_row: bool) -> list[tuple[int, int, int, int]]:
    rows = [
        (3, 1, 16, 1),
        (3, 4, c[0], 2),
        (3, 3, c[0], 1),
        (5, 3, c[1], 2),
        (5, 3, c[1], 1),
        (3, 3, c[2], 2),
        (3, 3, c[2], 1),
        (5, 6, c[3], 2),
        (5, 6, c[3], 1),
    ]
    return rows + [(3, 6, c[3], 1)] if last_row else rows


TOPFORMER_CFGS: dict[str, dict[str, Any]] = {
    "t": dict(layers=_pyramid((16, 32, 64, 96), False), pyramid_indices=(2, 4, 6, 8), num_heads=4, inject_chs=128),
    "s": dict(layers=_pyramid((24, 48, 96, 128), True), pyramid_indices=(2, 4, 6, 9), num_heads=6, inject_chs=192),
    "b": dict(layers=_pyramid((32, 64, 128, 160), True), pyramid_indices=(2, 4, 6, 9), num_heads=8, inject_chs=256),
}


def topformer_config(size: str) -> dict[str, Any]:
    """``TopFormer`` arguments of TopFormer-T/S/B with SASE (4 blocks, key dim 16, MLP ratio 2, DropPath 0.1)."""
    if size not in TOPFORMER_CFGS:
        raise ValueError(f"TopFormer size must be one of {sorted(TOPFORMER_CFGS)}, got {size!r}")
    cfg = dict(TOPFORMER_CFGS[size])
    heads = cfg.pop("num_heads")
    cfg["extractor_kwargs"] = dict(depth=4, num_heads=heads, key_dim=16, attn_ratio=2.0, mlp_ratio=2.0)
    return cfg


def create_topformer(
    size: str, *, extractor: str = "sase", extractor_kwargs: dict[str, Any] | None = None, **kwargs: Any
) -> TopFormer:
    """TopFormer-``size``; ``kwargs`` override ``TopFormer`` arguments.

    With SASE, ``extractor_kwargs`` entries override the variant's SASE
    configuration; with another extractor they are its whole configuration.
    """
    cfg = topformer_config(size)
    if extractor == "sase":
        cfg["extractor_kwargs"].update(extractor_kwargs or {})
    else:
        cfg["extractor_kwargs"] = dict(extractor_kwargs or {})
    cfg.update(kwargs, extractor=extractor)
    return TopFormer(**cfg)


def _imagenet(gmacs: float, source: str, notes: str = "") -> PaperFigures:
    # The MSCSA paper's TopFormer FLOPs match mmcv's rules plus the attention products (mmcv skips
    # matmuls, about 1% here); mmcv's rules are the closest registered convention.
    return PaperFigures(gmacs=gmacs, input_size=(3, 224, 224), source=source, macs_rules="mmcv", notes=notes)


@register_model(
    kind="classifier",
    paper=_imagenet(0.13, "MSCSA Table 6 (TopFormer-T, ImageNet-1k)", "1.5 M params in PaddleViT's TopFormer port"),
)
def topformer_t_cls(**kwargs: Any) -> TopFormer:
    """TopFormer-T on ImageNet (pool 1/32); ``features_only=True``: the segmentation backbone (pool 1/64)."""
    return create_topformer("t", **kwargs)


@register_model(kind="classifier")
def topformer_s_cls(**kwargs: Any) -> TopFormer:
    """TopFormer-S on ImageNet (pool 1/32); ``features_only=True``: the segmentation backbone (pool 1/64)."""
    return create_topformer("s", **kwargs)


@register_model(kind="classifier", paper=_imagenet(0.38, "MSCSA Table 6 (TopFormer-B, ImageNet-1k)"))
def topformer_b_cls(**kwargs: Any) -> TopFormer:
    """TopFormer-B on ImageNet (pool 1/32); ``features_only=True``: the segmentation backbone (pool 1/64)."""
    return create_topformer("b", **kwargs)
