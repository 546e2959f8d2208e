"""TopFormer segmentors, and TopFormer + MSCSA with the MSCSA ablations.

Papers:

- "TopFormer: Token Pyramid Transformer for Mobile Semantic Segmentation",
  Zhang et al., CVPR 2022 (arXiv 2204.05525): the backbone (token pyramid,
  SASE, semantics injection) and the segmentation head (Sec. 3).
- "Vision Backbone Enhancement via Multi-Stage Cross-Scale Attention",
  Shang et al. (arXiv 2308.05872): MSCSA replaces TopFormer's Scale-Aware
  Semantics Extractor and feeds the injection modules (Tables 3 and 6). Table 7
  configures it: depth 2, 4 / 8 heads, head dimension 14 / 12 (values twice
  that), MLP ratio 3 for T / B, pooling 1/32 for ImageNet and 1/64 for dense
  prediction.

Registered:

- ``topformer_t|s|b``: TopFormer segmentors (150 ADE20K classes). Backbone +
  head at 512x512: 1.39 / 3.04 / 5.06 M parameters and 0.56 / 1.15 / 1.80 G
  multiply-adds (torchprofile rules, logits at 1/8), measured on the released
  code.
- ``topformer_t_mscsa``, ``topformer_b_mscsa``: MSCSA in place of SASE
  (Table 3: 0.55 and 1.8 GFLOPs at 512x512, the baselines' FLOPs).
- ``topformer_t_mscsa_cls``, ``topformer_b_mscsa_cls``: the ImageNet
  classifiers of Table 6 (0.13 / 0.38 GFLOPs at 224x224, as the baselines
  ``topformer_t_cls`` / ``topformer_b_cls``). ``create_model(name,
  features_only=True)`` gives the dense backbone (pool 1/64, injected maps).

Ablations (Tables 4 and 5, on TopFormer-T + MSCSA, ImageNet 224x224): every
MSCSA variant takes ``ablation=`` one of ``MSCSA_ABLATIONS`` (or single
switches through ``extractor_kwargs``: ``pcp``, ``intra_ffn``,
``downsample``). Table 4 adds the components back cumulatively: without
PCP, Intra-FFN and multi-scale K/V projections (MSP); + PCP; + Intra-FFN;
+ MSP (the full model). The paper spends the Intra-FFN's savings on the FFN
expansion ratio ("we put more computational budget to increase the expansion
ratio"): without the Intra-FFN both FFNs use ratio 2 (SASE's), the ratio
that matches the paper's FLOPs (129 vs 130 M). Table 5 swaps the down-sampling
of K/V: average pooling, cascaded convs, a single x2 conv (Fig. 6).

FLOPs conventions. The MSCSA paper's TopFormer FLOPs (Tables 4-6) are
matched, to 2.5%, by mmcv's ``get_model_complexity_info`` rules plus the
attention matrix products (mmcv's counter skips matmuls): TopFormer-T / B
classifiers 0.129 / 0.377 G, T+MSCSA 132.2 M. Torchprofile's rules count
about 4% less on these small models (no ReLU, no bias, one op per BN).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from msfusion.models.addons.mscsa import TABLE7 as _MSCSA_TABLE7
from msfusion.models.backbones.topformer import TopFormer, create_topformer, topformer_config
from msfusion.models.heads.topformer_head import TopFormerHead
from msfusion.models.meta_arch.segmentor import Segmentor
from msfusion.registry import PaperFigures, register_model

__all__ = ["TopFormerSegmentor", "TABLE7", "MSCSA_ABLATIONS", "mscsa_config"]

# MSCSA Table 7, TopFormer rows: depth, #heads, head dimension (queries/keys), MLP ratio (the add-on's table).
TABLE7: dict[str, dict[str, Any]] = {
    size: {k: _MSCSA_TABLE7[f"topformer_{size}"][k] for k in ("depth", "num_heads", "head_dim", "mlp_ratio")}
    for size in ("t", "b")
}

# MSCSA Tables 4 and 5 on TopFormer-T + MSCSA: row -> (MSCSA switches, paper FLOPs in M at 224x224).
MSCSA_ABLATIONS: dict[str, tuple[dict[str, Any], int]] = {
    "no_options": (dict(pcp=False, intra_ffn=False, downsample="none", mlp_ratio=2.0), 129),  # Table 4
    "pcp": (dict(intra_ffn=False, downsample="none", mlp_ratio=2.0), 129),  # Table 4: + PCP
    "pcp_intra_ffn": (dict(downsample="none"), 130),  # Table 4: ++ Intra-FFN
    "full": ({}, 132),  # Table 4: +++ MSP; Tables 5-6: the model
    "avgpool": (dict(downsample="avgpool"), 132),  # Table 5, Fig. 6b
    "cascade": (dict(downsample="cascade"), 131),  # Table 5, Fig. 6c
    "single": (dict(downsample="single"), 131),  # Table 5, Fig. 6d
}


def mscsa_config(
    size: str, ablation: str | None = None, extractor_kwargs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """MSCSA arguments for TopFormer-``size`` (Table 7), with an ablation row and overrides applied."""
    if size not in TABLE7:
        raise ValueError(f"MSCSA Table 7 configures TopFormer sizes {sorted(TABLE7)}, got {size!r}")
    cfg = dict(TABLE7[size])
    if ablation is not None:
        if ablation not in MSCSA_ABLATIONS:
            raise ValueError(f"ablation must be one of {list(MSCSA_ABLATIONS)} (Tables 4-5), got {ablation!r}")
        cfg.update(MSCSA_ABLATIONS[ablation][0])
    cfg.update(extractor_kwargs or {})
    return cfg


class TopFormerSegmentor(Segmentor):
    """TopFormer backbone (features_only) + ``TopFormerHead``: (B, 3, H, W) -> (B, K, H, W).

    Inputs smaller than 64 pixels a side are padded (the backbone's
    ``min_size``), any size is padded to a multiple of ``size_divisor`` and the
    logits are cropped back.

    Args:
        backbone: ``TopFormer`` arguments (without ``features_only``).
        num_classes: K (150 for ADE20K).
        head_dw: depthwise 1x1 fuse conv in the head (TopFormer-T).
        dropout: Dropout2d before the classifier (0.1).
        size_divisor: inputs are padded to a multiple of this.
    """

    def __init__(
        self,
        backbone: dict[str, Any],
        num_classes: int = 150,
        head_dw: bool = False,
        dropout: float = 0.1,
        size_divisor: int = 32,
    ) -> None:
        encoder = TopFormer(**backbone, features_only=True)
        strides = [f["reduction"] for f in encoder.feature_info]
        head = TopFormerHead(encoder.feature_info, num_classes, in_strides=strides, dw=head_dw, dropout=dropout)
        super().__init__(encoder, head, num_classes, size_divisor=size_divisor, in_chans=encoder.in_chans)

    def checkpoint_filter_fn(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Official TopFormer checkpoints: ADE20K segmentors or ImageNet backbones."""
        from msfusion.convert.topformer import from_official

        return from_official(state_dict, inject_index=self.backbone.inject_index, prefix="backbone.")


