"""MSCAN: the multi-scale convolutional attention encoder of SegNeXt.

Paper: "SegNeXt: Rethinking Convolutional Attention Design for Semantic
Segmentation", Guo et al., NeurIPS 2022 (arXiv 2209.08575).

Implements Sec. 3.1 and Fig. 2: MSCA (Eq. 1-2: a 5x5 depthwise conv, strip
branches 7/11/21, a 1x1 channel mixer, and the attention multiplication), the
attention wrapper with its inner shortcut, the block with BN pre-norms, layer
scale and DropPath, the MLP with its 3x3 depthwise conv, the stem, the
overlapping patch embeddings and the per-stage LayerNorm. Variants T/S/B/L are
Table 2; MLP ratios (8, 8, 4, 4), layer-scale init 1e-2, drop-path rates and the
inner shortcut come from the released SegNeXt code.

Ablations (selectable per model):
- ``branch_kernels``: any subset of (7, 11, 21) strip branches (Table 6 rows 1-3);
- ``channel_mixer=False``: no 1x1 conv in MSCA (Table 6 row 4);
- ``attention=False``: no multiplication, MSCA's output is used as is (Table 6 row 5);
- ``attention_type="lka"``: VAN's single large-kernel attention in place of MSCA
  (Table 8, "w/o MSCA": 5x5 depthwise, 7x7 depthwise with dilation 3, 1x1).

Module names equal the official ones (``patch_embed{i}``, ``block{i}``,
``norm{i}``, ``spatial_gating_unit``), in the mmseg-1.x layout (``mlp.dwconv``),
so official checkpoints load with one rename (see ``checkpoint_filter_fn``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from msfusion.layers import DropPath, check_image_batch, init_conv_fan_out, trunc_normal_
from msfusion.layers.features import select_features
from msfusion.layers.msca import MSCA, STRIP_KERNELS, LargeKernelAttention, SpatialAttention
from msfusion.registry import PaperFigures, register_model

__all__ = ["MSCA", "STRIP_KERNELS", "LargeKernelAttention", "SpatialAttention", "MSCAN", "checkpoint_filter_fn"]


class ConvMlp(nn.Module):
    """Feed-forward: 1x1 up, 3x3 depthwise, GELU, 1x1 down (Fig. 2a)."""

    def __init__(self, chs: int, hidden_chs: int, drop: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(chs, hidden_chs, 1)
        self.dwconv = nn.Conv2d(hidden_chs, hidden_chs, 3, padding=1, groups=hidden_chs)
        self.act = nn.GELU()
        self.drop = nn.Dropout(drop)
        self.fc2 = nn.Conv2d(hidden_chs, chs, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop(self.act(self.dwconv(self.fc1(x))))
        return self.drop(self.fc2(x))


class MSCABlock(nn.Module):
    """One MSCAN building block (Fig. 2a): BN pre-norms, layer scale 1e-2, DropPath."""

    def __init__(
        self,
        chs: int,
        mlp_ratio: float,
        drop_path: float = 0.0,
        drop: float = 0.0,
        layer_scale_init: float = 1e-2,
        attention_type: str = "msca",
        branch_kernels: Sequence[int] = STRIP_KERNELS,
        channel_mixer: bool = True,
        attention: bool = True,
    ) -> None:
        super().__init__()
        if attention_type == "msca":
            gating: nn.Module = MSCA(chs, branch_kernels, channel_mixer, attention)
        elif attention_type == "lka":
            gating = LargeKernelAttention(chs)
        else:
            raise ValueError(f"attention_type must be 'msca' or 'lka' (VAN, Table 8), got {attention_type!r}")
        self.norm1 = nn.BatchNorm2d(chs)
        self.attn = SpatialAttention(chs, gating)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.BatchNorm2d(chs)
        self.mlp = ConvMlp(chs, int(chs * mlp_ratio), drop)
        self.layer_scale_1 = nn.Parameter(torch.full((chs,), layer_scale_init))
        self.layer_scale_2 = nn.Parameter(torch.full((chs,), layer_scale_init))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.layer_scale_1[:, None, None] * self.attn(self.norm1(x)))
        x = x + self.drop_path(self.layer_scale_2[:, None, None] * self.mlp(self.norm2(x)))
        return x


class StemConv(nn.Module):
    """Stride-4 stem: 3x3/2 conv, BN, GELU, 3x3/2 conv, BN (no final activation)."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv2d(in_chs, out_chs // 2, 3, stride=2, padding=1),
            nn.BatchNorm2d(out_chs // 2),
            nn.GELU(),
            nn.Conv2d(out_chs // 2, out_chs, 3, stride=2, padding=1),
            nn.BatchNorm2d(out_chs),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class OverlapPatchEmbed(nn.Module):
    """Down-sampling between stages: 3x3 stride-2 conv followed by BN (Sec. 3.1)."""

    def __init__(self, in_chs: int, out_chs: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chs, out_chs, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(out_chs)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x))


class MSCAN(nn.Module):
    """The MSCAN encoder, as a classifier or a 4-output feature backbone.

    Input (B, in_chans, H, W). Features: stage i in 0..3 gives
    (B, embed_dims[i], H / 2^(i+2), W / 2^(i+2)) (ceil division), each after the
    stage's LayerNorm. As a classifier, the last feature map is averaged over
    space and fed to ``head`` (as in VAN, whose recipe trains MSCAN on ImageNet).

    Args:
        embed_dims: channels of the four stages (Table 2 "C").
        depths: blocks per stage (Table 2 "L").
        mlp_ratios: FFN expansion per stage (Table 2 "e.r.").
        drop_path_rate: stochastic depth, linear over all blocks.
        num_classes: classifier outputs; 0 for no head.
        features_only: return the list of stage outputs instead of logits.
        out_indices: which stages to return with ``features_only``.
    """

    def __init__(
        self,
        embed_dims: Sequence[int] = (64, 128, 320, 512),
        depths: Sequence[int] = (3, 4, 6, 3),
        mlp_ratios: Sequence[float] = (8, 8, 4, 4),
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        in_chans: int = 3,
        num_classes: int = 1000,
        layer_scale_init: float = 1e-2,
        attention_type: str = "msca",
        branch_kernels: Sequence[int] = STRIP_KERNELS,
        channel_mixer: bool = True,
        attention: bool = True,
        features_only: bool = False,
        out_indices: Sequence[int] = (0, 1, 2, 3),
    ) -> None:
        super().__init__()
        if not (len(embed_dims) == len(depths) == len(mlp_ratios) == 4):
            raise ValueError(
                "embed_dims, depths and mlp_ratios need one entry per stage (4 each), got "
                f"{len(embed_dims)}, {len(depths)}, {len(mlp_ratios)}"
            )
        self.in_chans = in_chans
        self.num_stages = 4
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        cursor = 0
        info = []
        for i in range(self.num_stages):
            embed = StemConv(in_chans, embed_dims[0]) if i == 0 else OverlapPatchEmbed(embed_dims[i - 1], embed_dims[i])
            blocks = nn.ModuleList(
                MSCABlock(
                    embed_dims[i],
                    mlp_ratios[i],
                    drop_path=dpr[cursor + j],
                    drop=drop_rate,
                    layer_scale_init=layer_scale_init,
                    attention_type=attention_type,
                    branch_kernels=branch_kernels,
                    channel_mixer=channel_mixer,
                    attention=attention,
                )
                for j in range(depths[i])
            )
            cursor += depths[i]
            setattr(self, f"patch_embed{i + 1}", embed)
            setattr(self, f"block{i + 1}", blocks)
            setattr(self, f"norm{i + 1}", nn.LayerNorm(embed_dims[i]))
            info.append(dict(chs=embed_dims[i], reduction=2 ** (i + 2), module=f"norm{i + 1}"))

        self.features_only = features_only
        self.out_indices, self.feature_info = select_features(info, out_indices if features_only else None)
        self.num_features = embed_dims[-1]
        self.num_classes = 0 if features_only else num_classes
        self.head = nn.Linear(embed_dims[-1], num_classes) if self.num_classes > 0 else nn.Identity()
        self.grad_checkpointing = False
        self.apply(_init_weights)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them (timm's switch).

        Trades about one extra forward pass for memory. BatchNorm running
        statistics are updated again when a block is recomputed (as with timm's
        checkpointing), a negligible change at momentum 0.1.
        """
        self.grad_checkpointing = bool(enable)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """All four stage outputs, finest first, each (B, C_i, H_i, W_i)."""
        check_image_batch(x, self.in_chans)
        outs = []
        last = max(self.out_indices) if self.features_only else self.num_stages - 1
        for i in range(last + 1):
            x = getattr(self, f"patch_embed{i + 1}")(x)
            for block in getattr(self, f"block{i + 1}"):
                if self.grad_checkpointing and torch.is_grad_enabled():
                    x = checkpoint(block, x, use_reentrant=False)
                else:
                    x = block(x)
            # The stage norm is a token LayerNorm over channels (official code).
            x = getattr(self, f"norm{i + 1}")(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2).contiguous()
            outs.append(x)
        return outs

    def forward_head(self, x: Tensor) -> Tensor:
        """(B, C4, H/32, W/32) -> (B, num_classes) by global average pooling and a linear layer."""
        return self.head(x.mean(dim=(2, 3)))

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        feats = self.forward_features(x)
        if self.features_only:
            return [feats[i] for i in self.out_indices]
        return self.forward_head(feats[-1])

    def checkpoint_filter_fn(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        return checkpoint_filter_fn(state_dict, self)


def _init_weights(m: nn.Module) -> None:
    """Official SegNeXt init (``mscan.py``): trunc-normal linears, He-style fan-out convs."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Conv2d):
        init_conv_fan_out(m)


def checkpoint_filter_fn(state_dict: dict[str, Tensor], model: nn.Module | None = None) -> dict[str, Tensor]:
    """Map an official MSCAN checkpoint to our keys.

    Accepts the original SegNeXt layout (``mlp.dwconv.dwconv.*``) and the
    mmseg-1.x layout (``mlp.dwconv.*``), with or without a ``backbone.`` prefix
    (segmentor checkpoints). Decoder keys are dropped: this is the encoder.
    """
    from msfusion.convert.segnext import from_official

    out = {}
    for key, value in from_official(state_dict).items():
        if key.startswith("decode_head.") or key.startswith("auxiliary_head."):
            continue
        out[key.removeprefix("backbone.")] = value
    return out


def _create_mscan(variant: str, **kwargs) -> MSCAN:
    return MSCAN(**kwargs)


# Variants: Table 2 (channels, blocks), official configs (mlp ratios, drop path).
_MSCAN_CFGS = {
    "t": dict(embed_dims=(32, 64, 160, 256), depths=(3, 3, 5, 2), drop_path_rate=0.1),
    "s": dict(embed_dims=(64, 128, 320, 512), depths=(2, 2, 4, 2), drop_path_rate=0.1),
    "b": dict(embed_dims=(64, 128, 320, 512), depths=(3, 3, 12, 3), drop_path_rate=0.1),
    "l": dict(embed_dims=(64, 128, 320, 512), depths=(3, 5, 27, 3), drop_path_rate=0.3),
}


def mscan_config(size: str) -> dict:
    """The hyper-parameters of MSCAN-{T,S,B,L} (Table 2 + official mlp ratios 8,8,4,4)."""
    return dict(_MSCAN_CFGS[size], mlp_ratios=(8, 8, 4, 4))


def _imagenet(params_m: float) -> PaperFigures:
    return PaperFigures(
        params_m=params_m,
        input_size=(3, 224, 224),
        source="SegNeXt Table 3 (MSCAN on ImageNet-1K)",
    )


@register_model(kind="classifier", paper=_imagenet(4.2))
def mscan_t(**kwargs) -> MSCAN:
    """MSCAN-T (Table 2, Table 3)."""
    return _create_mscan("mscan_t", **{**mscan_config("t"), **kwargs})


@register_model(kind="classifier", paper=_imagenet(14.0))
def mscan_s(**kwargs) -> MSCAN:
    """MSCAN-S (Table 2, Table 3)."""
    return _create_mscan("mscan_s", **{**mscan_config("s"), **kwargs})


@register_model(kind="classifier", paper=_imagenet(26.8))
def mscan_b(**kwargs) -> MSCAN:
    """MSCAN-B (Table 2, Table 3)."""
    return _create_mscan("mscan_b", **{**mscan_config("b"), **kwargs})


@register_model(kind="classifier", paper=_imagenet(45.2))
def mscan_l(**kwargs) -> MSCAN:
    """MSCAN-L (Table 2, Table 3)."""
    return _create_mscan("mscan_l", **{**mscan_config("l"), **kwargs})


@register_model(kind="classifier")
def test_mscan(**kwargs) -> MSCAN:
    """A tiny MSCAN for fast tests (not a paper variant)."""
    cfg = dict(embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), mlp_ratios=(2, 2, 2, 2), num_classes=10)
    return _create_mscan("test_mscan", **{**cfg, **kwargs})
