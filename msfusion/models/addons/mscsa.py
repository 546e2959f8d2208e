"""MSCSA: Multi-Stage Cross-Scale Attention, an add-on for any backbone.

Paper: "Vision Backbone Enhancement via Multi-Stage Cross-Scale Attention",
Shang, Liu, Lou, Quan, Adluru, Guan, Sethares, arXiv 2308.05872.

Implements:

- Cross-Scale Attention, CSA (Sec. 3.2, Eq. 1-9, Fig. 2, App. D.2). BCHW
  throughout (App. D.1). The linear projections are 1x1 convolutions followed
  by BN, in LeViT's conv-attention setting. Q comes from X. K and V come from X
  and from two depthwise-conv copies of X downsampled x2 and x3. The copies
  have the sizes of Eq. 3, ``h_1 = floor((h-1)/2) + 1`` and
  ``h_2 = floor((h-1)/3) + 1``, for any h, including sizes that 2 or 3 do not
  divide. Each scale has its own K/V projections (Eq. 4); ``shared_kv=True``
  uses one projection for all three. V has twice the key dimension (LeViT).
  The output is ``softmax(Q K^T / sqrt(d)) V`` (Eq. 6) plus the Parallel
  Convolution Path, a Hardswish followed by a 3x3 depthwise conv on V_0
  (Eq. 7-9). A Hardswish is applied to that sum, then the output projection.
- FFN and Intra-FFN (Sec. 3.3, Fig. 3). The FFN is 1x1, 3x3 depthwise,
  activation, 1x1. The Intra-FFN splits the channels back into the stages'
  groups, runs one FFN per group and concatenates the results.
- The MSCSA block (Sec. 3.4, App. D.1): CSA -> Intra-FFN -> CSA -> FFN, each
  sub-layer pre-normed with BN and added back through a residual with DropPath.
- The add-on (Figs. 4-5):

  1. Every stage is average-pooled to the target size (``pool_stride``,
     Table 7's "pooling size").
  2. An optional 1x1 squeeze per stage (``squeeze_ratio``).
  3. Concatenation, then ``depth`` MSCSA blocks and a final BN.
  4. ``mode="classification"`` (Fig. 4) returns that multi-stage map, and the
     classifier global-average-pools it into its Linear layer. In the paper the
     add-on runs "in parallel to the backbone" and the classifier reads the
     add-on's output, which holds every stage, the last one included; the
     backbone's own last map is not read a second time. This reading is
     consistent with the FLOPs of Tables 1 and 6.
  5. ``mode="dense"`` (Fig. 5) splits the map back per stage and upsamples
     each part to its stage's resolution. A feature fusion layer then combines
     it with the backbone map: ``out = x * hard_sigmoid(W_a g) + W_b g``, with
     injection weights W_a and biases W_b, each a 1x1 conv + BN. The outputs
     replace the backbone's maps with the same channels and strides, so any
     neck or head takes them unchanged.

Defaults follow the paper. The paper is silent on some details. Those are
taken from the same first author's official MSCSA code (the 2025 stroke-lesion
MSCSA, nnU-Net based):

- the downsampling convs are depthwise k3/s2/p1 and k5/s3/p2, each followed by
  BN. This gives exactly the sizes of Eq. 3;
- the PCP's depthwise conv has a bias;
- the FFN activation is ReLU6;
- a final BN follows the blocks;
- DropPath rates rise linearly from 0 to ``drop_path_rate`` over the
  ``2 * depth`` residual pairs;
- conv weights are initialised normal(0, sqrt(2 / fan_out)), and BN as (1, 0).

``layout="official"`` instead reproduces the places where that code differs
from the paper's description:

- the attention output goes through BN -> Hardswish -> a biased 1x1 conv
  without BN;
- the FFN's second projection is a biased 1x1 conv without BN;
- the fusion layer applies the hard sigmoid before upsampling. The paper
  upsamples first, then forms the weights.

``pool="bilinear"`` uses that code's bilinear resizing in place of average
pooling. The 1x1 conv + BN of the fusion layer runs at the pooled resolution
and is then upsampled. Both steps are linear, so the order does not change the
result, and the pooled resolution is the cheap one.

Ablations (Tables 4-5, Fig. 6):

- ``pcp=False``: without the PCP.
- ``intra_ffn=False``: an FFN in place of the Intra-FFN.
- ``downsample="none"``: without multi-scale K/V (single-scale attention).
- ``downsample="avgpool"`` (Fig. 6b): average pooling in place of the
  depthwise convs.
- ``downsample="cascade"`` (Fig. 6c): cascaded convolutions. The second stride-2
  depthwise conv runs on the x2 copy, so the third scale is x4 coarser, because
  a x1.5 step is no conv stride.
- ``downsample="single"`` (Fig. 6d): only the x2 copy; the lowest resolution is
  dropped.

Which maps it reads. The add-on takes "feature maps from different stages",
from H/4 x W/4 to H/32 x W/32 (Sec. 3.4), so it selects the backbone's maps by
stride: the ones at strides 4, 8, 16 and 32 that the backbone has
(``in_strides``). Any other map (ResNet's stride-2 stem, an extra stride-64
level) is not read; in dense mode it is passed through unchanged.

Configuration by backbone (``mscsa_config``, used by ``addon="mscsa"``): the
Table 7 row of the backbone's family, else one rule on the backbone's widths.

Training at batch 1. Every projection is a conv + BN on the pooled map and on
its K/V copies. BatchNorm cannot train on one value per channel, so at batch 1
the coarsest K/V copy (x3 smaller, ``floor((h-1)/3)+1``) needs at least two
cells: the pooled grid needs a side of 4 cells (3 with ``downsample="single"``,
5 with ``"cascade"``, 2 with ``"none"``), i.e. an input side of at least
``(cells - 1) * pool_stride + 1`` pixels (97 for a 1/32 pooling, 193 for
TopFormer's 1/64). ``min_train_size`` gives that size; a smaller input is
refused with a ``ValueError`` before any BN sees it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msfusion.layers import ConvNormAct, DropPath, check_feature_info, init_conv_fan_out, make_act, resize_to
from msfusion.layers.pooling import adaptive_avg_pool2d
from msfusion.registry import register_model

__all__ = [
    "CrossScaleAttention",
    "FFN",
    "IntraFFN",
    "MSCSABlock",
    "FeatureFusion",
    "MSCSA",
    "DOWNSAMPLE_MODES",
    "TABLE7",
    "STAGE_STRIDES",
    "mscsa_config",
]

DOWNSAMPLE_MODES = ("dwconv", "avgpool", "cascade", "single", "none")
_LAYOUTS = ("paper", "official")
STAGE_STRIDES = (4, 8, 16, 32)  # Sec. 3.4: the four stages, H/4 x W/4 to H/32 x W/32

# Table 7: pooling size (as a stride), squeeze ratio, depth, #heads, head dimension, MLP ratio.
# "dense_pool_stride" is the value in parentheses, used for dense prediction.
TABLE7: dict[str, dict[str, Any]] = {
    "coat_tiny": dict(pool_stride=16, dense_pool_stride=32, squeeze_ratio=None, depth=3, num_heads=8, head_dim=22, mlp_ratio=1.5),
    "coat_small": dict(pool_stride=16, dense_pool_stride=32, squeeze_ratio=None, depth=3, num_heads=8, head_dim=52, mlp_ratio=2.0),
    "resnet18": dict(pool_stride=32, squeeze_ratio=5 / 8, depth=1, num_heads=8, head_dim=24, mlp_ratio=2.0),
    "resnet50": dict(pool_stride=32, squeeze_ratio=1 / 4, depth=1, num_heads=8, head_dim=32, mlp_ratio=2.0),
    "pvt_v2_b0": dict(pool_stride=32, squeeze_ratio=3 / 4, depth=1, num_heads=8, head_dim=15, mlp_ratio=2.0),
    "pvt_v2_b1": dict(pool_stride=32, squeeze_ratio=5 / 8, depth=1, num_heads=8, head_dim=24, mlp_ratio=2.0),
    "pvt_v2_b2": dict(pool_stride=32, squeeze_ratio=None, depth=1, num_heads=8, head_dim=35, mlp_ratio=2.0),
    "swin_t": dict(pool_stride=32, squeeze_ratio=3 / 4, depth=1, num_heads=12, head_dim=28, mlp_ratio=2.0),
    "convnext_t": dict(pool_stride=32, squeeze_ratio=3 / 4, depth=1, num_heads=12, head_dim=28, mlp_ratio=2.0),
    "topformer_t": dict(pool_stride=32, dense_pool_stride=64, squeeze_ratio=None, depth=2, num_heads=4, head_dim=14, mlp_ratio=3.0),
    "topformer_b": dict(pool_stride=32, dense_pool_stride=64, squeeze_ratio=None, depth=2, num_heads=8, head_dim=12, mlp_ratio=3.0),
}  # fmt: skip

# The stage widths (strides 4-32) of each Table 7 row's backbone; a backbone of the same family with
# the same widths takes that row. TopFormer's rows are matched by name only (MSCSA reads its token pyramid).
_TABLE7_WIDTHS: dict[str, tuple[int, ...]] = {
    "coat_tiny": (152, 152, 152, 152),
    "coat_small": (152, 320, 320, 320),
    "resnet18": (64, 128, 256, 512),
    "resnet50": (256, 512, 1024, 2048),
    "pvt_v2_b0": (32, 64, 160, 256),
    "pvt_v2_b1": (64, 128, 320, 512),
    "pvt_v2_b2": (64, 128, 320, 512),
    "swin_t": (96, 192, 384, 768),
    "convnext_t": (96, 192, 384, 768),
}
# Registered / timm names of the rows' own backbones.
_TABLE7_NAMES = {
    "swin_tiny_patch4_window7_224": "swin_t",
    "convnext_tiny": "convnext_t",
    "topformer_t_cls": "topformer_t",
    "topformer_b_cls": "topformer_b",
}
# Families (name prefixes) of Table 7: ResNet, PVTv2, Swin, ConvNeXt, CoaT, TopFormer.
_FAMILIES = {
    "resnet": ("resnet18", "resnet50"),
    "pvt_v2_": ("pvt_v2_b0", "pvt_v2_b1", "pvt_v2_b2"),
    "swin": ("swin_t",),
    "convnext": ("convnext_t",),
    "coat_": ("coat_tiny", "coat_small"),
}
# The derived rule's one constant: Table 7's rows give their 8 (or 12) heads' key channels
# num_heads * head_dim = C / 2.7 ... C / 3.75 of the multi-stage channels C, median C / 3.2.
_DERIVED_KEY_FRACTION = 1 / 3.2
# Pooled-grid side (cells) below which the coarsest K/V copy is 1 cell: 4 for the x3 copy of Eq. 3.
_MIN_TRAIN_CELLS = {"dwconv": 4, "avgpool": 4, "cascade": 5, "single": 3, "none": 2}


def _conv_bn(in_chs: int, out_chs: int, kernel_size: int = 1, stride: int = 1, groups: int = 1) -> ConvNormAct:
    """LeViT's ``Conv2d_BN``: a bias-free conv followed by BN, the CSA's linear projection."""
    return ConvNormAct(in_chs, out_chs, kernel_size, stride=stride, groups=groups, norm="bn", act=None)


def _downsamplers(dim: int, mode: str) -> tuple[nn.ModuleList, bool]:
    """The modules making the coarser K/V copies of X (Eq. 2), and whether they run in cascade.

    Depthwise k3/s2/p1 and k5/s3/p2 give Eq. 3's ``floor((h-1)/2)+1`` and
    ``floor((h-1)/3)+1``; average pooling with the same windows gives the same sizes.
    """
    if mode == "dwconv":
        return nn.ModuleList([_conv_bn(dim, dim, 3, 2, dim), _conv_bn(dim, dim, 5, 3, dim)]), False
    if mode == "avgpool":
        return (
            nn.ModuleList(
                [
                    nn.AvgPool2d(3, 2, 1, count_include_pad=False),
                    nn.AvgPool2d(5, 3, 2, count_include_pad=False),
                ]
            ),
            False,
        )
    if mode == "cascade":
        return nn.ModuleList([_conv_bn(dim, dim, 3, 2, dim), _conv_bn(dim, dim, 3, 2, dim)]), True
    if mode == "single":
        return nn.ModuleList([_conv_bn(dim, dim, 3, 2, dim)]), False
    if mode == "none":
        return nn.ModuleList(), False
    raise ValueError(f"downsample must be one of {DOWNSAMPLE_MODES} (Fig. 6 / Table 4), got {mode!r}")


class CrossScaleAttention(nn.Module):
    """Cross-Scale Attention (Sec. 3.2, Eq. 1-9, Fig. 2), pre-normed with BN.

    (B, C, H, W) -> (B, C, H, W). The N = H*W queries attend to
    ``N + N_1 + N_2`` keys from the input and from its x2 and x3 downsampled
    copies (Eq. 5). The block's residual is added outside.

    Args:
        dim: channels C of the multi-stage map.
        num_heads: attention heads.
        head_dim: d, the query/key dimension per head; values have ``attn_ratio * d``.
        attn_ratio: value-to-key dimension ratio (2 in the paper, after LeViT).
        downsample: how K/V copies are made (see ``DOWNSAMPLE_MODES``, Fig. 6).
        shared_kv: one K and one V projection for every scale (Eq. 4 uses separate ones).
        pcp: add the Parallel Convolution Path (Eq. 7-9).
        layout: "paper" or "official" (module docstring).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        head_dim: int = 32,
        attn_ratio: float = 2.0,
        downsample: str = "dwconv",
        shared_kv: bool = False,
        pcp: bool = True,
        layout: str = "paper",
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.value_dim = int(attn_ratio * head_dim)
        key_chs, value_chs = num_heads * head_dim, num_heads * self.value_dim
        self.norm = nn.BatchNorm2d(dim)
        self.q = _conv_bn(dim, key_chs)
        self.downsample, self.cascade = _downsamplers(dim, downsample)
        num_scales = 1 if shared_kv else 1 + len(self.downsample)
        self.k = nn.ModuleList([_conv_bn(dim, key_chs) for _ in range(num_scales)])
        self.v = nn.ModuleList([_conv_bn(dim, value_chs) for _ in range(num_scales)])
        # PCP (Eq. 8): Hardswish then a 3x3 depthwise conv (stride 1, padding 1) on V_0.
        self.pcp = (
            nn.Sequential(nn.Hardswish(), nn.Conv2d(value_chs, value_chs, 3, padding=1, groups=value_chs))
            if pcp
            else None
        )
        if layout == "paper":
            # App. D.2: a Hardswish on the attention output, then the LeViT projection (conv + BN).
            self.proj = nn.Sequential(nn.Hardswish(), _conv_bn(value_chs, dim))
        elif layout == "official":
            self.proj = nn.Sequential(nn.BatchNorm2d(value_chs), nn.Hardswish(), nn.Conv2d(value_chs, dim, 1))
        else:
            raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")

    def _scales(self, x: Tensor) -> list[Tensor]:
        scales = [x]
        for down in self.downsample:
            scales.append(down(scales[-1] if self.cascade else x))
        return scales

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        x = self.norm(x)
        heads, d, dv = self.num_heads, self.head_dim, self.value_dim
        q = self.q(x).reshape(b, heads, d, h * w).transpose(-2, -1)  # (B, heads, N, d)
        keys, values = [], []
        v0 = None
        for i, xs in enumerate(self._scales(x)):
            j = min(i, len(self.k) - 1)  # every scale uses projection 0 when shared
            keys.append(self.k[j](xs).flatten(2))
            vs = self.v[j](xs)
            v0 = vs if i == 0 else v0
            values.append(vs.flatten(2))
        k = torch.cat(keys, dim=-1).reshape(b, heads, d, -1).transpose(-2, -1)  # (B, heads, M, d)
        v = torch.cat(values, dim=-1).reshape(b, heads, dv, -1).transpose(-2, -1)  # (B, heads, M, 2d)
        # Eq. 6: softmax(Q K^T / sqrt(d)) V; the fused kernel's default scale is 1/sqrt(d).
        out = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, 2d)
        out = out.transpose(-2, -1).reshape(b, heads * dv, h, w)
        if self.pcp is not None:
            out = out + self.pcp(v0)
        return self.proj(out)


