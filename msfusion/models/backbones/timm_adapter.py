"""Any timm model as an msfusion backbone (DESIGN.md "Features").

One adapter, as segmentation_models_pytorch's ``TimmUniversalEncoder``: timm's
``features_only`` API gives the feature maps, and its ``feature_info`` gives
channels and strides, which we expose in our ``feature_info`` format. Feature
maps are always returned channels-first (B, C, H, W), fine to coarse, whatever
the timm model's native layout (NHWC models such as Swin are permuted).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import timm
from torch import Tensor, nn

from msfusion.layers import check_image_batch

__all__ = ["TimmFeatures"]


class TimmFeatures(nn.Module):
    """A timm model's multi-scale features.

    Args:
        name: a timm model name (``timm.list_models()``).
        out_indices: which feature levels to return (timm's indices).
        in_chans: input channels.
        pretrained: not supported offline; load weights with ``load_checkpoint``.
        **kwargs: passed to ``timm.create_model``.
    """

    def __init__(
        self,
        name: str,
        out_indices: Sequence[int] | None = None,
        in_chans: int = 3,
        pretrained: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if pretrained:
            raise ValueError("timm weights are not downloaded; build without and call msfusion.load_checkpoint")
        kwargs.pop("num_classes", None)
        create_kwargs: dict[str, Any] = dict(features_only=True, in_chans=in_chans, **kwargs)
        if out_indices is not None:
            create_kwargs["out_indices"] = tuple(out_indices)
        self.model = timm.create_model(name, **create_kwargs)
        self.in_chans = in_chans
        self.feature_info = [
            dict(chs=int(c), reduction=int(r))
            for c, r in zip(self.model.feature_info.channels(), self.model.feature_info.reduction(), strict=True)
        ]
        self.out_channels = [f["chs"] for f in self.feature_info]
        self._nhwc = getattr(self.model, "output_fmt", "NCHW") == "NHWC" or "NHWC" in str(
            getattr(self.model, "output_fmt", "")
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        check_image_batch(x, self.in_chans)
        feats = self.model(x)
        if self._nhwc:
            feats = [f.permute(0, 3, 1, 2).contiguous() for f in feats]
        return list(feats)
