"""CEDNet: a cascade encoder-decoder network for dense prediction.

Paper: "CEDNet: A Cascade Encoder-Decoder Network for Dense Prediction", Zhang,
Li, Tang, Li, Hu (arXiv 2302.06052; Pattern Recognition 158:111072, 2025).

Implements:
- Sec. 3.1 and Fig. 2: the stem (two 3x3 stride-2 convs, each with LayerNorm and
  GELU; n0 CED blocks; a 2x2 stride-2 conv + LN), then m cascade stages, each an
  encoder over 1/8, 1/16, 1/32 and a decoder back to 1/8. Stages are chained
  through the 1/8 map only and the last stage has no decoder (official code;
  ``last_decoder=True`` adds one).
- Sec. 3.2: three encoder-decoder styles (``style=``): ``"fpn"`` (default; a
  1x1 conv, bilinear x2 upsampling, add and LN per level, no 3x3 convs),
  ``"unet"`` (identity skips, half of the n1/n2 blocks move to the decoder) and
  ``"hourglass"`` (as UNet, plus one CED block on each skip). ``"fpn_full"`` is
  the official ``CEDNet_next_tiny_fpn`` ablation (3x3 output convs and all three
  previous-stage levels fed to the next encoder).
- Sec. 3.3 and Fig. 3: CED and LR CED blocks (``cednet_blocks.py``), selectable
  token mixers for Table 5 (``token_mixer=``: ``"dwconv7"``, ``"bottleneck"``,
  ``"swin"``, ``"cswin"``; the last two in ``cednet_mixers.py``) and the LR
  switch of Table 8 (``lr_block=False``).
- Sec. 3.4: CEDNet-NeXt-T/S/B; per-stage block counts for Tables 4 and 6
  (``num_stages`` m and ``blocks`` as one [n1, n2, n3] or one per stage).
- Appendix A / Table 9: the ImageNet classifier (1x1 conv to 2048 + LN + GELU,
  global average pool, LayerNorm, linear) on the last stage's 1/32 map, with the
  official deep-supervision heads on every stage (``deep_supervision=True``,
  ``forward_train``).

The detection pyramids of the official mmdet wrappers (RetinaNet P3-P7, Mask
R-CNN P2-P6) are the neck ``msfusion.models.necks.cednet_pyramid``.

Numbers (parameters, mmcv-rule MACs, block allocation, drop-path schedule,
initialisation, checkpoint keys) come from the released CEDNet code
(zhanggang001/CEDNet@305d637: ``models/cednet.py``, ``ced-mmdet``, ``ced-mmseg``;
see docs/provenance.md); module names equal the official ones, so official
checkpoints load with prefix handling only (``checkpoint_filter_fn``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from msfusion.layers import check_image_batch
from msfusion.layers.features import select_features
from msfusion.models.backbones.cednet_blocks import (
    ACTS,
    NORMS,
    BottleneckBlock,
    CEDBlock,
    LRBottleneckBlock,
    LRCEDBlock,
    init_weights,
    make_act,
    make_norm2d,
)
from msfusion.models.backbones.cednet_mixers import CSwinCEDBlock, LRSwinCEDBlock, SwinCEDBlock
from msfusion.registry import PaperFigures, register_model

__all__ = [
    "CEDNet",
    "Encoder",
    "Decoder",
    "checkpoint_filter_fn",
    "STYLES",
    "TOKEN_MIXERS",
]

STYLES = ("fpn", "unet", "hourglass", "fpn_full")
TOKEN_MIXERS = ("dwconv7", "bottleneck", "swin", "cswin")
# The network downsamples by 32 and fuses levels by exact x2 upsampling, so inputs
# are padded inside to a multiple of 32; below 32 pixels the 1/32 map would be
# nothing but padding.
SIZE_DIVISOR = 32
MIN_INPUT_SIZE = 32

BlockFactory = Callable[..., nn.Module]


class _BlockFactory:
    """Builds the CED block of the chosen token mixer for a given scale.

    ``scale`` is 0 for the stem's stride-4 blocks and 1, 2, 3 for the encoder's
    1/8, 1/16, 1/32 levels; ``index`` is the block's position in its sequence
    (Swin shifts every second window); ``long_range`` asks for the LR block
    (honoured only when ``lr_block`` is on, Table 8).
    """

    def __init__(
        self,
        token_mixer: str,
        norm: str,
        act: str,
        layer_scale_init: float,
        mlp_ratio: float,
        lr_block: bool,
        dilation: int,
        window_size: int,
        swin_head_dim: int,
        cswin_heads: Sequence[int],
        cswin_split: Sequence[int],
        swin_roll_back_unshifted: bool = False,
    ) -> None:
        self.token_mixer = token_mixer
        self.swin_roll_back_unshifted = swin_roll_back_unshifted
        self.common = dict(norm=norm, act=act, layer_scale_init=layer_scale_init, mlp_ratio=mlp_ratio)
        self.lr_block = lr_block
        self.dilation = dilation
        self.window_size = window_size
        self.swin_head_dim = swin_head_dim
        self.cswin_heads = tuple(cswin_heads)
        self.cswin_split = tuple(cswin_split)

    def __call__(self, dim: int, drop_path: float, scale: int, index: int, long_range: bool = False) -> nn.Module:
        long_range = long_range and self.lr_block
        kw: dict[str, Any] = dict(self.common, drop_path=drop_path)
        if self.token_mixer == "dwconv7":
            return LRCEDBlock(dim, dilation=self.dilation, **kw) if long_range else CEDBlock(dim, **kw)
        if self.token_mixer == "bottleneck":
            return LRBottleneckBlock(dim, dilation=self.dilation, **kw) if long_range else BottleneckBlock(dim, **kw)
        if self.token_mixer == "swin":
            kw.update(
                num_heads=max(dim // self.swin_head_dim, 1),
                window_size=self.window_size,
                shift=index % 2 == 1,
                roll_back_unshifted=self.swin_roll_back_unshifted,
            )
            return LRSwinCEDBlock(dim, dilation=self.dilation, **kw) if long_range else SwinCEDBlock(dim, **kw)
        # cswin
        return CSwinCEDBlock(
            dim,
            num_heads=self.cswin_heads[scale],
            split_size=self.cswin_split[scale],
            long_range=long_range,
            **kw,
        )


def _downsample(in_chs: int, out_chs: int, norm: str) -> nn.Sequential:
    """2x2 stride-2 conv + norm, the only downsampling layer after the stem."""
    return nn.Sequential(nn.Conv2d(in_chs, out_chs, 2, stride=2), make_norm2d(norm, out_chs))


class Encoder(nn.Module):
    """The encoder of a cascade stage: blocks at 1/8, 1/16 and (LR blocks) 1/32.

    Args:
        dims: channels (C1, C2, C3) of the three levels.
        blocks: blocks per level (n1, n2, n3).
        dp_rates: drop-path rate of each block, level 0 first (n1 + n2 + n3 values).
        make_block: the block factory.
        norm: norm of the 2x2 downsampling layers.
        multi_scale_input: add the previous stage's 1/16 and 1/32 maps to the
            downsampled ones (the official ``EncoderFPN``, ``style="fpn_full"``);
            otherwise only the previous stage's 1/8 map is used.
    """

    def __init__(
        self,
        dims: Sequence[int],
        blocks: Sequence[int],
        dp_rates: Sequence[float],
        make_block: BlockFactory,
        norm: str = "ln",
        multi_scale_input: bool = False,
    ) -> None:
        super().__init__()
        offsets = [0, blocks[0], blocks[0] + blocks[1]]
        self.encoder = nn.ModuleList(
            nn.Sequential(
                *[
                    make_block(
                        dims[lvl],
                        dp_rates[offsets[lvl] + j],
                        scale=lvl + 1,
                        index=j,
                        long_range=lvl == 2,
                    )
                    for j in range(blocks[lvl])
                ]
            )
            for lvl in range(3)
        )
        self.encoder_downsample = nn.ModuleList(
            [_downsample(dims[0], dims[1], norm), _downsample(dims[1], dims[2], norm)]
        )
        self.multi_scale_input = multi_scale_input

    def forward(self, x: Tensor | Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """(B, C1, H/8, W/8) or the previous stage's (c3, c4, c5) -> (c3, c4, c5) at 1/8, 1/16, 1/32."""
        prev = None
        if not isinstance(x, Tensor):
            prev = x
            x = x[0]
        c3 = self.encoder[0](x)
        c4 = self.encoder_downsample[0](c3)
        if self.multi_scale_input and prev is not None:
            c4 = c4 + prev[1]
        c4 = self.encoder[1](c4)
        c5 = self.encoder_downsample[1](c4)
        if self.multi_scale_input and prev is not None:
            c5 = c5 + prev[2]
        c5 = self.encoder[2](c5)
        return c3, c4, c5