def _create_segmentor(
    size: str,
    *,
    mscsa: bool,
    num_classes: int = 150,
    dropout: float = 0.1,
    head_dw: bool | None = None,
    size_divisor: int = 32,
    ablation: str | None = None,
    extractor_kwargs: dict[str, Any] | None = None,
    **backbone_kwargs: Any,
) -> TopFormerSegmentor:
    backbone = topformer_config(size)
    if mscsa:
        backbone.update(extractor="mscsa", extractor_kwargs=mscsa_config(size, ablation, extractor_kwargs))
    else:
        if ablation is not None:
            raise ValueError("ablation= applies to the TopFormer + MSCSA models (Tables 4-5) only")
        backbone["extractor_kwargs"].update(extractor_kwargs or {})
    backbone.update(backbone_kwargs)
    dw = size == "t" if head_dw is None else head_dw
    return TopFormerSegmentor(backbone, num_classes, head_dw=dw, dropout=dropout, size_divisor=size_divisor)


def _ade20k(params_m: float | None, gmacs: float, source: str, notes: str) -> PaperFigures:
    # mmcv's counter on the whole segmentor is the TopFormer paper's tool (mmseg's get_flops); it skips
    # the final F.interpolate of the logits, so its count stays comparable to the papers' figures.
    return PaperFigures(
        params_m=params_m, gmacs=gmacs, input_size=(3, 512, 512), source=source, macs_rules="mmcv", notes=notes
    )


