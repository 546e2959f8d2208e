"""The feature chain ``backbone -> [add-on] -> [neck]``, written once for every task model.

Every msfusion model runs the same chain before its task head: a backbone that
returns maps fine to coarse (the feature contract of ``msfusion.layers.features``),
an optional add-on (MSCSA, "Vision Backbone Enhancement via Multi-Stage
Cross-Scale Attention", Sec. 3) and an optional neck (FPN,
PAN, with FINE at its fusion steps). ``FeatureChain`` builds that chain from
modules, checks each part's ``feature_info`` once, exposes the last
producer's ``feature_info`` and the input constraint (``size_divisor``,
``min_size``), and pads an input to that constraint.

Task models *are* chains (``Segmentor``, ``Classifier`` and the detectors'
``DetectorBackbone`` subclass it), as detectron2's ``FPN`` is still a
``Backbone``: the parts stay the attributes ``backbone``, ``addon`` and
``neck``, so state-dict keys and official-checkpoint key maps are those of
every earlier release.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from msfusion.layers import check_feature_info
from msfusion.layers.features import FeatureInfo

__all__ = ["FeatureChain", "pad_to_size_constraint"]


def pad_to_size_constraint(images: Tensor, size_divisor: int, min_size: int = 0) -> Tensor:
    """Zero-pad (bottom and right) to a multiple of ``size_divisor`` and to at least ``min_size`` per side.

    Zero is the mean colour after normalisation, as mmsegmentation's and
    torchvision's padding. The arithmetic is on sizes only (no comparison), so
    a traced or exported graph pads correctly at every input size.

    Args:
        images: (B, C, H, W).
        size_divisor: the padded H and W are multiples of it.
        min_size: the padded H and W are at least this (only applied when it
            exceeds ``size_divisor``, which the first pad already reaches).

    Returns:
        (B, C, H', W') with H' >= H, W' >= W.
    """
    h, w = images.shape[-2], images.shape[-1]
    d = int(size_divisor)
    if d > 1:
        images = F.pad(images, (0, (d - w % d) % d, 0, (d - h % d) % d))
    if min_size > d:
        h, w = images.shape[-2], images.shape[-1]
        # max(x, 0) written as (x + |x|) // 2: arithmetic on sizes stays in a traced graph, a comparison would not.
        short_w, short_h = min_size - w, min_size - h
        images = F.pad(images, (0, (short_w + abs(short_w)) // 2, 0, (short_h + abs(short_h)) // 2))
    return images


class FeatureChain(nn.Module):
    """``backbone -> [add-on] -> [neck]`` with the last producer's ``feature_info``.

    ``forward(images)`` with images (B, C, H, W) whose H and W meet the input
    constraint (see ``pad``) returns the last producer's maps, a list fine to
    coarse with (B, chs_i, H/s_i, W/s_i) per ``feature_info`` entry.

    Args:
        backbone: returns ``list[Tensor]`` fine to coarse and has ``feature_info``;
            may declare ``size_divisor``, ``min_size``, ``in_chans`` and, for
            extra maps a head reads besides the pyramid (CEDNet's earlier-stage
            1/8 maps), ``extra_feature_info`` with ``forward_with_extras``.
        addon: optional module list -> list on the backbone's maps (e.g. MSCSA).
        neck: optional module list -> list on the previous maps (e.g. FPN).
        size_divisor: inputs are padded to a multiple of this and of the
            backbone's own ``size_divisor``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        addon: nn.Module | None = None,
        neck: nn.Module | None = None,
        size_divisor: int = 1,
    ) -> None:
        super().__init__()
        info = None
        for producer, role in ((backbone, "backbone"), (addon, "add-on"), (neck, "neck")):
            if producer is not None:
                info = check_feature_info(
                    getattr(producer, "feature_info", None), f"the {role} {type(producer).__name__}"
                )
        self.backbone = backbone
        self.addon = addon
        self.neck = neck
        self._chain_feature_info: list[FeatureInfo] = list(info)
        self.size_divisor = math.lcm(int(size_divisor), int(getattr(backbone, "size_divisor", 1) or 1))
        self.min_size = int(getattr(backbone, "min_size", 0) or 0)
        self.in_chans = int(getattr(backbone, "in_chans", 3))

    @property
    def feature_info(self) -> list[FeatureInfo]:
        """One ``dict(chs, reduction, module)`` per output map of the last producer, fine to coarse."""
        return self._chain_feature_info

    @property
    def has_extras(self) -> bool:
        """Whether the backbone exposes extra maps (``forward_with_extras``) beside its pyramid."""
        return bool(getattr(self.backbone, "extra_feature_info", None))

    def pad(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> zero-padded (bottom, right) to ``size_divisor`` and ``min_size``."""
        return pad_to_size_constraint(images, self.size_divisor, self.min_size)

    def fuse(self, feats: list[Tensor]) -> list[Tensor]:
        """The backbone's maps -> the add-on's, then the neck's (each optional), fine to coarse."""
        if self.addon is not None:
            feats = self.addon(feats)
        if self.neck is not None:
            feats = self.neck(feats)
        return list(feats)

    def forward_features(self, images: Tensor) -> list[Tensor]:
        """(B, C, H, W) images meeting the constraint -> the last producer's maps, fine to coarse."""
        return self.fuse(self.backbone(images))

    def forward_with_extras(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """(B, C, H, W) images meeting the constraint -> (the last producer's maps, the backbone's extra maps).

        The extra maps are what a backbone exposes besides its pyramid for
        auxiliary heads (CEDNet's earlier-stage 1/8 maps); empty for others.
        """
        if not self.has_extras:
            return self.forward_features(images), []
        feats, extras = self.backbone.forward_with_extras(images)
        return self.fuse(feats), list(extras)

    def forward(self, images: Tensor) -> list[Tensor]:
        return self.forward_features(images)
