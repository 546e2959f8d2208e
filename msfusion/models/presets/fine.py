"""Semantic FPN on ResNet-50, without and with FINE (FINE App. D, Table 7).

Paper: "Context-Guided Semantic Alignment for Feature Fusion Networks"
(FINE), arXiv 2606.14005, Appendix D: FINE inserted into Semantic FPN
(Kirillov et al., "Panoptic Feature Pyramid Networks", arXiv 1901.02446) for
Cityscapes semantic segmentation with OpenMMLab's recipe at 512x1024, mIoU
74.5 -> 76.4 (Table 7: 28.5 M -> 30.1 M parameters, 90.9 -> 91.7 GFLOPs).

The composition follows mmsegmentation's Semantic FPN configuration, which the
appendix's recipe uses: a ResNet-50 V1c backbone (deep stem of three 3x3
convs; timm's ``resnet50c``), an FPN with 256 channels on strides 4-32, and the
Semantic FPN head with 128 channels, BatchNorm (SyncBN there) and dropout 0.1.

FINE goes where the paper puts it (Sec. 5.3.2): at the l = 3 and l = 2 fusion
steps, whose F_low is at stride 16 (k = 1) and 8 (k = 2), with r = 2; the
stride-4 fusion step stays plain. ``fine={...}`` passes FINE options (e.g.
``{"preset": "earlier"}`` for the authors' earlier experimental version: 0.79 M
parameters per module, 1.58 M for the two, which is the +1.6 M of Table 7, and
+0.83 G multiply-adds at 512x1024 against the table's +0.8 G; the paper's
module adds 0.53 M and 0.54 G).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from msfusion.models.meta_arch.segmentor import build_segmentor
from msfusion.registry import PaperFigures, register_model

__all__ = ["FINE_STRIDES"]

# F_low strides of the fusion steps that get FINE (l = 2 and l = 3, Sec. 3 and 5.3.2).
FINE_STRIDES = (8, 16)


def _create_semantic_fpn(
    *,
    fine: bool | Mapping[str, Any],
    backbone: str = "resnet50c",
    num_classes: int = 19,
    out_chs: int = 256,
    channels: int = 128,
    fine_strides: tuple[int, ...] = FINE_STRIDES,
    backbone_kwargs: dict[str, Any] | None = None,
    neck_kwargs: dict[str, Any] | None = None,
    head_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    neck_kwargs = {"out_chs": out_chs, **(neck_kwargs or {})}
    if fine is not False:
        options = dict(fine) if isinstance(fine, Mapping) else {}
        neck_kwargs["align"] = {s: {"type": "fine", **options} for s in fine_strides}
    return build_segmentor(
        backbone,
        neck="fpn",
        head="semantic_fpn",
        num_classes=num_classes,
        backbone_kwargs=backbone_kwargs,
        neck_kwargs=neck_kwargs,
        head_kwargs={"channels": channels, "dropout": 0.1, "norm": "bn", **(head_kwargs or {})},
        **kwargs,
    )


def _cityscapes(params_m: float, gmacs: float) -> PaperFigures:
    return PaperFigures(
        params_m=params_m,
        gmacs=gmacs,
        input_size=(3, 512, 1024),
        source="FINE (arXiv 2606.14005) Table 7, Cityscapes",
        notes="19 classes; the +1.6 M / +0.8 G of FINE match the authors' earlier version (fine={'preset': "
        "'earlier'}); the paper's module (default) adds 0.53 M / 0.54 G",
    )


@register_model(kind="segmentor", backbone="resnet50c", paper=_cityscapes(28.5, 90.9))
def semantic_fpn_r50(**kwargs: Any) -> nn.Module:
    """Semantic FPN, ResNet-50 V1c (FINE Table 7 baseline, mIoU 74.5 on Cityscapes)."""
    return _create_semantic_fpn(fine=False, **kwargs)


@register_model(kind="segmentor", backbone="resnet50c", paper=_cityscapes(30.1, 91.7))
def semantic_fpn_r50_fine(fine: bool | Mapping[str, Any] = True, **kwargs: Any) -> nn.Module:
    """Semantic FPN, ResNet-50 V1c, FINE at the stride-16 and stride-8 fusions (Table 7, mIoU 76.4)."""
    return _create_semantic_fpn(fine=fine, **kwargs)


@register_model(kind="segmentor", backbone="resnet10t")
def test_semantic_fpn_fine(**kwargs: Any) -> nn.Module:
    """Tiny Semantic FPN + FINE for fast tests (ResNet-10-T, 32 channels, 2 heads of 16)."""
    return _create_semantic_fpn(
        fine=kwargs.pop("fine", True), backbone="resnet10t", out_chs=32, channels=16, **{"num_classes": 5, **kwargs}
    )