_TOPFORMER = "TopFormer paper (arXiv 2204.05525), ADE20K table"
_RELEASED = "measured on the released code: {} M params, {} G torchprofile MACs (backbone + head, logits at 1/8)"


@register_model(
    kind="segmentor", backbone="topformer_t_cls", paper=_ade20k(1.4, 0.6, _TOPFORMER, _RELEASED.format(1.39, 0.56))
)
def topformer_t(**kwargs: Any) -> TopFormerSegmentor:
    """TopFormer-T: 4 heads, injection 128 channels, depthwise 1x1 in the head (150 classes)."""
    return _create_segmentor("t", mscsa=False, **kwargs)


@register_model(
    kind="segmentor", backbone="topformer_s_cls", paper=_ade20k(3.1, 1.2, _TOPFORMER, _RELEASED.format(3.04, 1.15))
)
def topformer_s(**kwargs: Any) -> TopFormerSegmentor:
    """TopFormer-S: 6 heads, injection 192 channels (150 classes)."""
    return _create_segmentor("s", mscsa=False, **kwargs)


@register_model(
    kind="segmentor", backbone="topformer_b_cls", paper=_ade20k(5.1, 1.8, _TOPFORMER, _RELEASED.format(5.06, 1.80))
)
def topformer_b(**kwargs: Any) -> TopFormerSegmentor:
    """TopFormer-B: 8 heads, injection 256 channels (150 classes)."""
    return _create_segmentor("b", mscsa=False, **kwargs)


_TABLE3 = "MSCSA Table 3 (ADE20K, 512x512)"
_BASELINE = "baseline TopFormer-{} {} GFLOPs; torchprofile on backbone + head at 1/8 counts within 3% of it"


@register_model(
    kind="segmentor",
    backbone="topformer_t_mscsa_cls",
    paper=_ade20k(None, 0.55, _TABLE3, _BASELINE.format("T", 0.55)),
)
def topformer_t_mscsa(**kwargs: Any) -> TopFormerSegmentor:
    """TopFormer-T with MSCSA in place of SASE (Table 7: pool 1/64, depth 2, 4 heads, head dim 14, MLP 3)."""
    return _create_segmentor("t", mscsa=True, **kwargs)


@register_model(
    kind="segmentor",
    backbone="topformer_b_mscsa_cls",
    paper=_ade20k(None, 1.8, _TABLE3, _BASELINE.format("B", 1.8)),
)
def topformer_b_mscsa(**kwargs: Any) -> TopFormerSegmentor:
    """TopFormer-B with MSCSA in place of SASE (Table 7: pool 1/64, depth 2, 8 heads, head dim 12, MLP 3)."""
    return _create_segmentor("b", mscsa=True, **kwargs)


def _create_mscsa_classifier(
    size: str, *, ablation: str | None = None, extractor_kwargs: dict[str, Any] | None = None, **kwargs: Any
) -> TopFormer:
    return create_topformer(
        size, extractor="mscsa", extractor_kwargs=mscsa_config(size, ablation, extractor_kwargs), **kwargs
    )


def _imagenet(gmacs: float, extra: dict[str, Any] | None = None) -> PaperFigures:
    return PaperFigures(
        gmacs=gmacs,
        input_size=(3, 224, 224),
        source="MSCSA Table 6 (ImageNet-1k, 224x224)",
        macs_rules="mmcv",
        notes="the paper's figures match mmcv's rules plus the attention products",
        extra=extra or {},
    )


@register_model(
    kind="classifier",
    paper=_imagenet(0.13, {"ablations_mflops": {k: v[1] for k, v in MSCSA_ABLATIONS.items()}}),
)
def topformer_t_mscsa_cls(**kwargs: Any) -> TopFormer:
    """TopFormer-T + MSCSA on ImageNet (Table 7: pool 1/32, depth 2, 4 heads, head dim 14, MLP 3).

    ``ablation=`` selects a row of Tables 4-5; ``features_only=True`` gives the dense backbone (pool 1/64).
    """
    return _create_mscsa_classifier("t", **kwargs)


@register_model(kind="classifier", paper=_imagenet(0.38))
def topformer_b_mscsa_cls(**kwargs: Any) -> TopFormer:
    """TopFormer-B + MSCSA on ImageNet (Table 7: pool 1/32, depth 2, 8 heads, head dim 12, MLP 3)."""
    return _create_mscsa_classifier("b", **kwargs)