class FFN(nn.Module):
    """Feed-forward network (Sec. 3.3, Fig. 3c), pre-normed with BN.

    BN, 1x1 conv + BN (C -> rC), 3x3 depthwise conv, activation, 1x1 conv + BN
    (rC -> C). (B, C, H, W) -> (B, C, H, W).

    Args:
        dim: channels C.
        mlp_ratio: expansion r.
        act: activation name (ReLU6 in the official code, as in TopFormer).
        layout: "paper" (second projection conv + BN) or "official" (biased conv, no BN).
    """

    def __init__(self, dim: int, mlp_ratio: float = 2.0, act: str = "relu6", layout: str = "paper") -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm = nn.BatchNorm2d(dim)
        self.fc1 = _conv_bn(dim, hidden)
        self.dwconv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = make_act(act)
        if layout not in _LAYOUTS:
            raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
        self.fc2 = _conv_bn(hidden, dim) if layout == "paper" else nn.Conv2d(hidden, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(self.norm(x)))))


class IntraFFN(nn.Module):
    """Intra-FFN (Sec. 3.3, Fig. 3b): one FFN per stage's channel group, concatenated.

    (B, sum(split_chs), H, W) -> same shape. Costs about ``1 / num_stages`` of the
    projections of an FFN over all channels (Table 1: 0.030 vs 0.081 GFLOPs).

    Args:
        split_chs: channels of each stage in the multi-stage map, in order.
        mlp_ratio, act, layout: as ``FFN``.
    """

    def __init__(
        self, split_chs: Sequence[int], mlp_ratio: float = 2.0, act: str = "relu6", layout: str = "paper"
    ) -> None:
        super().__init__()
        self.split_chs = [int(c) for c in split_chs]
        self.ffns = nn.ModuleList([FFN(c, mlp_ratio, act, layout) for c in self.split_chs])

    def forward(self, x: Tensor) -> Tensor:
        parts = torch.split(x, self.split_chs, dim=1)
        return torch.cat([ffn(p) for ffn, p in zip(self.ffns, parts, strict=True)], dim=1)


