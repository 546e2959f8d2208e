"""Backbones with the MSCSA add-on: the Table 7 configurations, as classifiers and backbones.

Paper: "Vision Backbone Enhancement via Multi-Stage Cross-Scale Attention",
Shang et al., arXiv 2308.05872. Table 7 gives each backbone's MSCSA
configuration: pooling size, squeeze ratio, depth, heads, head dimension and
MLP ratio.

- ``<backbone>_mscsa`` is a classifier (Fig. 4, App. A): the backbone, MSCSA
  "in parallel" reading all four stages, and a global-average-pool + Linear
  head on the MSCSA output. With ``features_only=True`` it is a backbone
  instead (Fig. 5): the backbone's four maps, each fused with MSCSA's output,
  with the backbone's channels and strides.
- ResNet-18/50, PVTv2-B0/B1/B2, Swin-T and ConvNeXt-T are timm's models. They
  take the stride-4 to stride-32 stages; ResNet's stride-2 stem output is left
  out.
- CoaT Tiny/Small + MSCSA (Table 6/7): timm's CoaT without its parallel
  blocks, i.e. only the four serial stages. MSCSA takes the place of the
  parallel blocks and pools to 1/16 for classification and 1/32 for dense
  prediction. The 1/32 map is resized up to 1/16 bilinearly (the official
  code's resizing).
- ``semantic_fpn_pvt_v2_b{0,1,2}[_mscsa]``: the Semantic FPN segmentors of
  Table 3 (App. C.3), with 150 ADE20K classes by default.

Not provided: the TopFormer, P2T-Tiny and Shunted-T rows of Table 7. Neither
timm nor msfusion has those backbones. TopFormer+MSCSA also replaces
TopFormer's own Scale-Aware Semantics Extractor and keeps its segmentation
head, so it is a different model rather than an add-on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.models.coat import CoaT
from torch import Tensor, nn

from msfusion.layers import check_image_batch
from msfusion.layers.features import select_features
from msfusion.models.addons import mscsa as _addon
from msfusion.models.addons.mscsa import MSCSA
from msfusion.models.meta_arch.classifier import Classifier
from msfusion.models.meta_arch.segmentor import build_segmentor
from msfusion.registry import PaperFigures, create_model, register_model

__all__ = ["TABLE7", "CoaTSerial", "BackboneWithAddon"]

# Table 7's rows of the backbones built here (the add-on's table; TopFormer's rows: msfusion.models.presets.topformer).
TABLE7: dict[str, dict[str, Any]] = {k: v for k, v in _addon.TABLE7.items() if not k.startswith("topformer")}

# Our family name -> (timm model name, feature kwargs). ResNet's stride-2 stem output is not a stage.
_TIMM_BACKBONES: dict[str, tuple[str, dict[str, Any]]] = {
    "resnet18": ("resnet18", dict(out_indices=(1, 2, 3, 4))),
    "resnet50": ("resnet50", dict(out_indices=(1, 2, 3, 4))),
    "pvt_v2_b0": ("pvt_v2_b0", {}),
    "pvt_v2_b1": ("pvt_v2_b1", {}),
    "pvt_v2_b2": ("pvt_v2_b2", {}),
    "swin_t": ("swin_tiny_patch4_window7_224", {}),
    "convnext_t": ("convnext_tiny", {}),
}

# CoaT paper (arXiv 2104.06399) Table 1 configurations, as in timm: serial part only.
_COAT: dict[str, dict[str, Any]] = {
    "coat_tiny": dict(embed_dims=(152, 152, 152, 152), serial_depths=(2, 2, 2, 2), num_heads=8, mlp_ratios=(4, 4, 4, 4)),
    "coat_small": dict(embed_dims=(152, 320, 320, 320), serial_depths=(2, 2, 2, 2), num_heads=8, mlp_ratios=(4, 4, 4, 4)),
}  # fmt: skip


class CoaTSerial(nn.Module):
    """CoaT's four serial stages as a feature backbone: its parallel blocks are left out.

    Built from timm's ``CoaT`` with ``parallel_depth=0``, which is CoaT with the
    parallel blocks removed. MSCSA takes their place (MSCSA paper, Table 6/7).
    ``forward`` runs the serial blocks at any input size. Each patch embedding
    pads its input to a multiple of its patch size, and the class token is
    dropped from each stage's output. Images (B, 3, H, W) give maps
    (B, C_i, ceil(H / s), ceil(W / s)) for s = 4, 8, 16, 32.

    Args:
        embed_dims, serial_depths, num_heads, mlp_ratios: CoaT's configuration.
        in_chans: input channels.
        drop_path_rate: stochastic depth of the serial blocks.
    """

    def __init__(
        self,
        embed_dims: Sequence[int] = (152, 152, 152, 152),
        serial_depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: int = 8,
        mlp_ratios: Sequence[float] = (4, 4, 4, 4),
        in_chans: int = 3,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.coat = CoaT(
            patch_size=4,
            in_chans=in_chans,
            embed_dims=tuple(embed_dims),
            serial_depths=tuple(serial_depths),
            parallel_depth=0,
            num_heads=num_heads,
            mlp_ratios=tuple(mlp_ratios),
            drop_path_rate=drop_path_rate,
            return_interm_layers=True,
            out_features=["x1_nocls", "x2_nocls", "x3_nocls", "x4_nocls"],
        )
        self.in_chans = in_chans
        self.feature_info = [
            dict(chs=int(c), reduction=4 * 2**i, module=f"coat.serial_blocks{i + 1}") for i, c in enumerate(embed_dims)
        ]

    def forward(self, x: Tensor) -> list[Tensor]:
        check_image_batch(x, self.in_chans)
        feats = []
        for i in range(1, 5):
            embed = getattr(self.coat, f"patch_embed{i}")
            p = embed.patch_size
            x = F.pad(x, (0, (p[1] - x.shape[-1] % p[1]) % p[1], 0, (p[0] - x.shape[-2] % p[0]) % p[0]))
            x = embed.proj(x)
            b, c, h, w = x.shape
            tokens = embed.norm(x.flatten(2).transpose(1, 2))
            cls = getattr(self.coat, f"cls_token{i}").expand(b, -1, -1)
            tokens = torch.cat([cls, tokens], dim=1)
            for block in getattr(self.coat, f"serial_blocks{i}"):
                tokens = block(tokens, size=(h, w))
            x = tokens[:, 1:].transpose(1, 2).reshape(b, c, h, w)
            feats.append(x)
        return feats


class BackboneWithAddon(nn.Module):
    """A backbone followed by an add-on, exposed as one feature backbone.

    This is what ``create_model("<backbone>_mscsa", features_only=True)`` returns.
    The outputs are the add-on's maps, fine to coarse, with the add-on's
    ``feature_info``; for dense MSCSA these are the backbone's channels and strides.

    Args:
        backbone: feature producer.
        addon: module list -> list built on ``backbone.feature_info``.
        out_indices: which of the add-on's outputs to return (all by default).
    """

    def __init__(self, backbone: nn.Module, addon: nn.Module, out_indices: Sequence[int] | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.addon = addon
        info = [dict(f, module=f"addon.{f['module']}") for f in addon.feature_info]
        self.out_indices, self.feature_info = select_features(info, out_indices)
        self.in_chans = getattr(backbone, "in_chans", 3)
        # The add-on takes maps of any size; the input constraint is the backbone's.
        for constraint in ("size_divisor", "min_size"):
            if hasattr(backbone, constraint):
                setattr(self, constraint, getattr(backbone, constraint))

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = self.addon(self.backbone(x))
        return [feats[i] for i in self.out_indices]


def _create_backbone(family: str, **kwargs: Any) -> nn.Module:
    if family in _COAT:
        return CoaTSerial(**{**_COAT[family], **kwargs})
    name, feature_kwargs = _TIMM_BACKBONES[family]
    return create_model(name, features_only=True, **{**feature_kwargs, **kwargs})


def _create_mscsa_model(
    family: str,
    *,
    num_classes: int = 1000,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Backbone + MSCSA with Table 7's configuration; ``kwargs`` override it (e.g. ablations)."""
    backbone = _create_backbone(family, **(backbone_kwargs or {}))
    cfg = dict(TABLE7[family])
    dense_pool_stride = cfg.pop("dense_pool_stride", cfg["pool_stride"])
    if features_only:
        cfg["pool_stride"] = dense_pool_stride
        cfg.update(kwargs)
        addon = MSCSA(backbone.feature_info, mode="dense", allow_upsample=True, **cfg)
        return BackboneWithAddon(backbone, addon, out_indices)
    if out_indices is not None:
        raise ValueError("out_indices only applies with features_only=True")
    cfg.update(kwargs)
    addon = MSCSA(backbone.feature_info, mode="classification", allow_upsample=True, **cfg)
    return Classifier(backbone, num_classes, addon=addon)


