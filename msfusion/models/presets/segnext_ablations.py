"""SegNeXt's ablation variants, registered with the figures their tables publish.

Paper: "SegNeXt: Rethinking Convolutional Attention Design for Semantic
Segmentation", Guo et al., NeurIPS 2022 (arXiv 2209.08575). Every variant is a
base entrypoint (``segnext_t|s|b|l``) with the keyword arguments of one table
row; any of them can still be overridden (``create_model(name, **kwargs)``).

- Table 5 (global context in the decoder, SegNeXt-B, ADE20K): ``segnext_b_cc``,
  ``segnext_b_ema``, ``segnext_b_nl`` (modules in ``msfusion.models.heads``).
- Table 6 (MSCA design, SegNeXt-T, ADE20K): ``segnext_t_branch{7,11,21}``,
  ``segnext_t_no_conv1x1``, ``segnext_t_no_attention``. The table gives mIoU
  only, so these carry no figures.
- Table 7 (decoder structure, SegNeXt-T, ADE20K): ``segnext_t_mlp`` (Fig. 3a,
  SegFormer's head on all four stages), ``segnext_t_lastonly`` (Fig. 3b, the
  head on stage 4 only), ``segnext_t_stage1`` (Fig. 3c with stage 1 added).
- Table 8 (VAN's large-kernel attention instead of MSCA, ADE20K):
  ``segnext_t_lka``, ``segnext_s_lka``.
- Appendix Table 2 (MSCA head, COCO-Stuff, 171 classes):
  ``segnext_{t,s,b,l}_mscahead``.

All figures are at 512x512; "GFLOPs" in the paper are torchprofile
multiply-adds including the final upsample (``msfusion.count_macs``).
Measured against published (params M / GMACs): Table 5 CC 27.97/35.62 vs
27.8/35.7, EMA 27.64/33.27 vs 27.4/32.3, NL 27.64/40.92 vs 27.6/40.9; Table 7
(a) 4.34/10.06 vs 4.4/10.0, (b) 4.21/4.91 vs 4.2/4.9, w/ stage 1 4.27/12.06 vs
4.3/12.1; Table 8 T 4.21/6.50 vs 4.2/6.5, S 13.84/15.71 vs 13.8/15.8; appendix
Table 2 T 4.36/6.71 vs 4.4/6.7, S 14.03/15.97 vs 14.0/15.9, B 27.97/33.68 vs
28.0/33.6, L 50.11/69.91 vs 50.1/69.8.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from msfusion.models.presets.segnext import SegNeXt, ade20k_figures, segnext_b, segnext_l, segnext_s, segnext_t
from msfusion.registry import register_model

__all__: list[str] = []


# Each table's figures, as ``ade20k_figures(params_m, gmacs)`` with the table named.
_table5 = partial(ade20k_figures, source="SegNeXt Table 5 (SegNeXt-B decoder context, ADE20K, 150 classes)")
_table6 = partial(
    ade20k_figures, source="SegNeXt Table 6 (MSCA design, SegNeXt-T, ADE20K)", notes="the table gives mIoU only"
)
_table7 = partial(ade20k_figures, source="SegNeXt Table 7 (decoder structure, SegNeXt-T, ADE20K, 150 classes)")
_table8 = partial(ade20k_figures, source="SegNeXt Table 8 (w/o MSCA: VAN's LKA, ADE20K, 150 classes)")
_appendix_table2 = partial(ade20k_figures, source="SegNeXt appendix Table 2 (MSCA head, COCO-Stuff, 171 classes)")


# Table 5: the Hamburger of SegNeXt-B's head replaced by another context module.


@register_model(kind="segmentor", backbone="mscan_b", paper=_table5(27.8, 35.7))
def segnext_b_cc(**kwargs: Any) -> SegNeXt:
    """SegNeXt-B w/ CC: recurrent criss-cross attention (R = 2) in the head (Table 5)."""
    return segnext_b(**{"context": "cc", **kwargs})


@register_model(kind="segmentor", backbone="mscan_b", paper=_table5(27.4, 32.3))
def segnext_b_ema(**kwargs: Any) -> SegNeXt:
    """SegNeXt-B w/ EMA: the EM attention unit (K = 64, T = 3) in the head (Table 5)."""
    return segnext_b(**{"context": "ema", **kwargs})


@register_model(kind="segmentor", backbone="mscan_b", paper=_table5(27.6, 40.9))
def segnext_b_nl(**kwargs: Any) -> SegNeXt:
    """SegNeXt-B w/ NL: an embedded-Gaussian non-local block in the head (Table 5)."""
    return segnext_b(**{"context": "nl", **kwargs})


# Table 6: MSCA design ablations in the encoder of SegNeXt-T.


@register_model(kind="segmentor", backbone="mscan_t", paper=_table6())
def segnext_t_branch7(**kwargs: Any) -> SegNeXt:
    """SegNeXt-T with the 7x7 strip branch only in MSCA (Table 6 row 1)."""
    return segnext_t(**{"branch_kernels": (7,), **kwargs})


@register_model(kind="segmentor", backbone="mscan_t", paper=_table6())
def segnext_t_branch11(**kwargs: Any) -> SegNeXt:
    """SegNeXt-T with the 11x11 strip branch only in MSCA (Table 6 row 2)."""
    return segnext_t(**{"branch_kernels": (11,), **kwargs})


@register_model(kind="segmentor", backbone="mscan_t", paper=_table6())
def segnext_t_branch21(**kwargs: Any) -> SegNeXt:
    """SegNeXt-T with the 21x21 strip branch only in MSCA (Table 6 row 3)."""
    return segnext_t(**{"branch_kernels": (21,), **kwargs})


@register_model(kind="segmentor", backbone="mscan_t", paper=_table6())
def segnext_t_no_conv1x1(**kwargs: Any) -> SegNeXt:
    """SegNeXt-T without MSCA's 1x1 channel-mixing conv (Table 6 row 4)."""
    return segnext_t(**{"channel_mixer": False, **kwargs})