class Decoder(nn.Module):
    """The decoder of a cascade stage: top-down fusion 1/32 -> 1/16 -> 1/8 (Sec. 3.2, Fig. 2).

    Every style fuses ``c_l' = LN(skip(c_l) + Up2x(Conv1x1(c_{l+1}')))`` (the 1x1
    conv before the bilinear upsampling, as in the official code); then

    - ``"fpn"``: nothing more (no 3x3 convs, no blocks);
    - ``"unet"``: ``decoder`` blocks after each fusion, identity skips;
    - ``"hourglass"``: as UNet, plus one CED block (``lateral``) on each skip;
    - ``"fpn_full"``: a 3x3 conv + LN on each of the three outputs.

    c5 passes through (through its 3x3 conv for ``"fpn_full"``).

    Args:
        dims: channels (C1, C2, C3).
        style: one of ``STYLES``.
        blocks: decoder blocks after the 1/16 and the 1/8 fusion (UNet/Hourglass).
        dp_rates: their drop-path rates, 1/16 blocks first.
        make_block: the block factory.
        norm: norm of the fusions.
    """

    def __init__(
        self,
        dims: Sequence[int],
        style: str = "fpn",
        blocks: Sequence[int] = (0, 0),
        dp_rates: Sequence[float] = (),
        make_block: BlockFactory | None = None,
        norm: str = "ln",
    ) -> None:
        super().__init__()
        self.style = style
        self.decoder_upsample = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(dims[i + 1], dims[i], 1),
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            )
            for i in (1, 0)
        )
        self.decoder_norm = nn.ModuleList([make_norm2d(norm, dims[1]), make_norm2d(norm, dims[0])])
        if style in ("unet", "hourglass"):
            assert make_block is not None
            if style == "hourglass":
                # The official lateral blocks take no drop path.
                self.lateral = nn.ModuleList(
                    [
                        make_block(dims[1], 0.0, scale=2, index=0),
                        make_block(dims[0], 0.0, scale=1, index=0),
                    ]
                )
            offsets = (0, blocks[0])
            self.decoder = nn.ModuleList(
                nn.Sequential(
                    *[make_block(dims[lvl], dp_rates[offsets[i] + j], scale=lvl + 1, index=j) for j in range(blocks[i])]
                )
                for i, lvl in enumerate((1, 0))
            )
        elif style == "fpn_full":
            self.decoder_conv = nn.ModuleList(
                nn.Sequential(nn.Conv2d(d, d, 3, padding=1), make_norm2d(norm, d)) for d in dims
            )

    def forward(self, x: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """(c3, c4, c5) at 1/8, 1/16, 1/32 -> fused (c3', c4', c5), same shapes."""
        c3, c4, c5 = x
        if self.style == "hourglass":
            c4, c3 = self.lateral[0](c4), self.lateral[1](c3)
        c4 = self.decoder_norm[0](c4 + self.decoder_upsample[0](c5))
        if self.style in ("unet", "hourglass"):
            c4 = self.decoder[0](c4)
        c3 = self.decoder_norm[1](c3 + self.decoder_upsample[1](c4))
        if self.style in ("unet", "hourglass"):
            c3 = self.decoder[1](c3)
        if self.style == "fpn_full":
            c3, c4, c5 = (conv(c) for conv, c in zip(self.decoder_conv, (c3, c4, c5), strict=True))
        return c3, c4, c5


class CEDNet(nn.Module):
    """CEDNet classifier / backbone.

    Two modes:

    - classifier (default): ``forward(x)`` (B, 3, H, W) -> (B, num_classes)
      logits of the last stage's head. With ``deep_supervision=True`` there is
      one head per stage (the official ImageNet recipe averages their losses);
      ``forward_train(x)`` returns the m per-stage logits, ``forward`` still the
      last head's.
    - ``features_only=True``: ``forward(x)`` -> list of maps selected by
      ``out_indices`` from ``[c2, c3, c4, c5]``: c2 is the stem output (stride 4,
      C0), c3..c5 the last stage's outputs (strides 8, 16, 32), strictly fine
      to coarse; ``feature_info`` describes the selection. With
      ``extra_stage_features=True`` the fused 1/8 map of every earlier stage
      (latest first; the official mmseg backbone appends them to its list,
      and the first feeds its auxiliary FCN head) is exposed separately:
      ``forward_with_extras(x)`` returns ``(features, extras)`` and
      ``extra_feature_info`` describes the extras.

    The detection pyramids of the official detectors (P3-P7, P2-P6) are the
    neck ``CEDNetPyramid`` (``neck="cednet_pyramid"``) on the features.

    Any input size works: inputs are padded (bottom/right, zeros) to a multiple
    of 32 and feature maps are cropped back to ``ceil(size / stride)``. Sides
    below 32 pixels are rejected.

    Args:
        in_chans: input channels.
        num_classes: classifier outputs (0: the head returns its 2048-d features).
        num_stages: m, the number of cascade stages.
        p2_dim: C0, channels of the stride-4 stem blocks.
        p2_blocks: n0, blocks in the stem.
        dims: (C1, C2, C3) of the 1/8, 1/16, 1/32 levels.
        blocks: [n1, n2, n3] for every stage, or one triple per stage (Tables 4, 6).
        style: encoder-decoder style, one of ``STYLES`` (Sec. 3.2).
        token_mixer: one of ``TOKEN_MIXERS`` (Table 5).
        lr_block: use LR CED blocks at 1/32 (Table 8); off: plain CED blocks.
        dilation: dilation r of the LR blocks' depthwise conv (3).
        last_decoder: give the last stage a decoder too (official default: no).
        norm: ``"ln"`` (channels-first LayerNorm) or ``"bn"`` (R50 variant).
        act: ``"gelu"`` or ``"relu"`` (R50 variant).
        layer_scale_init: initial layer scale of the CED blocks (official 1e-6).
        mlp_ratio: MLP width of the blocks.
        drop_path_rate: stochastic depth, linear over n0 + sum of all stage blocks.
        stem_dim: channels of the first stem conv (official: 32 always).
        window_size: Swin window.
        swin_head_dim: Swin channels per head (official: heads = C // 32).
        swin_roll_back_unshifted: reproduce the official ImageNet code's
            roll-back of windows it never shifted (see ``SwinCEDBlock``); needed
            only for weights trained with the official code.
        cswin_heads: CSwin heads at the stem, 1/8, 1/16, 1/32 (official (2, 4, 8, 10)).
        cswin_split: CSwin stripe widths at the same levels (official (1, 2, 7, 7)).
        head_hidden_dim: width of the classifier's 1x1 conv (2048).
        head_init_scale: multiplies the initial classifier weights and biases.
        deep_supervision: build a head on every stage (training recipe).
        features_only: return feature maps instead of logits.
        out_indices: which feature maps to return (all by default).
        extra_stage_features: append the earlier stages' fused 1/8 maps to the
            feature list (official mmseg layout, for an auxiliary head).
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        num_stages: int = 3,
        p2_dim: int = 96,
        p2_blocks: int = 3,
        dims: Sequence[int] = (192, 352, 512),
        blocks: Sequence[int] | Sequence[Sequence[int]] = (2, 4, 2),
        style: str = "fpn",
        token_mixer: str = "dwconv7",
        lr_block: bool = True,
        dilation: int = 3,
        last_decoder: bool = False,
        norm: str = "ln",
        act: str = "gelu",
        layer_scale_init: float = 1e-6,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        stem_dim: int = 32,
        window_size: int = 7,
        swin_head_dim: int = 32,
        cswin_heads: Sequence[int] = (2, 4, 8, 10),
        cswin_split: Sequence[int] = (1, 2, 7, 7),
        swin_roll_back_unshifted: bool = False,
        head_hidden_dim: int = 2048,
        head_init_scale: float = 1.0,
        deep_supervision: bool = False,
        features_only: bool = False,
        out_indices: Sequence[int] | None = None,
        extra_stage_features: bool = False,
    ) -> None:
        super().__init__()
        self.grad_checkpointing = False
        _check_choice("style", style, STYLES)
        _check_choice("token_mixer", token_mixer, TOKEN_MIXERS)
        _check_choice("norm", norm, NORMS)
        _check_choice("act", act, ACTS)
        if len(dims) != 3 or any(int(d) <= 0 for d in dims):
            raise ValueError(f"dims must be three positive channel counts (C1, C2, C3), got {tuple(dims)}")
        if num_stages < 1:
            raise ValueError(f"num_stages must be at least 1, got {num_stages}")
        if token_mixer == "cswin" and (len(cswin_heads) != 4 or len(cswin_split) != 4):
            raise ValueError("cswin_heads and cswin_split need 4 values: stem, 1/8, 1/16, 1/32")
        stage_blocks = _stage_blocks(blocks, num_stages)

        self.in_chans = in_chans
        self.num_stages = num_stages
        self.p2_dim = p2_dim
        self.dims = tuple(int(d) for d in dims)
        self.style = style
        self.token_mixer = token_mixer
        self.norm_type = norm
        make_block = _BlockFactory(
            token_mixer,
            norm,
            act,
            layer_scale_init,
            mlp_ratio,
            lr_block,
            dilation,
            window_size,
            swin_head_dim,
            cswin_heads,
            cswin_split,
            swin_roll_back_unshifted,
        )

        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, stem_dim, 3, stride=2, padding=1),
            make_norm2d(norm, stem_dim),
            make_act(act),
            nn.Conv2d(stem_dim, p2_dim, 3, stride=2, padding=1),
            make_norm2d(norm, p2_dim),
            make_act(act),
        )

        total = p2_blocks + sum(sum(b) for b in stage_blocks)
        dpr = [drop_path_rate * i / (total - 1) if total > 1 else 0.0 for i in range(total)]
        self.stages = nn.ModuleList()
        self.stages.append(
            nn.Sequential(
                *[make_block(p2_dim, dpr[j], scale=0, index=j) for j in range(p2_blocks)],
                _downsample(p2_dim, self.dims[0], norm),
            )
        )
        cursor = p2_blocks
        for s, (n1, n2, n3) in enumerate(stage_blocks):
            if style in ("unet", "hourglass"):
                enc, dec = (n1 // 2, n2 // 2, n3), (n2 - n2 // 2, n1 - n1 // 2)
            else:
                enc, dec = (n1, n2, n3), (0, 0)
            rates = dpr[cursor : cursor + n1 + n2 + n3]
            cursor += n1 + n2 + n3
            stage = [Encoder(self.dims, enc, rates, make_block, norm, multi_scale_input=style == "fpn_full")]
            if s < num_stages - 1 or last_decoder:
                stage.append(Decoder(self.dims, style, dec, rates[sum(enc) :], make_block, norm))
            self.stages.append(nn.Sequential(*stage))

        c0, c1, c2, c3 = p2_dim, *self.dims
        self.backbone_info = [
            dict(chs=c0, reduction=4),
            dict(chs=c1, reduction=8),
            dict(chs=c2, reduction=16),
            dict(chs=c3, reduction=32),
        ]
        for i, info in enumerate(self.backbone_info):
            info["module"] = "stages.0" if i == 0 else f"stages.{num_stages}"
        # Repeated strides would break the finest-first contract: the extras stand apart.
        self.extra_feature_info = (
            [dict(chs=c1, reduction=8, module=f"stages.{s}") for s in range(num_stages - 1, 0, -1)]
            if extra_stage_features
            else []
        )
        self.extra_stage_features = extra_stage_features

        self.features_only = features_only
        self.out_indices, self.feature_info = select_features(
            self.backbone_info, out_indices if features_only else None
        )
        chs = [f["chs"] for f in self.feature_info]
        # torchvision detectors read one ``out_channels``; with mixed widths it is a list.
        self.out_channels: int | list[int] = chs[0] if len(set(chs)) == 1 else chs

        self.num_classes = 0 if self.features_only else num_classes
        self.num_features = head_hidden_dim
        self.deep_supervision = deep_supervision and not self.features_only
        if not self.features_only:
            head_stages = range(num_stages) if deep_supervision else [num_stages - 1]
            # ModuleDicts keyed by stage index keep the official key names
            # (``final_layers.2.*`` for the last head of a 3-stage model).
            self.final_layers = nn.ModuleDict(
                {
                    str(k): nn.Sequential(
                        nn.Conv2d(self.dims[-1], head_hidden_dim, 1),
                        make_norm2d(norm, head_hidden_dim),
                        make_act(act),
                    )
                    for k in head_stages
                }
            )
            self.norms = nn.ModuleDict({str(k): nn.LayerNorm(head_hidden_dim, eps=1e-6) for k in head_stages})
            self.heads = nn.ModuleDict(
                {
                    str(k): nn.Linear(head_hidden_dim, num_classes) if num_classes > 0 else nn.Identity()
                    for k in head_stages
                }
            )

        self.apply(init_weights)
        if not self.features_only:
            with torch.no_grad():
                for head in self.heads.values():
                    if isinstance(head, nn.Linear):
                        head.weight.mul_(head_init_scale)
                        head.bias.mul_(head_init_scale)

    # ------------------------------------------------------------------ forward
    def _check_and_pad(self, x: Tensor) -> tuple[Tensor, tuple[int, int]]:
        check_image_batch(x, self.in_chans)
        h, w = x.shape[-2:]
        if not torch.jit.is_tracing() and (h < MIN_INPUT_SIZE or w < MIN_INPUT_SIZE):
            raise ValueError(
                f"CEDNet needs inputs of at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} pixels (one pixel at "
                f"stride 32), got {h}x{w}. Resize or pad the images to at least {MIN_INPUT_SIZE} per side."
            )
        # An unconditional pad with integer shape arithmetic stays a traced expression, so an
        # exported graph (ONNX with dynamic H and W) pads correctly at every size.
        x = F.pad(
            x,
            (0, (SIZE_DIVISOR - w % SIZE_DIVISOR) % SIZE_DIVISOR, 0, (SIZE_DIVISOR - h % SIZE_DIVISOR) % SIZE_DIVISOR),
        )
        return x, (h, w)

    def _forward_cascade(self, x: Tensor) -> tuple[Tensor, list[tuple[Tensor, Tensor, Tensor]]]:
        """Padded (B, 3, H, W) -> (c2, [(c3, c4, c5) of every cascade stage])."""
        x = self.stem(x)
        c2 = self.stages[0][:-1](x)
        x = self.stages[0][-1](c2)
        outs = []
        for stage in self.stages[1:]:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(stage, x, use_reentrant=False)
            else:
                x = stage(x)
            outs.append(x)
        return c2, outs

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each cascade stage's activations in the backward pass instead of storing them.

        timm's switch; trades about one extra forward pass of the cascade for
        memory (``benchmarks/bench_grad_checkpointing.py`` measures it).
        """
        self.grad_checkpointing = bool(enable)

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """(B, 3, H, W) -> all backbone outputs ``[c2, c3, c4, c5]``.

        Shapes: c2 (B, C0, H/4, W/4); c3, c4, c5 (B, C1..C3, H/s, W/s) for
        strides s = 8, 16, 32. Sizes are ``ceil(size / s)``.
        """
        return self._features_and_extras(x)[0]

    def _features_and_extras(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        x, size = self._check_and_pad(x)
        c2, outs = self._forward_cascade(x)
        feats = [_crop(f, size, info["reduction"]) for f, info in zip([c2, *outs[-1]], self.backbone_info, strict=True)]
        extras = [_crop(o[0], size, 8) for o in reversed(outs[:-1])] if self.extra_stage_features else []
        return feats, extras

    def forward_with_extras(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """The selected features and the earlier stages' fused 1/8 maps (B, C1, H/8, W/8), latest first."""
        feats, extras = self._features_and_extras(x)
        return [feats[i] for i in self.out_indices], extras

    def forward_head(self, x: Tensor, stage: int = -1) -> Tensor:
        """(B, C3, h, w) 1/32 map -> (B, num_classes) with the head of ``stage`` (default: last)."""
        key = str(stage % self.num_stages)
        x = self.final_layers[key](x).mean((-2, -1))
        return self.heads[key](self.norms[key](x))

    def forward(self, x: Tensor) -> Tensor | list[Tensor]:
        """Logits (B, num_classes), or the selected feature maps (see the class docstring)."""
        if self.features_only:
            feats = self.forward_features(x)
            return [feats[i] for i in self.out_indices]
        x, _ = self._check_and_pad(x)
        _, outs = self._forward_cascade(x)
        return self.forward_head(outs[-1][-1])

    def forward_train(self, x: Tensor) -> list[Tensor]:
        """Deep supervision: (B, 3, H, W) -> m logits (B, num_classes), stage 1 first.

        Each stage's 1/32 output goes through its own head (official ImageNet
        recipe; the loss is the mean of the m cross-entropies). Without
        ``deep_supervision`` the list holds only the last head's logits. A
        feature model returns its ``forward`` output.
        """
        if self.features_only:
            return self.forward(x)
        x, _ = self._check_and_pad(x)
        _, outs = self._forward_cascade(x)
        stages = range(self.num_stages) if self.deep_supervision else [self.num_stages - 1]
        return [self.forward_head(outs[s][-1], s) for s in stages]

    def checkpoint_filter_fn(self, state_dict: dict[str, Any]) -> dict[str, Tensor]:
        """Map an official checkpoint (ImageNet, mmdet or mmseg layout) to this model's keys."""
        return checkpoint_filter_fn(state_dict, self)


def _crop(x: Tensor, size: tuple[int, int], reduction: int) -> Tensor:
    # Ceil division in integers (not math.ceil on floats) so that tracing keeps it symbolic; on non-negative
    # numbers, since ONNX's integer Div truncates and -(-n // r) would come out as floor.
    return x[..., : (size[0] + reduction - 1) // reduction, : (size[1] + reduction - 1) // reduction]


def _check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; CEDNet allows {', '.join(repr(a) for a in allowed)}")


def _stage_blocks(blocks: Any, num_stages: int) -> list[tuple[int, int, int]]:
    """Normalise ``blocks`` to one (n1, n2, n3) per stage; ``ValueError`` on a wrong shape."""
    hint = (
        "blocks must be [n1, n2, n3] (the same for every stage) or a list of num_stages such triples, "
        "e.g. blocks=[2, 4, 2] or blocks=[[3, 6, 3], [3, 6, 3]] with num_stages=2"
    )
    try:
        items = list(blocks)
    except TypeError:
        raise ValueError(f"{hint}; got {blocks!r}") from None
    if len(items) == 3 and all(isinstance(b, int) for b in items):
        triples = [tuple(items)] * num_stages
    elif all(not isinstance(b, int) for b in items):
        triples = [tuple(b) for b in items]
        if len(triples) != num_stages:
            raise ValueError(f"{hint}; got {len(triples)} triples for num_stages={num_stages}")
    else:
        raise ValueError(f"{hint}; got {blocks!r}")
    for t in triples:
        if len(t) != 3 or not all(isinstance(n, int) and n >= 0 for n in t):
            raise ValueError(f"{hint}; got {blocks!r}")
    return triples  # type: ignore[return-value]


def checkpoint_filter_fn(state_dict: dict[str, Any], model: CEDNet | None = None) -> dict[str, Tensor]:
    """Map an official CEDNet checkpoint to our keys.

    Accepts the ImageNet layout (``{'model': ...}``, keys ``stem.*``,
    ``stages.{s}.*``, ``final_layers.{k}.*``), the mmdet layout (``backbone.``
    prefix, plus ``reduce_convs`` / ``add_blocks`` / ``reduce_c2`` / ``merge_c2``)
    and the mmseg UperNet layout (``backbone.`` prefix), see
    ``msfusion.convert.cednet``. With a ``model``, keys the model has no place
    for by design are dropped: per-stage heads it did not build, detector or
    segmentor heads, and the pyramid layers (the neck ``CEDNetPyramid``
    loads those). Every other key
    is kept, so a real mismatch is still reported by ``load_state_dict``.
    """
    from msfusion.convert.cednet import from_official

    out = from_official(state_dict)
    if model is None:
        return out
    own = model.state_dict()
    optional = (
        "final_layers.",
        "norms.",
        "heads.",
        "reduce_convs.",
        "add_blocks.",
        "reduce_c2.",
        "merge_c2.",
    )
    return {k: v for k, v in out.items() if k in own or not k.startswith(optional)}


def _create_cednet(variant: str, cfg: dict[str, Any], **kwargs: Any) -> CEDNet:
    """``CEDNet(**cfg)`` with the user's ``kwargs`` on top."""
    if "pyramid" in kwargs or "pyramid_chs" in kwargs:
        raise ValueError(
            f"{variant}: the detection pyramid (pyramid=, pyramid_chs=) is no longer built by the backbone; it is "
            "the neck 'cednet_pyramid': build_detector(..., backbone=name, neck='cednet_pyramid', "
            "neck_kwargs=dict(levels='p3p7', out_chs=256)) (build_detector still reads backbone_kwargs="
            "dict(pyramid=...) with neck=None), or CEDNetPyramid(backbone.feature_info, 'p3p7') from "
            "msfusion.models.necks on create_model(name, features_only=True)"
        )
    return CEDNet(**{**cfg, **kwargs})


def _cfg(
    chs: Sequence[int], blocks: Sequence[int], num_stages: int, drop_path_rate: float = 0.0, **extra: Any
) -> dict[str, Any]:
    """A variant in the paper's notation (Sec. 3.4): C = (C0, C1, C2, C3), B = (n0, n1, n2, n3), m stages.

    C0 and n0 are the stem's stride-4 width and blocks; C1..C3 and n1..n3 the
    1/8, 1/16, 1/32 levels of every cascade stage.
    """
    return dict(
        num_stages=num_stages,
        p2_dim=chs[0],
        dims=tuple(chs[1:]),
        p2_blocks=blocks[0],
        blocks=tuple(blocks[1:]),
        drop_path_rate=drop_path_rate,
        **extra,
    )


# Variants: Sec. 3.4 (C, B, m) and the models registered in the released code
# (models/cednet.py): drop-path rates are the official ImageNet ones.
_NEXT_T = _cfg((96, 192, 352, 512), (3, 2, 4, 2), 3, 0.1)
_NEXT_S = _cfg((96, 192, 352, 512), (3, 2, 7, 2), 4, 0.4)
_NEXT_B = _cfg((128, 256, 448, 704), (3, 2, 7, 2), 4, 0.5)
# Table 1 / Table 9 style ablations of NeXt-T use their own widths in the official
# code so that the three styles have about the same size.
_NEXT_T_STYLE_DIMS = {
    "fpn": (192, 352, 512),
    "unet": (192, 352, 512),
    "hourglass": (160, 320, 512),
    "fpn_full": (160, 304, 448),
}


def _paper(params_m: float, gmacs: float, table9: str) -> PaperFigures:
    # The figures the released code gives; the paper's own Table 9 numbers travel in ``extra``.
    printed = [float(v) for v in re.findall(r"([\d.]+)[MG]", table9)]
    return PaperFigures(
        params_m=params_m,
        gmacs=gmacs,
        input_size=(3, 224, 224),
        source="released CEDNet code (mmcv counter at 224x224, inference: last head only); " + table9,
        macs_rules="mmcv",
        notes="mmcv counting rules: GELU, the custom LayerNorm and matmuls are not counted",
        extra=dict(printed_params_m=printed[0], printed_gmacs=printed[1]),
    )


@register_model(kind="classifier", paper=_paper(33.8, 5.70, "paper Table 9: 34M, 5.7G"))
def cednet_next_t(**kwargs: Any) -> CEDNet:
    """CEDNet-NeXt-T: C=(96, 192, 352, 512), B=(3, 2, 4, 2), m=3 (Sec. 3.4).

    ``style="unet" | "hourglass" | "fpn_full"`` picks the official ablation widths
    of that style unless ``dims`` is given (Table 1, Table 9).
    """
    cfg = dict(_NEXT_T, dims=_NEXT_T_STYLE_DIMS.get(kwargs.get("style", "fpn"), _NEXT_T["dims"]))
    return _create_cednet("cednet_next_t", cfg, **kwargs)


@register_model(kind="classifier", paper=_paper(56.2, 9.66, "paper Table 9: 55M, 9.8G"))
def cednet_next_s(**kwargs: Any) -> CEDNet:
    """CEDNet-NeXt-S: C=(96, 192, 352, 512), B=(3, 2, 7, 2), m=4 (Sec. 3.4)."""
    return _create_cednet("cednet_next_s", _NEXT_S, **kwargs)


@register_model(kind="classifier", paper=_paper(94.6, 16.20, "paper Table 9: 95M, 16.2G"))
def cednet_next_b(**kwargs: Any) -> CEDNet:
    """CEDNet-NeXt-B: C=(128, 256, 448, 704), B=(3, 2, 7, 2), m=4 (Sec. 3.4)."""
    return _create_cednet("cednet_next_b", _NEXT_B, **kwargs)


def _table5(params_m: float) -> PaperFigures:
    return PaperFigures(
        source="paper Table 5 (token mixers; RetinaNet detector params, not the classifier)",
        macs_rules="mmcv",
        notes=f"Table 5 lists {params_m}M for the whole RetinaNet detector",
        extra=dict(table5_detector_params_m=params_m),
    )


@register_model(kind="classifier", paper=_table5(39))
def cednet_r50_t(**kwargs: Any) -> CEDNet:
    """CEDNet-R50-T (Table 5): ResNet bottleneck mixer, BN, ReLU (official ``CEDNet_res50``)."""
    cfg = _cfg((64, 128, 256, 384), (3, 1, 4, 2), 3, token_mixer="bottleneck", norm="bn", act="relu")
    return _create_cednet("cednet_r50_t", cfg, **kwargs)


@register_model(kind="classifier", paper=_table5(37))
def cednet_swin_t(**kwargs: Any) -> CEDNet:
    """CEDNet-Swin-T (Table 5): Swin window attention, window 7, C/32 heads (official ``CEDNet_swin_tiny``)."""
    cfg = _cfg((96, 160, 288, 416), (3, 2, 4, 2), 3, 0.1, token_mixer="swin")
    return _create_cednet("cednet_swin_t", cfg, **kwargs)


@register_model(kind="classifier", paper=_table5(33))
def cednet_cswin_t(**kwargs: Any) -> CEDNet:
    """CEDNet-CSwin-T (Table 5): cross-shaped window attention (official ced-mmdet CSwin config)."""
    mixer = dict(token_mixer="cswin", cswin_heads=(2, 4, 8, 10), cswin_split=(1, 2, 7, 7))
    return _create_cednet("cednet_cswin_t", _cfg((64, 128, 256, 320), (3, 2, 8, 1), 3, 0.2, **mixer), **kwargs)


# Tiny variants for fast tests (not paper variants).
_TEST = _cfg((8, 16, 24, 32), (1, 1, 1, 1), 2, head_hidden_dim=32, num_classes=10)


@register_model(kind="classifier")
def test_cednet_next(**kwargs: Any) -> CEDNet:
    """A tiny CEDNet-NeXt for fast tests."""
    return _create_cednet("test_cednet_next", _TEST, **kwargs)


@register_model(kind="classifier")
def test_cednet_r50(**kwargs: Any) -> CEDNet:
    """A tiny CEDNet-R50 for fast tests."""
    return _create_cednet("test_cednet_r50", dict(_TEST, token_mixer="bottleneck", norm="bn", act="relu"), **kwargs)


@register_model(kind="classifier")
def test_cednet_swin(**kwargs: Any) -> CEDNet:
    """A tiny CEDNet-Swin for fast tests."""
    cfg = dict(_TEST, token_mixer="swin", swin_head_dim=8, window_size=4, blocks=(2, 2, 1))
    return _create_cednet("test_cednet_swin", cfg, **kwargs)


@register_model(kind="classifier")
def test_cednet_cswin(**kwargs: Any) -> CEDNet:
    """A tiny CEDNet-CSwin for fast tests."""
    cfg = dict(_TEST, token_mixer="cswin", cswin_heads=(2, 2, 2, 2), cswin_split=(1, 2, 2, 2))
    return _create_cednet("test_cednet_cswin", cfg, **kwargs)