def _imagenet(base: float, gmacs: float) -> PaperFigures:
    return PaperFigures(
        gmacs=gmacs,
        input_size=(3, 224, 224),
        source="MSCSA Table 6 (ImageNet-1k, 224x224)",
        notes=f"baseline without MSCSA: {base} GFLOPs",
        extra={"baseline_gmacs": base},
    )


@register_model(kind="classifier")
def resnet18_mscsa(**kwargs: Any) -> nn.Module:
    """ResNet-18 + MSCSA (Table 7: 1/32, squeeze 5/8, depth 1, 8 heads, head dim 24, MLP 2)."""
    return _create_mscsa_model("resnet18", **kwargs)


@register_model(kind="classifier", paper=_imagenet(4.1, 4.6))
def resnet50_mscsa(**kwargs: Any) -> nn.Module:
    """ResNet-50 + MSCSA (Table 7: 1/32, squeeze 1/4, depth 1, 8 heads, head dim 32, MLP 2)."""
    return _create_mscsa_model("resnet50", **kwargs)


@register_model(kind="classifier", paper=_imagenet(0.57, 0.65))
def pvt_v2_b0_mscsa(**kwargs: Any) -> nn.Module:
    """PVTv2-B0 + MSCSA (Table 7: 1/32, squeeze 3/4, depth 1, 8 heads, head dim 15, MLP 2)."""
    return _create_mscsa_model("pvt_v2_b0", **kwargs)


