"""The MSCA head of SegNeXt's appendix: the LightHamHead with MSCA in place of the Hamburger.

Paper: SegNeXt (arXiv 2209.08575), appendix Sec. 2 and Table 2 ("Ablation about
MSCA Head", COCO-Stuff): the Hamburger of the decoder (Fig. 3c) is replaced by
multi-scale convolutional attention, to show that a CNN encoder needs a head
with a global receptive field. SegNeXt publishes no code for it.

Design, chosen by the published counts: the squeezed features go through
MSCAN's attention sub-layer (1x1, GELU, MSCA, 1x1, inner shortcut; Fig. 2b and
``msfusion.layers.msca``), then ``align`` and the classifier. That
sub-layer has 3C^2 + O(C) parameters against the Hamburger's 2C^2, and trades
the NMF products for one more 1x1 conv and the depthwise branches, which
reproduces the table: at 512x512 with 171 classes SegNeXt-T/S/B/L count
4.36/14.03/27.97/50.11 M and 6.71/15.97/33.68/69.91 GMACs against the published
4.4/14.0/28.0/50.1 M and 6.7/15.9/33.6/69.8 G. A full MSCAN block (with its
feed-forward network, 8-11 C^2) would give 32.9 M for B and is ruled out.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from msfusion.layers import FeatureInfo
from msfusion.layers.msca import MSCA, STRIP_KERNELS, SpatialAttention
from msfusion.models.heads.ham import LightHamHead
from msfusion.registry import register_model

__all__ = ["MSCAContext", "MSCAHead"]


class MSCAContext(SpatialAttention):
    """MSCAN's attention sub-layer for C channels: (B, C, H, W) -> (B, C, H, W).

    ``proj_1`` (1x1), GELU, MSCA (``spatial_gating_unit``), ``proj_2`` (1x1),
    plus the input; the keys are those of an MSCAN block's ``attn``.

    Args:
        chs: channels C.
        branch_kernels: MSCA strip-branch kernels, a subset of (7, 11, 21).
    """

    def __init__(self, chs: int, branch_kernels: Sequence[int] = STRIP_KERNELS) -> None:
        super().__init__(chs, MSCA(chs, branch_kernels))


class MSCAHead(LightHamHead):
    """SegNeXt's decoder (Fig. 3c) with MSCA as the context module (appendix Table 2).

    Input: the backbone's feature list (finest first). Output: logits
    (B, num_classes, h, w) at the first selected stage's resolution (1/8).
    Stages are resized to that size, concatenated, squeezed (1x1 + GN + ReLU),
    passed through ``MSCAContext`` (kept under the key ``hamburger``, as every
    context module of ``LightHamHead``), aligned (1x1 + GN + ReLU) and classified.

    Args:
        feature_info: the producer's ``feature_info``.
        num_classes: classes K (171 for COCO-Stuff in the appendix).
        in_strides: strides read (default 8, 16, 32: stages 2-4).
        channels: channels of ``align`` and the classifier input.
        ham_channels: channels of the squeeze conv and MSCA (default: ``channels``).
        dropout: Dropout2d rate before the classifier.
        norm: norm of ``squeeze`` and ``align``.
        branch_kernels: MSCA strip-branch kernels.
    """

    def __init__(
        self,
        feature_info: Sequence[FeatureInfo],
        num_classes: int,
        in_strides: Sequence[int] = (8, 16, 32),
        channels: int = 256,
        ham_channels: int | None = None,
        dropout: float = 0.1,
        norm: str = "gn",
        branch_kernels: Sequence[int] = STRIP_KERNELS,
    ) -> None:
        super().__init__(
            feature_info,
            num_classes,
            in_strides=in_strides,
            channels=channels,
            ham_channels=ham_channels or channels,
            dropout=dropout,
            norm=norm,
            context="msca",
            context_kwargs=dict(branch_kernels=tuple(branch_kernels)),
        )


@register_model(kind="head")
def msca(feature_info: Sequence[FeatureInfo], num_classes: int, **kwargs: Any) -> MSCAHead:
    """SegNeXt's appendix MSCA head: strides 8, 16, 32 -> logits at 1/8."""
    return MSCAHead(feature_info, num_classes, **kwargs)