@register_model(kind="segmentor", backbone="mscan_t", paper=_table6())
def segnext_t_no_attention(**kwargs: Any) -> SegNeXt:
    """SegNeXt-T without MSCA's attention product (Table 6 row 5)."""
    return segnext_t(**{"attention": False, **kwargs})


# Table 7: decoder structures of Fig. 3 on SegNeXt-T.


@register_model(kind="segmentor", backbone="mscan_t", paper=_table7(4.4, 10.0))
def segnext_t_mlp(**kwargs: Any) -> SegNeXt:
    """SegNeXt-T (a): SegFormer's all-MLP decoder on stages 1-4 (Fig. 3a, Table 7)."""
    return segnext_t(**{"decoder": "mlp", "in_strides": (4, 8, 16, 32), **kwargs})


@register_model(kind="segmentor", backbone="mscan_t", paper=_table7(4.2, 4.9))
def segnext_t_lastonly(**kwargs: Any) -> SegNeXt:
    """SegNeXt-T (b): the Ham head on the last stage only (Fig. 3b, Table 7)."""
    return segnext_t(**{"in_strides": (32,), **kwargs})


@register_model(kind="segmentor", backbone="mscan_t", paper=_table7(4.3, 12.1))
def segnext_t_stage1(**kwargs: Any) -> SegNeXt:
    """SegNeXt-T (c) w/ stage 1: the Ham head on stages 1-4, at 1/4 resolution (Table 7)."""
    return segnext_t(**{"in_strides": (4, 8, 16, 32), **kwargs})


# Table 8: VAN's single large-kernel attention in place of MSCA.


@register_model(kind="segmentor", backbone="mscan_t", paper=_table8(4.2, 6.5))
def segnext_t_lka(**kwargs: Any) -> SegNeXt:
    """SegNeXt-T w/o MSCA: LKA (5x5 dw, 7x7 dw dilation 3, 1x1) in the encoder (Table 8)."""
    return segnext_t(**{"attention_type": "lka", **kwargs})


@register_model(kind="segmentor", backbone="mscan_s", paper=_table8(13.8, 15.8))
def segnext_s_lka(**kwargs: Any) -> SegNeXt:
    """SegNeXt-S w/o MSCA: LKA in the encoder (Table 8)."""
    return segnext_s(**{"attention_type": "lka", **kwargs})


# Appendix Table 2: MSCA in place of the Hamburger, COCO-Stuff (171 classes).


@register_model(kind="segmentor", backbone="mscan_t", paper=_appendix_table2(4.4, 6.7))
def segnext_t_mscahead(**kwargs: Any) -> SegNeXt:
    """SegNeXt-T w/ MSCA head, 171 classes (appendix Table 2)."""
    return segnext_t(**{"decoder": "msca", "num_classes": 171, **kwargs})


@register_model(kind="segmentor", backbone="mscan_s", paper=_appendix_table2(14.0, 15.9))
def segnext_s_mscahead(**kwargs: Any) -> SegNeXt:
    """SegNeXt-S w/ MSCA head, 171 classes (appendix Table 2)."""
    return segnext_s(**{"decoder": "msca", "num_classes": 171, **kwargs})


@register_model(kind="segmentor", backbone="mscan_b", paper=_appendix_table2(28.0, 33.6))
def segnext_b_mscahead(**kwargs: Any) -> SegNeXt:
    """SegNeXt-B w/ MSCA head, 171 classes (appendix Table 2)."""
    return segnext_b(**{"decoder": "msca", "num_classes": 171, **kwargs})


@register_model(kind="segmentor", backbone="mscan_l", paper=_appendix_table2(50.1, 69.8))
def segnext_l_mscahead(**kwargs: Any) -> SegNeXt:
    """SegNeXt-L w/ MSCA head, 171 classes (appendix Table 2)."""
    return segnext_l(**{"decoder": "msca", "num_classes": 171, **kwargs})
