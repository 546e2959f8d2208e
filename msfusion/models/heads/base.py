"""The base class of decode heads: inputs chosen by stride, and the classifier.

A head is built from the ``feature_info`` of the last feature producer
(backbone, add-on or neck) and names the strides it reads, so a head never
depends on how many maps a backbone returns or in which position a stride
sits (the feature contract: maps finest first, each described by
``{"chs", "reduction", "module"}``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from msfusion.layers import FeatureInfo, check_feature_info, indices_for_strides

__all__ = ["DecodeHead"]


class DecodeHead(nn.Module):
    """Input selection by stride and the classifier shared by the segmentation heads.

    ``select(features)`` returns the maps of ``in_strides`` (in that order) from
    the producer's full list; ``cls_seg`` is Dropout2d then a 1x1 conv, named
    ``conv_seg`` as in mmsegmentation so that its checkpoints load.

    Args:
        feature_info: the producer's ``feature_info`` (finest first).
        num_classes: classes K.
        in_strides: strides of the maps the head reads; each must be in
            ``feature_info`` (``ValueError`` listing the strides there if not).
        channels: channels entering the classifier.
        dropout: Dropout2d probability before the classifier.
    """

    def __init__(
        self,
        feature_info: Sequence[FeatureInfo],
        num_classes: int,
        in_strides: Sequence[int],
        channels: int,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        info = check_feature_info(feature_info, f"the features given to {owner}")
        if int(num_classes) < 1:
            raise ValueError(f"{owner}: num_classes must be at least 1, got {num_classes}")
        self.in_index = indices_for_strides(info, in_strides, owner)
        self.in_strides = tuple(int(s) for s in in_strides)
        self.in_channels = [info[i]["chs"] for i in self.in_index]
        self.num_features = len(info)
        self.channels = channels
        self.num_classes = int(num_classes)
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def select(self, features: Sequence[Tensor]) -> list[Tensor]:
        """The maps this head reads, from the producer's full list (finest first)."""
        if len(features) != self.num_features:
            raise ValueError(
                f"{type(self).__name__} was built for {self.num_features} feature maps, got {len(features)}; "
                "build the head from the feature_info of the module that feeds it"
            )
        return [features[i] for i in self.in_index]

    def cls_seg(self, x: Tensor) -> Tensor:
        return self.conv_seg(self.dropout(x))