class MSCSABlock(nn.Module):
    """One MSCSA block (Sec. 3.4): CSA -> Intra-FFN -> CSA -> FFN, pre-norm residuals.

    ``x += dp1(CSA(x)); x += dp1(IntraFFN(x)); x += dp2(CSA(x)); x += dp2(FFN(x))``.
    (B, C, H, W) -> (B, C, H, W) with C = sum(split_chs).

    Args:
        split_chs: per-stage channels (the Intra-FFN's groups).
        num_heads, head_dim, attn_ratio, downsample, shared_kv, pcp, layout: as ``CrossScaleAttention``.
        mlp_ratio, act: as ``FFN``.
        drop_path: DropPath rates of the first and second pair of sub-layers.
        intra_ffn: False puts an FFN in place of the Intra-FFN (Table 4 ablation).
    """

    def __init__(
        self,
        split_chs: Sequence[int],
        num_heads: int = 8,
        head_dim: int = 32,
        attn_ratio: float = 2.0,
        mlp_ratio: float = 2.0,
        drop_path: tuple[float, float] = (0.0, 0.0),
        intra_ffn: bool = True,
        downsample: str = "dwconv",
        shared_kv: bool = False,
        pcp: bool = True,
        act: str = "relu6",
        layout: str = "paper",
    ) -> None:
        super().__init__()
        dim = sum(split_chs)

        def csa() -> CrossScaleAttention:
            return CrossScaleAttention(dim, num_heads, head_dim, attn_ratio, downsample, shared_kv, pcp, layout)

        self.attn1 = csa()
        self.mlp1 = IntraFFN(split_chs, mlp_ratio, act, layout) if intra_ffn else FFN(dim, mlp_ratio, act, layout)
        self.attn2 = csa()
        self.mlp2 = FFN(dim, mlp_ratio, act, layout)
        self.drop_path1 = DropPath(drop_path[0]) if drop_path[0] > 0 else nn.Identity()
        self.drop_path2 = DropPath(drop_path[1]) if drop_path[1] > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(self.attn1(x))
        x = x + self.drop_path1(self.mlp1(x))
        x = x + self.drop_path2(self.attn2(x))
        x = x + self.drop_path2(self.mlp2(x))
        return x


