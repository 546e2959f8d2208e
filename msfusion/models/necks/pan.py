"""Path Aggregation Network neck: FPN plus a bottom-up path.

Paper: Liu, Qi, Qin, Shi, Jia, "Path Aggregation Network for Instance
Segmentation", CVPR 2018 (arXiv 1803.01534), Sec. 3.1 / Fig. 2(b): after the
FPN's top-down path (``P_2 .. P_5``), a bottom-up path starts from
``N_2 = P_2``; each block takes the finer ``N_i``, applies a 3x3 stride-2
conv, adds ``P_{i+1}`` and applies another 3x3 conv::

    N_{i+1} = conv3x3(conv3x3_stride2(N_i) + P_{i+1})

with 256 channels throughout and every conv followed by a ReLU (Sec. 3.1:
"All convolutional layers are followed by a ReLU"). The next block reads the
output ``N_{i+1}`` of the previous one, as the paper writes; mmdetection's
``PAFPN`` instead downsamples the sum before the 3x3 conv and has no ReLU
(``act=None``).

The FPN part is ``msfusion.models.necks.fpn.FPN`` with its alignment hook at
every top-down fusion (``align`` / ``fine``); extra levels come from the
coarsest bottom-up output ``N_5`` (``extra_source="p5"``) or the coarsest
input. Parameter names follow mmdetection's ``PAFPN`` (``lateral_convs``,
``fpn_convs``, ``downsample_convs``, ``pafpn_convs``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from msfusion.layers import ConvNormAct, FeatureInfo
from msfusion.models.necks.fpn import FPN, _init_weights
from msfusion.registry import register_model

__all__ = ["PAN"]


class PAN(FPN):
    """PANet's neck (Liu et al., arXiv 1803.01534, Sec. 3.1): FPN, then bottom-up path augmentation.

    Forward: ``P = FPN top-down(C)`` (with the alignment hook, see ``FPN``);
    ``N_0 = P_0``; ``N_{i+1} = pafpn_convs[i](resize(downsample_convs[i](N_i))
    + P_{i+1})``, where ``resize`` is a no-op unless a backbone floors odd
    sizes (the stride-2 conv gives ``ceil(H/2)``; the sum then takes
    ``P_{i+1}``'s size by nearest resizing); then the extra levels from
    ``N_{L-1}`` (or from the coarsest input with ``extra_source="c5"``).

    Input: the producer's full list (finest first). Output:
    ``len(feature_info)`` maps (B, out_chs, H_i, W_i), finest first.

    Args:
        feature_info, *args, **kwargs: ``FPN``'s arguments (``out_chs``,
            ``in_strides``, ``extra_levels``, ``extra_type``, ``extra_source``,
            ``relu_before_extra``, ``norm``, ``align``, ``align_kwargs``,
            ``fine``), in its order; the bottom-up convs take ``out_chs`` and
            ``norm`` too.
        act: activation after each bottom-up conv (``"relu"`` as the paper;
            ``None`` as mmdetection's ``PAFPN``).
    """

    def __init__(
        self, feature_info: Sequence[FeatureInfo], *args: Any, act: str | None = "relu", **kwargs: Any
    ) -> None:
        super().__init__(feature_info, *args, **kwargs)
        steps = len(self.in_strides) - 1
        c, norm = self.out_chs, self.norm
        self.downsample_convs = nn.ModuleList(ConvNormAct(c, c, 3, stride=2, norm=norm, act=act) for _ in range(steps))
        self.pafpn_convs = nn.ModuleList(ConvNormAct(c, c, 3, norm=norm, act=act) for _ in range(steps))
        self.downsample_convs.apply(_init_weights)
        self.pafpn_convs.apply(_init_weights)
        self.feature_info = self._output_info(["fpn_convs.0"] + [f"pafpn_convs.{i}" for i in range(steps)])

    def forward_bottom_up(self, pyramid: Sequence[Tensor]) -> list[Tensor]:
        """FPN outputs ``P_i`` -> ``N_i``, same shapes (B, out_chs, H_i, W_i), finest first."""
        outs = [pyramid[0]]
        for i, (down, conv) in enumerate(zip(self.downsample_convs, self.pafpn_convs, strict=True)):
            lateral = pyramid[i + 1]
            x = down(outs[-1])
            if x.shape[-2:] != lateral.shape[-2:]:
                x = F.interpolate(x, size=lateral.shape[-2:], mode="nearest")
            outs.append(conv(x + lateral))
        return outs

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """Producer features (full list, finest first) -> ``len(feature_info)`` maps (B, out_chs, ., .)."""
        inputs = self.select(features)
        outs = self.forward_bottom_up(self.forward_top_down(inputs))
        return outs + self.forward_extra(outs, inputs)


@register_model(kind="neck")
def pan(feature_info: Sequence[FeatureInfo], **kwargs: Any) -> PAN:
    """PAN (Liu et al., arXiv 1803.01534, Sec. 3.1): FPN + bottom-up path, 256 channels; ``fine=True`` adds FINE."""
    return PAN(feature_info, **kwargs)
