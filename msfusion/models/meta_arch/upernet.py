"""UperNet: any backbone + ``UPerHead`` (+ an auxiliary ``FCNHead``), the generic segmentor.

"Unified Perceptual Parsing for Scene Understanding", Xiao et al., ECCV 2018
(arXiv 1807.10221), as mmsegmentation's ``UPerHead`` + ``FCNHead`` configs.
``UPerNet`` works with any backbone that follows the feature contract
(``create_model(name, features_only=True)``: ours or any timm name); any
add-on or neck can be inserted (``addon=``, ``neck=``), the heads are then
built on the last producer's features. The auxiliary head reads one map by
stride (``aux_in_stride``), from the pyramid or from the backbone's extra maps
(``aux_in_extra``: CEDNet's fused 1/8 maps). CEDNet's registered UperNets
(``upernet_cednet_next_t|s|b``) are in ``msfusion.models.presets.cednet``.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from msfusion.layers.features import FeatureInfo
from msfusion.models.chain import build_chain
from msfusion.models.heads.fcn import FCNHead
from msfusion.models.heads.uper import UPerHead
from msfusion.models.meta_arch.segmentor import Segmentor

__all__ = ["UPerNet"]

_UNSET = object()  # aux_in_index not given (None there means "no auxiliary head")


def _source_of_stride(stride: int, extra: bool, info: list[FeatureInfo], extra_info: list[FeatureInfo]) -> str:
    """``"features"`` or ``"extra:<k>"``: where the auxiliary head reads its stride-``stride`` map."""
    maps = extra_info if extra else info
    strides = [f["reduction"] for f in maps]
    if stride not in strides:
        what = "extra maps (extra_feature_info)" if extra else "features"
        raise ValueError(
            f"aux_in_stride={stride}: the {what} have strides {strides}; choose one of them"
            + (
                ""
                if extra or not extra_info
                else f", or aux_in_extra=True for the extra maps' strides {[f['reduction'] for f in extra_info]}"
            )
        )
    return f"extra:{strides.index(stride)}" if extra else "features"


def _source_of_index(index: int | None, info: list[FeatureInfo], extra_info: list[FeatureInfo]) -> str | None:
    """The deprecated ``aux_in_index`` (features then extras, mmseg's numbering) -> the source, with a warning."""
    n = len(info)
    if index is None:
        warnings.warn("aux_in_index is deprecated: pass aux_in_stride=None", DeprecationWarning, stacklevel=3)
        return None
    if not -n <= index < n + len(extra_info):
        raise ValueError(
            f"aux_in_index {index} out of range: {n} feature maps (strides "
            f"{[f['reduction'] for f in info]}) and {len(extra_info)} extra maps"
        )
    if index < n:
        source, hint = "features", f"aux_in_stride={info[index]['reduction']}"
    else:
        source, hint = f"extra:{index - n}", f"aux_in_stride={extra_info[index - n]['reduction']}, aux_in_extra=True"
    warnings.warn(
        f"aux_in_index is deprecated (maps are read by stride): pass {hint}", DeprecationWarning, stacklevel=3
    )
    return source


class UPerNet(Segmentor):
    """Backbone -> ``UPerHead`` (+ ``FCNHead`` auxiliary head). ``forward`` -> (B, K, H, W).

    ``forward(images)`` (B, 3, H, W) returns the decode head's logits at the
    input size; ``forward_train`` also returns the auxiliary logits, to be
    weighted by ``auxiliary_weights`` (``(aux_weight,)``) in the loss.

    Args:
        backbone: a feature backbone (list of maps, finest first, with
            ``feature_info``) or a model name built with
            ``create_model(name, features_only=True, **backbone_kwargs)``.
        num_classes: K (150 for ADE20K).
        in_strides: strides fed to ``UPerHead`` (finest first).
        channels: ``UPerHead`` width (512).
        pool_scales: PPM pool sizes.
        dropout: Dropout2d before both classifiers.
        norm: norm of both heads: ``"bn"``, ``"syncbn"`` or ``"gn"``.
        aux_in_stride: stride of the map fed to the auxiliary ``FCNHead``
            (16: mmseg's ``in_index=2`` on a stride 4-32 pyramid); None builds
            no auxiliary head.
        aux_in_extra: read the auxiliary map from the backbone's extra maps
            (``extra_feature_info``) instead of the features: the first extra
            map at ``aux_in_stride``. For a CEDNet backbone with
            ``extra_stage_features``, ``aux_in_stride=8, aux_in_extra=True`` is
            the fused 1/8 map of stage m-1 (mmseg's output 4).
        aux_in_index: deprecated, the older positional name: an index into the
            features followed by the backbone's extras (mmseg's numbering),
            mapped to ``aux_in_stride`` / ``aux_in_extra`` with a
            ``DeprecationWarning``.
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
        aux_in_stride: int | None = 16,
        aux_in_extra: bool = False,
        aux_channels: int = 256,
        aux_weight: float = 0.4,
        backbone_kwargs: dict[str, Any] | None = None,
        size_divisor: int = 32,
        addon: str | nn.Module | None = None,
        neck: str | nn.Module | None = None,
        addon_kwargs: dict[str, Any] | None = None,
        neck_kwargs: dict[str, Any] | None = None,
        aux_in_index: int | None | object = _UNSET,
    ) -> None:
        backbone, addon, neck, info = build_chain(
            backbone,
            addon,
            neck,
            backbone_kwargs=backbone_kwargs,
            addon_kwargs=addon_kwargs,
            neck_kwargs=neck_kwargs,
        )
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
        source = None
        if aux_in_index is not _UNSET:
            source = _source_of_index(aux_in_index, info, extra_info)
        elif aux_in_stride is not None:
            source = _source_of_stride(aux_in_stride, aux_in_extra, info, extra_info)
        if source is not None:
            if source == "features":
                aux_info = info
                aux_stride = aux_in_stride if aux_in_index is _UNSET else info[aux_in_index]["reduction"]
            else:
                aux_info = [extra_info[int(source.split(":")[1])]]
                aux_stride = aux_info[0]["reduction"]
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