class FeatureFusion(nn.Module):
    """Feature fusion layer (Fig. 5b): ``out = x * hard_sigmoid(W_a g) + W_b g``.

    ``g`` is a stage's part of the MSCSA output at the pooled resolution; the
    injection weights ``W_a g`` and biases ``W_b g`` (1x1 conv + BN each) are
    upsampled bilinearly to the backbone map ``x``. (B, C, H, W), (B, C_g, h, w)
    -> (B, C, H, W).

    Args:
        global_chs: C_g, channels of the stage's part of the MSCSA output.
        local_chs: C, channels of the backbone map.
        sigmoid_first: apply the hard sigmoid before upsampling (the official
            code, as TopFormer) rather than after (the paper's Fig. 5b).
    """

    def __init__(self, global_chs: int, local_chs: int, sigmoid_first: bool = False) -> None:
        super().__init__()
        self.global_act = _conv_bn(global_chs, local_chs)
        self.global_embedding = _conv_bn(global_chs, local_chs)
        self.hard_sigmoid = nn.Hardsigmoid()  # relu6(x + 3) / 6
        self.sigmoid_first = sigmoid_first

    def forward(self, x: Tensor, g: Tensor) -> Tensor:
        size = x.shape[-2:]
        weight = self.global_act(g)
        if self.sigmoid_first:
            weight = resize_to(self.hard_sigmoid(weight), size)
        else:
            weight = self.hard_sigmoid(resize_to(weight, size))
        return x * weight + resize_to(self.global_embedding(g), size)


