"""CEDNet's registered models: UperNet segmentors (Table 3) and detectors (Table 2).

Paper: "CEDNet: A Cascade Encoder-Decoder Network for Dense Prediction",
Zhang et al., arXiv 2302.06052. The backbone is
``msfusion.models.backbones.cednet``, its detection pyramid the neck
``msfusion.models.necks.cednet_pyramid``; ``UPerNet`` is the generic
``msfusion.models.meta_arch.upernet``.

**Segmentation** (Sec. 4.4, Table 3, ADE20K with UperNet, Xiao et al., ECCV
2018, arXiv 1807.10221): ``upernet_cednet_next_t|s|b``, configured as the
official ced-mmseg UperNet configs:

- backbone ``cednet_next_*`` with ``last_decoder=False``, drop path 0.2 / 0.3
  / 0.4 and ``layer_scale_init=1.0`` (overwritten by ImageNet weights);
  outputs ``[c2, c3, c4, c5]`` plus the extras ``[c3'_{m-1}, ..., c3'_1]``
  (``extra_stage_features=True``; the official list appends them, so its
  index 4 is our first extra);
- ``UPerHead`` on strides 4, 8, 16, 32 (c2..c5), 512 channels, pool scales (1, 2, 3, 6),
  dropout 0.1, BN + ReLU (SyncBN in the official multi-GPU configs:
  ``norm="syncbn"``), 150 classes;
- auxiliary ``FCNHead`` on the fused 1/8 map c3' of stage m-1 (the official
  output 4; ``aux_in_stride=8, aux_in_extra=True``; 192 channels for T/S,
  256 for B), 256 channels, one conv, loss weight 0.4.

Published parameters (Table 3): 61 / 83 / 123 M. The registered models
include the auxiliary head, as the trained state dict does; without it they
are 0.48 / 0.48 / 0.63 M smaller (60.50 / 82.84 / 122.27 M, as the official
code counts them). Table 3's FLOPs (962 / 1045 / 1184 G) are mmcv-rule MACs at the
mmseg ``get_flops`` default input 512x2048, not at the 512x512 crop; these
models give 962.4 / 1045.2 / 1184.3 G there.
The training recipe (AdamW, layer-wise lr decay) lives in
``configs/upernet_cednet_next_*.yaml``.

**Detection**, Table 2(b)-(d): the neck is CEDNet's own pyramid
(``neck="cednet_pyramid"``; the released code builds it inside the backbone
and sets no neck), not an FPN. RetinaNet reads P3-P7 (strides
8-128: 1x1 conv + LayerNorm to 256 channels on the last stage's 1/8, 1/16,
1/32 maps, then two 3x3 stride-2 conv + LayerNorm levels); Mask R-CNN and
Cascade Mask R-CNN read P2-P6 (P2 = LayerNorm-then-3x3-conv of the
upsampled P3 plus the reduced stride-4 map; one extra level). Drop path
0.2 for T; the Cascade head is four 3x3 convs with BatchNorm and one FC (the
official configs use SyncBN). 80 COCO classes (``num_classes=81``). The recorded figures count at 800x1280 with
mmdetection's ``get_flops`` (``DetectorComplexity`` reproduces it: box heads on
1000 RoIs, mask heads on 100).

**Deformable DETR**, Table 2(a): ConvNeXt-T 42 M / 231 G and
CEDNet-NeXt-T 43 M / 223 G, mmdetection's get_flops at 800 x 1280. The
authors' released configurations (CEDNet repository, ``ced-mmdet``
Deformable DETR configs) train both as the plain variant (300 queries, 6 +
6 layers, no two-stage, no box refinement): ConvNeXt-T with drop path 0.4
and layer scale initialised to 1.0 behind mmdetection's ChannelMapper (1x1
conv + GroupNorm per level, one 3x3 stride-2 conv for the fourth level),
which is what transformers' input projection is. The CEDNet-NeXt-T row
matches its count (43.1 M / 223.5 G). The ConvNeXt rows (42 M / 231 G,
64 M / 317 G) are the released plain configuration with 8 encoder layers
instead of 6: 42.4 M / 231.7 G (231.4 G as mmdet counts) and 64.1 M /
318.0 G (317.7 G); the released file counts 40.9 M / 199.6 G. The preset is
that 8-layer variant; ``encoder_layers=6`` gives the released configuration
(``docs/fidelity.md`` decomposes the count by part).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from msfusion.models.meta_arch.upernet import UPerNet
from msfusion.models.presets import create_detector, create_detr
from msfusion.registry import PaperFigures, register_model

__all__ = ["mmdet_figures"]


# ---- UperNet segmentors (Table 3) ------------------------------------------------------------


_SEGMENTOR_KEYS = (
    "num_classes",
    "in_strides",
    "channels",
    "pool_scales",
    "dropout",
    "norm",
    "aux_in_stride",
    "aux_in_extra",
    "aux_in_index",
    "aux_channels",
    "aux_weight",
    "size_divisor",
    "addon",
    "neck",
    "addon_kwargs",
    "neck_kwargs",
)


def _create_upernet_cednet(backbone: str, **kwargs: Any) -> UPerNet:
    """``UPerNet`` on ``backbone`` with the official ced-mmseg settings.

    Keyword arguments of ``UPerNet`` go to the segmentor, every other one to the
    CEDNet backbone (``drop_path_rate``, ``style``, ``layer_scale_init``, ...).
    """
    if kwargs.pop("features_only", False) or "out_indices" in kwargs:
        raise ValueError(
            f"upernet_{backbone} is a segmentor; for its backbone features use "
            f"create_model({backbone!r}, features_only=True)"
        )
    seg = {k: kwargs.pop(k) for k in _SEGMENTOR_KEYS if k in kwargs}
    if "aux_in_index" not in seg:  # the deprecated name, if given, wins
        seg.setdefault("aux_in_stride", 8)
        seg.setdefault("aux_in_extra", True)
    # ``extra_stage_features`` exposes the earlier stages' fused 1/8 maps (mmseg's
    # outputs 4, 5, ...: c3' of stage m-1, m-2, ...) for the auxiliary head.
    backbone_kwargs: dict[str, Any] = dict(layer_scale_init=1.0, last_decoder=False, extra_stage_features=True)
    backbone_kwargs.update(kwargs)
    return UPerNet(backbone, backbone_kwargs=backbone_kwargs, **seg)


def mmdet_figures(
    params: float | None, gflops: float, source: str, notes: str, input_size: tuple[int, int, int] = (3, 800, 1280)
) -> PaperFigures:
    """Published figures counted as mmdetection / mmsegmentation's ``get_flops`` does (mmcv's rules).

    ``input_size`` is the shape they count at: 800x1280 for the detectors, the
    segmentors' 512x2048.
    """
    return PaperFigures(
        params_m=params, gmacs=gflops, input_size=input_size, source=source, macs_rules="mmcv", notes=notes
    )


def _table3(params_m: float, gmacs: float) -> PaperFigures:
    # Table 3 lists "input size 512^2" (the training crop), but its FLOPs are the
    # mmseg get_flops default shape 512x2048 with mmcv's rules: measured 962.4 /
    # 1045.2 / 1184.3 G here, against the published 962 / 1045 / 1184 G.
    source = "CEDNet Table 3 (ADE20K, UperNet, 150 classes)"
    notes = "params include the auxiliary FCN head; MACs at 512x2048, mmcv rules"
    return mmdet_figures(params_m, gmacs, source, notes, input_size=(3, 512, 2048))


@register_model(kind="segmentor", backbone="cednet_next_t", paper=_table3(61, 962))
def upernet_cednet_next_t(**kwargs: Any) -> UPerNet:
    """UperNet + CEDNet-NeXt-T (Table 3): drop path 0.2, aux head on stage 2's c3'."""
    return _create_upernet_cednet("cednet_next_t", **{"drop_path_rate": 0.2, **kwargs})


@register_model(kind="segmentor", backbone="cednet_next_s", paper=_table3(83, 1045))
def upernet_cednet_next_s(**kwargs: Any) -> UPerNet:
    """UperNet + CEDNet-NeXt-S (Table 3): drop path 0.3, aux head on stage 3's c3'."""
    return _create_upernet_cednet("cednet_next_s", **{"drop_path_rate": 0.3, **kwargs})


@register_model(kind="segmentor", backbone="cednet_next_b", paper=_table3(123, 1184))
def upernet_cednet_next_b(**kwargs: Any) -> UPerNet:
    """UperNet + CEDNet-NeXt-B (Table 3): drop path 0.4, aux head on stage 3's c3'."""
    return _create_upernet_cednet("cednet_next_b", **{"drop_path_rate": 0.4, **kwargs})


@register_model(kind="segmentor", backbone="test_cednet_next")
def test_upernet_cednet(**kwargs: Any) -> UPerNet:
    """A tiny UperNet + CEDNet for fast tests (not a paper variant)."""
    kwargs.setdefault("channels", 16)
    kwargs.setdefault("aux_channels", 8)
    kwargs.setdefault("num_classes", 5)
    return _create_upernet_cednet("test_cednet_next", **{"drop_path_rate": 0.0, **kwargs})


# ---- Detectors (Table 2(b)-(d)) --------------------------------------------------------------


def _cednet(levels: str, drop_path_rate: float) -> dict[str, Any]:
    return dict(
        backbone="cednet_next_t",
        neck="cednet_pyramid",
        neck_kwargs=dict(levels=levels),
        backbone_kwargs=dict(drop_path_rate=drop_path_rate, layer_scale_init=1e-6),
    )


def _cednet_paper(params: float, gflops: float) -> PaperFigures:
    notes = "mmdetection get_flops (backbone, neck, RPN, box head on 1000 RoIs, mask head on 100)"
    return mmdet_figures(params, gflops, "CEDNet paper (arXiv 2302.06052) Table 2", notes)


@register_model(kind="detector", paper=_cednet_paper(39, 255), backbone="cednet_next_t")
def retinanet_cednet_next_t(**kwargs: Any) -> nn.Module:
    """RetinaNet on CEDNet-NeXt-T's P3-P7 pyramid (CEDNet Table 2(b): 39M, 255G, 48.3 AP)."""
    return create_detector("retinanet", _cednet("p3p7", 0.2), kwargs)