@register_model(kind="classifier", paper=_imagenet(2.1, 2.3))
def pvt_v2_b1_mscsa(**kwargs: Any) -> nn.Module:
    """PVTv2-B1 + MSCSA (Table 7: 1/32, squeeze 5/8, depth 1, 8 heads, head dim 24, MLP 2)."""
    return _create_mscsa_model("pvt_v2_b1", **kwargs)


@register_model(kind="classifier")
def pvt_v2_b2_mscsa(**kwargs: Any) -> nn.Module:
    """PVTv2-B2 + MSCSA (Table 7: 1/32, no squeeze, depth 1, 8 heads, head dim 35, MLP 2)."""
    return _create_mscsa_model("pvt_v2_b2", **kwargs)


@register_model(kind="classifier", paper=_imagenet(4.4, 5.0))
def swin_t_mscsa(**kwargs: Any) -> nn.Module:
    """Swin-T + MSCSA (Table 7: 1/32, squeeze 3/4, depth 1, 12 heads, head dim 28, MLP 2)."""
    return _create_mscsa_model("swin_t", **kwargs)


@register_model(kind="classifier", paper=_imagenet(4.5, 5.1))
def convnext_t_mscsa(**kwargs: Any) -> nn.Module:
    """ConvNeXt-T + MSCSA (Table 7: 1/32, squeeze 3/4, depth 1, 12 heads, head dim 28, MLP 2)."""
    return _create_mscsa_model("convnext_t", **kwargs)


@register_model(kind="classifier", paper=_imagenet(4.4, 4.4))
def coat_tiny_mscsa(**kwargs: Any) -> nn.Module:
    """CoaT Tiny, parallel blocks replaced by MSCSA (Table 7: 1/16 (1/32), depth 3, 8 heads, head dim 22, MLP 1.5)."""
    return _create_mscsa_model("coat_tiny", **kwargs)


@register_model(kind="classifier", paper=_imagenet(13.0, 13.0))
def coat_small_mscsa(**kwargs: Any) -> nn.Module:
    """CoaT Small, parallel blocks replaced by MSCSA (Table 7: 1/16 (1/32), depth 3, 8 heads, head dim 52, MLP 2)."""
    return _create_mscsa_model("coat_small", **kwargs)


