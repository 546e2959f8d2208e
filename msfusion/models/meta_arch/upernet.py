"""UperNet segmentors: any backbone + ``UPerHead`` + an auxiliary ``FCNHead``; CEDNet presets.

Papers: "CEDNet: A Cascade Encoder-Decoder Network for Dense Prediction",
Zhang et al. (arXiv 2302.06052), Sec. 4.4 and Table 3 (ADE20K with UperNet,
Xiao et al., ECCV 2018, arXiv 1807.10221).

``UPerNet`` works with any backbone that follows the feature contract
(``create_model(name, features_only=True)``: ours or any timm name).
``upernet_cednet_next_t|s|b`` are the Table 3 models, configured as the
official ced-mmseg UperNet configs:

- backbone ``cednet_next_*`` with ``last_decoder=False``, drop path 0.2 / 0.3
  / 0.4 and ``layer_scale_init=1.0`` (overwritten by ImageNet weights);
  outputs ``[c2, c3, c4, c5]`` plus the extras ``[c3'_{m-1}, ..., c3'_1]``
  (``extra_stage_features=True``; the official list appends them, so its
  index 4 is our first extra);
- ``UPerHead`` on strides 4, 8, 16, 32 (c2..c5), 512 channels, pool scales (1, 2, 3, 6),
  dropout 0.1, BN + ReLU (SyncBN in the official multi-GPU configs:
  ``norm="syncbn"``), 150 classes;
- auxiliary ``FCNHead`` on output 4, the fused 1/8 map c3' of stage m-1
  (192 channels for T/S, 256 for B), 256 channels, one conv, loss weight 0.4.

Any add-on or neck can be inserted (``addon=``, ``neck=``); the heads are then
built on the last producer's features.

Published parameters (Table 3): 61 / 83 / 123 M. The registered models
include the auxiliary head, as the trained state dict does; without it they
are 0.48 / 0.48 / 0.63 M smaller (60.50 / 82.84 / 122.27 M, as the official
code counts them). Table 3's FLOPs (962 / 1045 / 1184 G) are mmcv-rule MACs at the
mmseg ``get_flops`` default input 512x2048, not at the 512x512 crop; these
models give 962.4 / 1045.2 / 1184.3 G there.
The training recipe (AdamW, layer-wise lr decay) lives in
``configs/upernet_cednet_next_*.yaml``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from msfusion.layers import check_feature_info
from msfusion.models.heads.fcn import FCNHead
from msfusion.models.heads.uper import UPerHead
from msfusion.models.meta_arch.segmentor import Segmentor, build_part, feature_producer
from msfusion.registry import PaperFigures, create_model, register_model

__all__ = ["UPerNet"]


class UPerNet(Segmentor):
    """Backbone -> ``UPerHead`` (+ ``FCNHead`` auxiliary head). ``forward`` -> (B, K, H, W).

    ``forward(images)`` (B, 3, H, W) returns the decode head's logits at the
    input size; ``forward_train`` also returns the auxiliary logits, to be
    weighted by ``auxiliary_weights`` (``(aux_weight,)``) in the loss.

    Args:
        backbone: a feature backbone (list of maps, fine to coarse, with
            ``feature_info``) or a model name built with
            ``create_model(name, features_only=True, **backbone_kwargs)``.
        num_classes: K (150 for ADE20K).
        in_strides: strides fed to ``UPerHead`` (fine to coarse).
        channels: ``UPerHead`` width (512).
        pool_scales: PPM pool sizes.
        dropout: Dropout2d before both classifiers.
        norm: norm of both heads: ``"bn"``, ``"syncbn"`` or ``"gn"``.
        aux_in_index: the map fed to the auxiliary ``FCNHead``, an index into
            the features followed by the backbone's extras (mmseg's numbering);
            None builds no auxiliary head. For a CEDNet backbone with
            ``extra_stage_features``, 4 is the fused 1/8 map of stage m-1.
        aux_channels: auxiliary head width (256).
        aux_weight: auxiliary loss weight (0.4).
        backbone_kwargs: passed to ``create_model`` when ``backbone`` is a name.
        size_divisor: inputs are padded to a multiple of this.
        addon, neck: optional registered names (or modules) between the
            backbone and the heads, with ``addon_kwargs`` / ``neck_kwargs``.
    """

    def __init__(
        self,
        backbone: str | nn.Module,
        num_classes: int = 150,
        in_strides: Sequence[int] = (4, 8, 16, 32),
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        dropout: float = 0.1,
        norm: str = "bn",
        aux_in_index: int | None = 2,
        aux_channels: int = 256,
        aux_weight: float = 0.4,
        backbone_kwargs: dict[str, Any] | None = None,
        size_divisor: int = 32,
        addon: str | nn.Module | None = None,
        neck: str | nn.Module | None = None,
        addon_kwargs: dict[str, Any] | None = None,
        neck_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if isinstance(backbone, str):
            backbone = create_model(backbone, features_only=True, **(backbone_kwargs or {}))
        elif backbone_kwargs:
            raise ValueError("backbone_kwargs only apply when the backbone is given by name")
        check_feature_info(getattr(backbone, "feature_info", None), f"the backbone {type(backbone).__name__}")
        addon = build_part(addon, "addon", backbone.feature_info, addon_kwargs)
        neck = build_part(neck, "neck", feature_producer(backbone, addon, None).feature_info, neck_kwargs)
        info = feature_producer(backbone, addon, neck).feature_info
        extra_info = list(getattr(backbone, "extra_feature_info", None) or [])
        head = UPerHead(
            info,
            num_classes,
            in_strides=in_strides,
            channels=channels,
            pool_scales=pool_scales,
            dropout=dropout,
            norm=norm,
        )
        aux_heads: list[nn.Module] = []
        aux_inputs: list[str] = []
        if aux_in_index is not None:
            n = len(info)
            if not -n <= aux_in_index < n + len(extra_info):
                raise ValueError(
                    f"aux_in_index {aux_in_index} out of range: {n} feature maps (strides "
                    f"{[f['reduction'] for f in info]}) and {len(extra_info)} extra maps"
                )
            if aux_in_index < n:
                aux_info, aux_stride, source = info, info[aux_in_index]["reduction"], "features"
            else:
                k = aux_in_index - n
                aux_info, aux_stride, source = [extra_info[k]], extra_info[k]["reduction"], f"extra:{k}"
            aux_heads.append(
                FCNHead(aux_info, num_classes, in_stride=aux_stride, channels=aux_channels, dropout=dropout, norm=norm)
            )
            aux_inputs.append(source)
        super().__init__(
            backbone,
            head,
            num_classes,
            addon=addon,
            neck=neck,
            auxiliary_heads=aux_heads,
            auxiliary_weights=(aux_weight,) * len(aux_heads),
            auxiliary_inputs=aux_inputs,
            size_divisor=size_divisor,
            in_chans=getattr(backbone, "in_chans", 3),
        )

    def checkpoint_filter_fn(self, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
        """Official mmseg UperNet checkpoints, ours, or a backbone-only (e.g. ImageNet) checkpoint.

        mmseg stores one auxiliary head as ``auxiliary_head.*``; ours is a list
        (``auxiliary_head.0.*``). Backbone keys go through the backbone's own
        ``checkpoint_filter_fn`` when it has one (CEDNet: ImageNet, mmdet and
        mmseg layouts, classification heads dropped).
        """
        heads = ("decode_head.", "auxiliary_head.")
        is_segmentor = any(k.startswith(heads) for k in state_dict)
        backbone_sd = {k: v for k, v in state_dict.items() if not k.startswith(heads)}
        if is_segmentor or all(k.startswith("backbone.") for k in backbone_sd):
            backbone_sd = {k.removeprefix("backbone."): v for k, v in backbone_sd.items()}
        backbone_filter = getattr(self.backbone, "checkpoint_filter_fn", None)
        if callable(backbone_filter):
            backbone_sd = backbone_filter(backbone_sd)
        out = {f"backbone.{k}": v for k, v in backbone_sd.items()}
        for key, value in state_dict.items():
            if key.startswith("decode_head."):
                out[key] = value
            elif key.startswith("auxiliary_head."):
                if not re.match(r"auxiliary_head\.\d+\.", key):
                    key = "auxiliary_head.0." + key.removeprefix("auxiliary_head.")
                out[key] = value
        return out


# ---------------------------------------------------------------- CEDNet variants
_SEGMENTOR_KEYS = (
    "num_classes",
    "in_strides",
    "channels",
    "pool_scales",
    "dropout",
    "norm",
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
    seg.setdefault("aux_in_index", 4)
    # ``extra_stage_features`` exposes the earlier stages' fused 1/8 maps (mmseg's
    # outputs 4, 5, ...: c3' of stage m-1, m-2, ...) for the auxiliary head.
    backbone_kwargs: dict[str, Any] = dict(layer_scale_init=1.0, last_decoder=False, extra_stage_features=True)
    backbone_kwargs.update(kwargs)
    return UPerNet(backbone, backbone_kwargs=backbone_kwargs, **seg)


def _table3(params_m: float, gmacs: float) -> PaperFigures:
    # Table 3 lists "input size 512^2" (the training crop), but its FLOPs are the
    # mmseg get_flops default shape 512x2048 with mmcv's rules: measured 962.4 /
    # 1045.2 / 1184.3 G here, against the published 962 / 1045 / 1184 G.
    return PaperFigures(
        params_m=params_m,
        gmacs=gmacs,
        input_size=(3, 512, 2048),
        source="CEDNet Table 3 (ADE20K, UperNet, 150 classes)",
        macs_rules="mmcv",
        notes="params include the auxiliary FCN head; MACs at 512x2048, mmcv rules",
    )


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