@register_model(kind="detector", paper=_cednet_paper(49, 274), backbone="cednet_next_t")
def mask_rcnn_cednet_next_t(**kwargs: Any) -> nn.Module:
    """Mask R-CNN on CEDNet-NeXt-T's P2-P6 pyramid (CEDNet Table 2(c): 49M, 274G, 49.2 box / 44.1 mask AP)."""
    return create_detector("mask_rcnn", _cednet("p2p6", 0.2), kwargs)


@register_model(kind="detector", paper=_cednet_paper(87, 753), backbone="cednet_next_t")
def cascade_mask_rcnn_cednet_next_t(**kwargs: Any) -> nn.Module:
    """Cascade Mask R-CNN on CEDNet-NeXt-T's P2-P6 (CEDNet Table 2(d): 87M, 753G, 52.5 box / 45.9 mask AP)."""
    return create_detector("cascade_mask_rcnn", {**_cednet("p2p6", 0.2), "box_head": "4conv1fc"}, kwargs)


@register_model(kind="detector", backbone="test_cednet_next")
def test_retinanet_cednet(**kwargs: Any) -> nn.Module:
    """A tiny RetinaNet on a tiny CEDNet's P3-P7 pyramid (tests only)."""
    defaults = dict(
        backbone="test_cednet_next",
        neck="cednet_pyramid",
        neck_kwargs=dict(levels="p3p7", out_chs=32),
        num_classes=4,
        min_size=64,
        max_size=128,
    )
    return create_detector("retinanet", defaults, kwargs)


# ---- Deformable DETR (Table 2(a)) ------------------------------------------------------------


@register_model(
    kind="detector",
    paper=mmdet_figures(
        43, 223, "CEDNet paper (arXiv 2302.06052) Table 2(a)", "plain variant on the last stage's maps"
    ),
    backbone="cednet_next_t",
)
def deformable_detr_cednet_next_t(**kwargs: Any) -> nn.Module:
    """Deformable DETR on CEDNet-NeXt-T's stride 8/16/32 outputs, plain variant (43.1 M; module doc)."""
    defaults = dict(backbone="cednet_next_t", backbone_kwargs=dict(drop_path_rate=0.2, layer_scale_init=1e-6))
    return create_detr("deformable_detr", defaults, kwargs)