def describe_maps(feature_info: Sequence[dict]) -> str:
    """``strides [2, 4, ...] with widths [64, 256, ...]``: a backbone's maps, for error messages."""
    return f"strides {[f['reduction'] for f in feature_info]} with widths {[f['chs'] for f in feature_info]}"


def select_stages(
    feature_info: Sequence[dict], in_strides: Sequence[int] | str | None = None, in_chs: Sequence[int] | None = None
) -> list[int]:
    """Indices of the maps MSCSA reads, chosen by stride (see ``MSCSA``'s ``in_strides``).

    Raises:
        ValueError: a stride or width the backbone does not have, naming the backbone's strides and widths.
    """
    info = list(feature_info)
    strides = [f["reduction"] for f in info]
    if in_strides == "all":
        read = list(range(len(info)))
    elif in_strides is None:
        read = [i for i, s in enumerate(strides) if s in STAGE_STRIDES]
        if not read:
            raise ValueError(
                f"MSCSA reads the stage maps at strides {list(STAGE_STRIDES)}, but the backbone has none of them "
                f"({describe_maps(info)}); pass in_strides=[...] with the strides to read"
            )
    elif isinstance(in_strides, str):
        raise ValueError(f"in_strides must be None, 'all' or a list of strides, got {in_strides!r}")
    else:
        wanted = [int(s) for s in in_strides]
        missing = [s for s in wanted if s not in strides]
        if missing or not wanted or wanted != sorted(set(wanted)):
            raise ValueError(
                f"MSCSA in_strides={wanted} asks for stride(s) {missing or wanted} that the backbone does not have "
                f"(or not ordered finest first); the backbone has {describe_maps(info)}"
            )
        read = [strides.index(s) for s in wanted]
    if in_chs is not None:
        chs = [info[i]["chs"] for i in read]
        if [int(c) for c in in_chs] != chs:
            raise ValueError(
                f"MSCSA in_chs={list(in_chs)} does not match the widths of the maps it reads ({chs} at strides "
                f"{[strides[i] for i in read]}); the backbone has {describe_maps(info)}"
            )
    return read


def _base_name(backbone: str) -> str:
    # "resnet50.a1_in1k" -> "resnet50": a pretrained tag does not change the architecture.
    return backbone.split(".")[0].lower()


