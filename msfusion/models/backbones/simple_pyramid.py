"""The simple feature pyramid of ViTDet: multi-scale maps from one single-scale map.

Li, Mao, Girshick, He, "Exploring Plain Vision Transformer Backbones for Object
Detection", ECCV 2022, arXiv:2203.16527, Sec. 3 ("Simple feature pyramid") and
Fig. 2 (right). A plain ViT has one map at stride 16; ViTDet builds the pyramid
from the last block's map alone, with no top-down or lateral fusion, in
parallel branches per scale:

- 1/4 (scale 4): two 2x2 stride-2 deconvolutions, with LayerNorm and GELU
  between them; channels halve at each (C -> C/2 -> C/4);
- 1/8 (scale 2): one 2x2 stride-2 deconvolution (C -> C/2);
- 1/16 (scale 1): the map itself;
- 1/32 (scale 1/2): 2x2 stride-2 max pooling.

Each branch then goes through a 1x1 convolution and a 3x3 convolution (FPN's
lateral and output convolutions), each followed by a LayerNorm over channels,
to ``out_chs`` channels (256, as in FPN). The convolutions before a norm have
no bias. There is no fusion between branches: the paper finds the plain
parallel branches sufficient on a plain ViT (abstract, finding (i)).
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction

from torch import Tensor, nn

from msfusion.layers import LayerNorm2d

__all__ = ["SimpleFeaturePyramid", "PYRAMID_SCALES"]

# Sec. 3: maps of scales {1/4, 1/8, 1/16, 1/32} from a stride-16 map.
PYRAMID_SCALES = (4.0, 2.0, 1.0, 0.5)


def _resample(in_chs: int, scale: float) -> tuple[nn.Module, int]:
    """The branch that brings the map to ``scale`` times its resolution; returns it and its channels."""
    if scale == 4.0:
        return (
            nn.Sequential(
                nn.ConvTranspose2d(in_chs, in_chs // 2, kernel_size=2, stride=2),
                LayerNorm2d(in_chs // 2),
                nn.GELU(),
                nn.ConvTranspose2d(in_chs // 2, in_chs // 4, kernel_size=2, stride=2),
            ),
            in_chs // 4,
        )
    if scale == 2.0:
        return nn.ConvTranspose2d(in_chs, in_chs // 2, kernel_size=2, stride=2), in_chs // 2
    if scale == 1.0:
        return nn.Identity(), in_chs
    if scale == 0.5:
        return nn.MaxPool2d(kernel_size=2, stride=2), in_chs
    raise ValueError(f"simple feature pyramid scale {scale} is not one of {PYRAMID_SCALES} (ViTDet, Sec. 3)")


class PyramidLevel(nn.Module):
    """One branch of the pyramid: resample, then 1x1 conv + LN, 3x3 conv + LN.

    Args:
        in_chs: channels of the single-scale map.
        out_chs: channels of the output map.
        scale: resolution of the output relative to the input (4, 2, 1 or 0.5).
    """

    def __init__(self, in_chs: int, out_chs: int = 256, scale: float = 1.0) -> None:
        super().__init__()
        self.resample, mid_chs = _resample(in_chs, scale)
        self.lateral = nn.Conv2d(mid_chs, out_chs, kernel_size=1, bias=False)
        self.lateral_norm = LayerNorm2d(out_chs)
        self.output = nn.Conv2d(out_chs, out_chs, kernel_size=3, padding=1, bias=False)
        self.output_norm = LayerNorm2d(out_chs)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_chs, h, w) -> (B, out_chs, h * scale, w * scale)."""
        x = self.resample(x)
        x = self.lateral_norm(self.lateral(x))
        return self.output_norm(self.output(x))


class SimpleFeaturePyramid(nn.ModuleList):
    """ViTDet's simple feature pyramid (arXiv:2203.16527, Sec. 3, Fig. 2).

    A list of ``PyramidLevel`` branches, so that level ``i`` is the submodule
    ``str(i)`` (``simple_pyramid.<i>`` inside ``TimmFeatures``). Levels are
    ordered finest first.

    Args:
        in_chs: channels of the single-scale map (the ViT's width).
        in_stride: stride of that map (16 for a ViT with 16x16 patches).
        out_chs: channels of every output map (256 in the paper).
        scales: output resolutions relative to the input map, a subset of
            ``(4.0, 2.0, 1.0, 0.5)``; ``in_stride / scale`` must be an integer.

    Attributes:
        feature_info: ``[{"chs", "reduction", "module"}]`` per level, fine to
            coarse; ``module`` is the level's index as a string.
    """

    def __init__(
        self,
        in_chs: int,
        in_stride: int,
        out_chs: int = 256,
        scales: Sequence[float] = PYRAMID_SCALES,
    ) -> None:
        scales = sorted({float(s) for s in scales}, reverse=True)
        if not scales:
            raise ValueError(f"simple feature pyramid needs at least one scale from {PYRAMID_SCALES}")
        bad = [s for s in scales if s not in PYRAMID_SCALES]
        if bad:
            raise ValueError(f"simple feature pyramid scales {bad} are not in {PYRAMID_SCALES} (ViTDet, Sec. 3)")
        if 4.0 in scales and in_chs % 4 or 2.0 in scales and in_chs % 2:
            raise ValueError(
                f"the deconvolutions of scales 4 and 2 divide the channels by 4 and 2; {in_chs} channels do not allow it"
            )
        strides = [Fraction(in_stride) / Fraction(s) for s in scales]
        fractional = [s for s, r in zip(scales, strides, strict=True) if r.denominator != 1]
        if fractional:
            raise ValueError(
                f"scales {fractional} of a stride-{in_stride} map give fractional strides; "
                f"use scales whose stride {in_stride}/scale is an integer"
            )
        super().__init__(PyramidLevel(in_chs, out_chs, s) for s in scales)
        self.scales = tuple(scales)
        self.feature_info = [dict(chs=out_chs, reduction=int(r), module=str(i)) for i, r in enumerate(strides)]

    def forward(self, x: Tensor) -> list[Tensor]:
        """(B, in_chs, H/s, W/s) -> [(B, out_chs, H/r, W/r) for each level's stride r], finest first."""
        return [level(x) for level in self]
