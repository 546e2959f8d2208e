"""SegNeXt segmentors: MSCAN encoder + LightHamHead decoder.

Paper: "SegNeXt: Rethinking Convolutional Attention Design for Semantic
Segmentation", Guo et al., NeurIPS 2022 (arXiv 2209.08575).

Variants T/S/B/L follow Table 2 (channels, blocks, decoder dimension) and the
official configs: NMF rank 16 for T/S and 64 for B/L, drop path
0.1/0.1/0.1/0.3. Published figures: Table 9 (params, GFLOPs at
512x512, torchprofile multiply-adds including the final upsample).

Ablations, all keyword arguments of every variant:
- decoder structure (Table 7 / Fig. 3): ``decoder="ham"`` (c, default),
  ``"mlp"`` (a, SegFormer all-MLP), ``in_strides=(32,)`` (b, heavy head on
  the last stage), ``in_strides=(4, 8, 16, 32)`` ("w/ stage 1");
  ``decoder="msca"`` is the MSCA head of the appendix (Table 2 there);
- global context in the decoder (Table 5): ``context="ham"|"cc"|"ema"|"nl"``;
- encoder (Tables 6 and 8): ``branch_kernels``, ``channel_mixer``,
  ``attention``, ``attention_type="lka"``.

Every variant is a preset of the ``build_segmentor`` composition, so an add-on
or neck can be added: ``segnext_t(addon="mscsa")``, ``segnext_t(neck="fpn",
decoder="mlp")``; the head is then built on the last producer's features.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from torch import Tensor, nn

from msfusion.models.backbones.mscan import MSCAN, mscan_config
from msfusion.models.backbones.mscan import checkpoint_filter_fn as mscan_filter
from msfusion.models.chain import build_chain, build_part
from msfusion.models.meta_arch.segmentor import Segmentor
from msfusion.registry import PaperFigures, register_model

__all__ = ["SegNeXt"]

_ENCODER_KEYS = (
    "attention_type",
    "branch_kernels",
    "channel_mixer",
    "attention",
    "drop_path_rate",
    "drop_rate",
    "in_chans",
    "layer_scale_init",
    "embed_dims",
    "depths",
    "mlp_ratios",
)


class SegNeXt(Segmentor):
    """MSCAN + a decode head (LightHamHead by default). ``forward`` -> (B, K, H, W).

    Args:
        encoder: MSCAN keyword arguments (see ``MSCAN``).
        num_classes: K (150 for ADE20K).
        decoder: head name: "ham", "mlp", "msca" or any registered head.
        in_strides: strides fed to the head (default 8, 16, 32: stages 2-4).
        channels: head channels (Table 2 "decoder dimension").
        ham_channels: squeeze/Hamburger channels (equal to ``channels`` in the configs).
        context: the head's global-context module (Table 5).
        ham_rank: NMF rank R.
        ham_random_eval: official per-call random NMF bases in eval mode too.
        head_kwargs: any further head arguments.
        addon, neck: optional registered names (or modules) inserted between
            the encoder and the head, with ``addon_kwargs`` / ``neck_kwargs``.
    """

    def __init__(
        self,
        encoder: dict[str, Any],
        num_classes: int = 150,
        decoder: str = "ham",
        in_strides: Sequence[int] | None = None,
        channels: int = 256,
        ham_channels: int | None = None,
        context: str = "ham",
        ham_rank: int = 64,
        ham_random_eval: bool = False,
        dropout: float = 0.1,
        size_divisor: int = 32,
        head_kwargs: dict[str, Any] | None = None,
        addon: str | nn.Module | None = None,
        neck: str | nn.Module | None = None,
        addon_kwargs: dict[str, Any] | None = None,
        neck_kwargs: dict[str, Any] | None = None,
    ) -> None:
        backbone, addon, neck, info = build_chain(
            MSCAN(**encoder, num_classes=0, features_only=True),
            addon,
            neck,
            addon_kwargs=addon_kwargs,
            neck_kwargs=neck_kwargs,
        )
        kwargs: dict[str, Any] = dict(
            in_strides=tuple(in_strides or (8, 16, 32)),
            channels=channels,
            dropout=dropout,
        )
        if decoder == "ham":
            kwargs.update(
                ham_channels=ham_channels or channels,
                context=context,
                ham_kwargs=dict(rank=ham_rank, random_eval=ham_random_eval),
            )
        elif context != "ham" or ham_random_eval:
            raise ValueError(f"context= and ham_random_eval= apply to decoder='ham' only, not {decoder!r}")
        head = build_part(decoder, "head", info, {**kwargs, **(head_kwargs or {})}, num_classes=num_classes)
        super().__init__(
            backbone, head, num_classes, addon=addon, neck=neck, size_divisor=size_divisor, in_chans=backbone.in_chans
        )

    def checkpoint_filter_fn(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Official segmentor checkpoints (either layout), or an MSCAN ImageNet checkpoint."""
        from msfusion.convert.segnext import from_official

        state_dict = from_official(state_dict)
        if not any(k.startswith(("backbone.", "decode_head.")) for k in state_dict):
            # An encoder-only (ImageNet) checkpoint: it goes into the backbone.
            return {f"backbone.{k}": v for k, v in mscan_filter(state_dict).items() if not k.startswith("head.")}
        return state_dict