def mscsa_config(
    feature_info: Sequence[dict],
    backbone: str | None = None,
    mode: str = "dense",
    in_strides: Sequence[int] | str | None = None,
) -> tuple[str, dict[str, Any]]:
    """The MSCSA configuration that fits a backbone: (where it comes from, ``MSCSA`` kwargs).

    One rule, in order:

    1. The backbone is one of Table 7's (by registered or timm name: ``resnet50``,
       ``pvt_v2_b1``, ``swin_tiny_patch4_window7_224``, ``convnext_tiny``,
       ``coat_tiny``, ``topformer_t_cls``, ...): that row.
    2. The backbone is of a Table 7 family (name prefix ``resnet``, ``pvt_v2_``,
       ``swin``, ``convnext``, ``coat_``) and its stage widths (strides 4-32) equal
       a row's: that row, the last one listed if several (``resnet101`` takes
       ResNet-50's row, ``resnet34`` ResNet-18's, ``pvt_v2_b3`` PVTv2-B2's).
    3. Otherwise, derived from the widths: the maps at strides 4-32, no squeeze,
       pooling to the coarsest of them, one block, 8 heads, MLP ratio 2, and
       head dimension ``max(1, round(C / 3.2 / 8))`` for the C concatenated
       channels: Table 7's rows put C / 2.7 to C / 3.75 into their heads' key
       channels, median C / 3.2.

    Dense prediction uses a row's dense pooling size (CoaT 1/32, TopFormer 1/64);
    a pooling size finer than the coarsest map resizes that map up (CoaT's 1/16).
    The result always names ``in_strides`` and ``in_chs``, so a recorded
    configuration rebuilds the same add-on and fails clearly on another backbone.

    Args:
        feature_info: the backbone's ``feature_info``.
        backbone: its registered or timm name, if known.
        mode: "dense" or "classification".
        in_strides: the maps to read (``MSCSA``'s argument); None: strides 4-32.
    """
    info = check_feature_info(feature_info, "the backbone given to MSCSA")
    read = select_stages(info, in_strides)
    widths = tuple(info[i]["chs"] for i in read)
    strides = [info[i]["reduction"] for i in read]
    name = _base_name(backbone) if backbone else ""
    row = name if name in TABLE7 else _TABLE7_NAMES.get(name)
    if row is None and name:
        family = next((rows for prefix, rows in _FAMILIES.items() if name.startswith(prefix)), ())
        matches = [r for r in family if _TABLE7_WIDTHS[r] == widths]
        row = matches[-1] if matches else None
    if row is not None:
        cfg = dict(TABLE7[row])
        dense_pool_stride = cfg.pop("dense_pool_stride", cfg["pool_stride"])
        if mode == "dense":
            cfg["pool_stride"] = dense_pool_stride
        source = f"MSCSA Table 7, {row} row"
    else:
        dim = sum(widths)
        cfg = dict(
            pool_stride=strides[-1],
            squeeze_ratio=None,
            depth=1,
            num_heads=8,
            head_dim=max(1, round(dim * _DERIVED_KEY_FRACTION / 8)),
            mlp_ratio=2.0,
        )
        source = f"derived from the widths {list(widths)} (no Table 7 row for {backbone or 'an unnamed backbone'})"
    if cfg["pool_stride"] < strides[-1]:
        cfg["allow_upsample"] = True
    cfg.update(in_strides="all" if in_strides == "all" else strides, in_chs=list(widths))
    return source, cfg