def _create_semantic_fpn(
    family: str,
    *,
    mscsa: bool,
    num_classes: int = 150,
    backbone_kwargs: dict[str, Any] | None = None,
    addon_kwargs: dict[str, Any] | None = None,
    neck_kwargs: dict[str, Any] | None = None,
    head_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Semantic FPN on a backbone, with or without dense MSCSA (Table 3, App. C.3).

    The FPN has 256 channels and the head has 128 channels with dropout 0.1,
    as PVTv2's Semantic FPN configuration has. BN stands in for its SyncBN,
    which is the same on one process and counts the same.
    """
    backbone = _create_backbone(family, **(backbone_kwargs or {}))
    addon = None
    if mscsa:
        cfg = dict(TABLE7[family])
        cfg["pool_stride"] = cfg.pop("dense_pool_stride", cfg["pool_stride"])
        cfg.update(addon_kwargs or {})
        addon = MSCSA(backbone.feature_info, mode="dense", allow_upsample=True, **cfg)
    elif addon_kwargs:
        raise ValueError("addon_kwargs apply to the _mscsa segmentors only")
    return build_segmentor(
        backbone,
        addon=addon,
        neck="fpn",
        head="semantic_fpn",
        num_classes=num_classes,
        neck_kwargs={"out_chs": 256, **(neck_kwargs or {})},
        head_kwargs={"channels": 128, "dropout": 0.1, "norm": "bn", **(head_kwargs or {})},
        **kwargs,
    )


def _ade20k(gmacs: float, base: float | None = None) -> PaperFigures:
    notes = "Semantic FPN, 150 classes" + (f"; baseline without MSCSA: {base} GFLOPs" if base else "")
    return PaperFigures(
        gmacs=gmacs,
        input_size=(3, 512, 512),
        source="MSCSA Table 3 (ADE20K, 512x512)",
        notes=notes,
        extra={"baseline_gmacs": base} if base else {},
    )


@register_model(kind="segmentor", backbone="pvt_v2_b0", paper=_ade20k(25.0))
def semantic_fpn_pvt_v2_b0(**kwargs: Any) -> nn.Module:
    """Semantic FPN on PVTv2-B0 (Table 3 baseline)."""
    return _create_semantic_fpn("pvt_v2_b0", mscsa=False, **kwargs)


@register_model(kind="segmentor", backbone="pvt_v2_b1", paper=_ade20k(34.0))
def semantic_fpn_pvt_v2_b1(**kwargs: Any) -> nn.Module:
    """Semantic FPN on PVTv2-B1 (Table 3 baseline)."""
    return _create_semantic_fpn("pvt_v2_b1", mscsa=False, **kwargs)


@register_model(kind="segmentor", backbone="pvt_v2_b2", paper=_ade20k(46.0))
def semantic_fpn_pvt_v2_b2(**kwargs: Any) -> nn.Module:
    """Semantic FPN on PVTv2-B2 (Table 3 baseline)."""
    return _create_semantic_fpn("pvt_v2_b2", mscsa=False, **kwargs)


@register_model(kind="segmentor", backbone="pvt_v2_b0_mscsa", paper=_ade20k(26.0, 25.0))
def semantic_fpn_pvt_v2_b0_mscsa(**kwargs: Any) -> nn.Module:
    """Semantic FPN on PVTv2-B0 + dense MSCSA (Table 3; Table 7 configuration)."""
    return _create_semantic_fpn("pvt_v2_b0", mscsa=True, **kwargs)


@register_model(kind="segmentor", backbone="pvt_v2_b1_mscsa", paper=_ade20k(36.0, 34.0))
def semantic_fpn_pvt_v2_b1_mscsa(**kwargs: Any) -> nn.Module:
    """Semantic FPN on PVTv2-B1 + dense MSCSA (Table 3; Table 7 configuration)."""
    return _create_semantic_fpn("pvt_v2_b1", mscsa=True, **kwargs)


@register_model(kind="segmentor", backbone="pvt_v2_b2_mscsa", paper=_ade20k(49.0, 46.0))
def semantic_fpn_pvt_v2_b2_mscsa(**kwargs: Any) -> nn.Module:
    """Semantic FPN on PVTv2-B2 + dense MSCSA (Table 3; Table 7 configuration)."""
    return _create_semantic_fpn("pvt_v2_b2", mscsa=True, **kwargs)