def _create_segnext(size: str, ham_rank: int, channels: int, **kwargs: Any) -> SegNeXt:
    encoder = mscan_config(size)
    for key in _ENCODER_KEYS:
        if key in kwargs:
            encoder[key] = kwargs.pop(key)
    kwargs.setdefault("ham_rank", ham_rank)
    kwargs.setdefault("channels", channels)
    return SegNeXt(encoder, **kwargs)


# ade20k_figures(params_m, gmacs): SegNeXt's ADE20K figures at 512 x 512 (the ablation tables override
# ``source``, and ``notes`` where they differ).
ade20k_figures = partial(
    PaperFigures,
    input_size=(3, 512, 512),
    source="SegNeXt Table 2 / Table 9 (ADE20K, 150 classes)",
    notes="torchprofile multiply-adds incl. the final upsample to 512x512",
)


@register_model(kind="segmentor", backbone="mscan_t", paper=ade20k_figures(4.3, 6.6))
def segnext_t(**kwargs: Any) -> SegNeXt:
    """SegNeXt-T: MSCAN-T + Ham head, 256 channels, NMF rank 16."""
    return _create_segnext("t", ham_rank=16, channels=256, **kwargs)


@register_model(kind="segmentor", backbone="mscan_s", paper=ade20k_figures(13.9, 15.9))
def segnext_s(**kwargs: Any) -> SegNeXt:
    """SegNeXt-S: MSCAN-S + Ham head, 256 channels, NMF rank 16."""
    return _create_segnext("s", ham_rank=16, channels=256, **kwargs)


@register_model(kind="segmentor", backbone="mscan_b", paper=ade20k_figures(27.6, 34.9))
def segnext_b(**kwargs: Any) -> SegNeXt:
    """SegNeXt-B: MSCAN-B + Ham head, 512 channels, NMF rank 64."""
    return _create_segnext("b", ham_rank=64, channels=512, **kwargs)


@register_model(kind="segmentor", backbone="mscan_l", paper=ade20k_figures(48.9, 70.0))
def segnext_l(**kwargs: Any) -> SegNeXt:
    """SegNeXt-L: MSCAN-L + Ham head, 1024 channels, NMF rank 64."""
    return _create_segnext("l", ham_rank=64, channels=1024, **kwargs)


@register_model(kind="segmentor", backbone="test_mscan")
def test_segnext(**kwargs: Any) -> SegNeXt:
    """A tiny SegNeXt for fast tests (not a paper variant)."""
    encoder = dict(embed_dims=(8, 16, 24, 32), depths=(1, 1, 1, 1), mlp_ratios=(2, 2, 2, 2))
    for key in _ENCODER_KEYS:
        if key in kwargs:
            encoder[key] = kwargs.pop(key)
    kwargs.setdefault("num_classes", 5)
    kwargs.setdefault("channels", 32)
    kwargs.setdefault("ham_rank", 4)
    return SegNeXt(encoder, **kwargs)