class MSCSA(nn.Module):
    """The MSCSA add-on (Figs. 4-5): list of backbone maps -> list of maps.

    ``forward(feats)`` takes the backbone's maps, finest first, as described
    by ``feature_info``.

    - ``mode="dense"`` returns one map per input, with the same shapes; its
      ``feature_info`` has the input's channels and strides.
    - ``mode="classification"`` returns ``[fused]``, the multi-stage map
      (B, sum(C'_i), ~H/pool_stride, ~W/pool_stride), described by one
      ``feature_info`` entry with stride ``pool_stride``. A classifier
      global-average-pools it.

    Args:
        feature_info: the backbone's ``feature_info`` (chs and reduction per map).
        mode: "dense" (Fig. 5) or "classification" (Fig. 4).
        in_strides: the strides of the maps MSCSA reads. None: every map the
            backbone has at strides 4, 8, 16, 32 (Sec. 3.4's stages); "all":
            every map, whatever its stride (what msfusion did before it selected
            by stride, kept for checkpoints saved then). A stride the backbone
            does not have is refused with the backbone's strides and widths.
        in_chs: the widths the read maps must have (optional; a recorded
            configuration carries them so that it fails clearly on another backbone).
        pool_stride: stride of the common size every stage is pooled to (Table 7's
            "pooling size" 1/32 -> 32). It is either one of the backbone's strides
            or a multiple of the coarsest one (TopFormer's 1/64, from the coarsest
            map as ``floor((h-1)/k)+1``).
        allow_upsample: let ``pool_stride`` be finer than the coarsest map. The
            coarser maps are then resized up bilinearly, as the official code
            does (CoaT's 1/16 in Table 7).
        pool: "avg" (paper) or "bilinear" (official code) resizing to the common size.
        squeeze_ratio: 1x1 conv per stage to ``round(C_i * ratio)`` channels after
            pooling (Table 7's "squeeze ratio"); None for no squeeze.
        depth: number of MSCSA blocks.
        num_heads: attention heads.
        head_dim: query/key dimension per head (Table 7's "head dimension"). With
            None it is derived as in standard multi-head attention: the heads split
            the C channels evenly, giving value dimension C / num_heads and key
            dimension C / (2 * num_heads). ``num_heads`` must then divide the
            channels.
        attn_ratio: value-to-key dimension ratio (2, LeViT).
        mlp_ratio: FFN expansion (Table 7's "MLP ratio").
        drop_path_rate: stochastic depth, rising linearly over the blocks.
        intra_ffn, downsample, shared_kv, pcp: ablation switches (module docstring).
        act: FFN activation.
        layout: "paper" or "official" (module docstring).
    """

    def __init__(
        self,
        feature_info: Sequence[dict],
        *,
        mode: str = "dense",
        in_strides: Sequence[int] | str | None = None,
        in_chs: Sequence[int] | None = None,
        pool_stride: int = 32,
        allow_upsample: bool = False,
        pool: str = "avg",
        squeeze_ratio: float | None = None,
        depth: int = 1,
        num_heads: int = 8,
        head_dim: int | None = 32,
        attn_ratio: float = 2.0,
        mlp_ratio: float = 2.0,
        drop_path_rate: float = 0.1,
        intra_ffn: bool = True,
        downsample: str = "dwconv",
        shared_kv: bool = False,
        pcp: bool = True,
        act: str = "relu6",
        layout: str = "paper",
    ) -> None:
        super().__init__()
        info = check_feature_info(feature_info, "the backbone given to MSCSA")
        if mode not in ("dense", "classification"):
            raise ValueError(f"mode must be 'dense' (Fig. 5) or 'classification' (Fig. 4), got {mode!r}")
        if pool not in ("avg", "bilinear"):
            raise ValueError(f"pool must be 'avg' (paper) or 'bilinear' (official code), got {pool!r}")
        if layout not in _LAYOUTS:
            raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
        if depth < 1:
            raise ValueError(f"depth must be at least 1 MSCSA block, got {depth}")
        self.mode = mode
        self.pool = pool
        self.downsample = downsample
        self._all_chs = [f["chs"] for f in info]
        self._read = select_stages(info, in_strides, in_chs)
        self.in_chs = [info[i]["chs"] for i in self._read]
        strides = [info[i]["reduction"] for i in self._read]
        self.in_strides = strides
        try:
            self._pool_index, self._pool_factor = self._check_pool_stride(pool_stride, strides, allow_upsample)
        except ValueError as err:
            raise ValueError(f"{err} (the backbone: {describe_maps(info)})") from None
        self.pool_stride = int(pool_stride)

        self.split_chs = self._squeezed_chs(self.in_chs, squeeze_ratio)
        self.squeeze = nn.ModuleList(
            [nn.Identity() if c == s else nn.Conv2d(c, s, 1) for c, s in zip(self.in_chs, self.split_chs, strict=True)]
        )
        dim = sum(self.split_chs)
        if num_heads < 1:
            raise ValueError(f"num_heads must be positive, got {num_heads}")
        if head_dim is None:
            if dim % (2 * num_heads):
                divisors = [h for h in range(1, 33) if dim % (2 * h) == 0]
                raise ValueError(
                    f"num_heads={num_heads} does not divide the {dim} channels of the multi-stage map into "
                    f"equal heads with an even value dimension: use num_heads in {divisors}, or give head_dim "
                    "explicitly (any value works then, as in Table 7)"
                )
            head_dim = dim // (2 * num_heads)
        if head_dim < 1:
            raise ValueError(f"head_dim must be positive, got {head_dim}")
        self.dim = dim

        # Plain Python (not torch.linspace) so that the model also builds on the meta device.
        rates = [drop_path_rate * i / max(2 * depth - 1, 1) for i in range(2 * depth)]
        self.blocks = nn.Sequential(
            *[
                MSCSABlock(
                    self.split_chs,
                    num_heads=num_heads,
                    head_dim=head_dim,
                    attn_ratio=attn_ratio,
                    mlp_ratio=mlp_ratio,
                    drop_path=(rates[2 * i], rates[2 * i + 1]),
                    intra_ffn=intra_ffn,
                    downsample=downsample,
                    shared_kv=shared_kv,
                    pcp=pcp,
                    act=act,
                    layout=layout,
                )
                for i in range(depth)
            ]
        )
        self.norm = nn.BatchNorm2d(dim)

        if mode == "dense":
            sigmoid_first = layout == "official"
            self.fusion = nn.ModuleList(
                [FeatureFusion(s, c, sigmoid_first) for s, c in zip(self.split_chs, self.in_chs, strict=True)]
            )
            # Maps that are not read pass through unchanged, so the outputs keep the backbone's contract.
            fused = {i: k for k, i in enumerate(self._read)}
            self.feature_info = [
                dict(chs=f["chs"], reduction=f["reduction"], module=f"fusion.{fused[i]}" if i in fused else "")
                for i, f in enumerate(info)
            ]
        else:
            self.fusion = None
            self.feature_info = [dict(chs=dim, reduction=self.pool_stride, module="norm")]
        self.apply(self._init_weights)

    @staticmethod
    def _check_pool_stride(pool_stride: int, strides: list[int], allow_upsample: bool) -> tuple[int | None, int]:
        """Where the common size comes from: a map's index, or a factor on the coarsest map."""
        coarsest = strides[-1]
        if pool_stride in strides:
            index = strides.index(pool_stride)
            if index < len(strides) - 1 and not allow_upsample:
                raise ValueError(
                    f"pool_stride={pool_stride} is finer than the coarsest backbone map (stride {coarsest}): "
                    "the pooling size would be larger than the smallest feature map. Use "
                    f"pool_stride={coarsest} (or a multiple of it), or pass allow_upsample=True to resize the "
                    "coarser maps up bilinearly (the official code's choice, Table 7's CoaT 1/16)."
                )
            return index, 1
        if pool_stride > coarsest and pool_stride % coarsest == 0:
            return None, pool_stride // coarsest
        raise ValueError(
            f"pool_stride={pool_stride} is neither a backbone stride {strides} nor a multiple of the coarsest "
            f"({coarsest}); use e.g. pool_stride={coarsest}"
        )

    @staticmethod
    def _squeezed_chs(in_chs: list[int], squeeze_ratio: float | None) -> list[int]:
        if squeeze_ratio is None:
            return list(in_chs)
        if squeeze_ratio <= 0:
            raise ValueError(f"squeeze_ratio must be positive (Table 7 uses 1/4 to 3/4), got {squeeze_ratio}")
        out = [int(round(c * squeeze_ratio)) for c in in_chs]
        if min(out) < 1:
            smallest = min(in_chs)
            raise ValueError(
                f"squeeze_ratio={squeeze_ratio} leaves no channels for the stage with {smallest} channels "
                f"(squeezed channels {out}); use squeeze_ratio >= {0.5 / smallest:.3g}, or None for no squeeze"
            )
        return out

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # Official MSCSA init: He-style normal on fan-out for convs, identity-like norms.
        if isinstance(m, nn.Conv2d):
            init_conv_fan_out(m)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def _target_size(self, feats: list[Tensor]) -> tuple[int, int]:
        if self._pool_index is not None:
            h, w = feats[self._pool_index].shape[-2:]
            return h, w
        # Plain shape arithmetic (no int()) so that a traced graph (ONNX export) keeps the sizes symbolic.
        h, w = feats[-1].shape[-2:]
        k = self._pool_factor
        return (h - 1) // k + 1, (w - 1) // k + 1

    def _to_size(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        if tuple(x.shape[-2:]) == size:
            return x
        if self.pool == "avg" and x.shape[-2] >= size[0] and x.shape[-1] >= size[1]:
            return adaptive_avg_pool2d(x, size)  # exportable to ONNX (msfusion.layers.pooling)
        return resize_to(x, size)

    def _check_inputs(self, feats: Sequence[Tensor]) -> None:
        if len(feats) != len(self._all_chs):
            raise ValueError(
                f"MSCSA was built for {len(self._all_chs)} feature maps (channels {self._all_chs}), got {len(feats)}"
            )
        chs = [int(f.shape[1]) for f in feats]
        if chs != self._all_chs:
            raise ValueError(f"MSCSA was built for feature channels {self._all_chs}, got {chs}")

    @property
    def min_train_cells(self) -> int:
        """Smallest side of the pooled grid that trains at batch 1 (the coarsest K/V copy has 2 cells)."""
        return _MIN_TRAIN_CELLS[self.downsample]

    @property
    def min_train_size(self) -> int:
        """Smallest input side (pixels) that trains at batch 1, for backbones whose maps are ``ceil(H / s)``."""
        return (self.min_train_cells - 1) * self.pool_stride + 1

    def check_train_size(self, batch: int, grid: tuple[int, int]) -> None:
        """Refuse a training batch whose BatchNorms would see one value per channel (module docstring).

        Args:
            batch: B.
            grid: (h, w), the pooled grid the blocks run on.
        """
        if not self.training or batch > 1:
            return
        cells = self.min_train_cells
        if max(grid) >= cells:
            return
        raise ValueError(
            f"MSCSA cannot train at batch 1 on this input: it pools to a {grid[0]}x{grid[1]} grid (1/{self.pool_stride} "
            f"of the input) and its coarsest K/V copy (Eq. 3, downsample={self.downsample!r}) is then 1x1, and "
            "BatchNorm cannot train on one value per channel. At batch 1 the input needs at least "
            f"{self.min_train_size} pixels on one side (a pooled side of {cells} cells); use larger crops "
            "or a batch of 2 or more."
        )

    def forward_fused(self, feats: Sequence[Tensor]) -> Tensor:
        """The multi-stage map after the blocks: (B, sum(C'_i), h, w) at the pooled size."""
        self._check_inputs(feats)
        read = [feats[i] for i in self._read]
        size = self._target_size(read)
        if self.training:  # eval (and ONNX tracing) keeps the sizes symbolic
            self.check_train_size(int(read[0].shape[0]), (int(size[0]), int(size[1])))
        x = torch.cat([sq(self._to_size(f, size)) for sq, f in zip(self.squeeze, read, strict=True)], dim=1)
        return self.norm(self.blocks(x))

    def forward(self, feats: Sequence[Tensor]) -> list[Tensor]:
        fused = self.forward_fused(feats)
        if self.fusion is None:
            return [fused]
        parts = torch.split(fused, self.split_chs, dim=1)
        out = list(feats)
        for fuse, i, g in zip(self.fusion, self._read, parts, strict=True):
            out[i] = fuse(feats[i], g)
        return out


@register_model(kind="addon")
def mscsa(feature_info: Sequence[dict], mode: str = "dense", backbone: str | None = None, **kwargs) -> MSCSA:
    """MSCSA fitted to the backbone described by ``feature_info`` (and named ``backbone``).

    The configuration is ``mscsa_config``'s: the backbone's Table 7 row, or the
    rule on its widths; ``kwargs`` override it (any ``MSCSA`` argument). The
    built module's ``resolved_kwargs`` holds every setting it was built with
    (what a checkpoint records), and ``config_source`` where they come from.
    """
    source, cfg = mscsa_config(feature_info, backbone, mode, kwargs.get("in_strides"))
    cfg.update(kwargs)
    addon = MSCSA(feature_info, mode=mode, **cfg)
    addon.resolved_kwargs = {"mode": mode, **cfg}
    addon.config_source = source if not kwargs else f"{source}, with {sorted(kwargs)} given"
    return addon
