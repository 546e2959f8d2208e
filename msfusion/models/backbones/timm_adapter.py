"""Any timm model as an msfusion backbone, at any input size.

One adapter for every timm model, in the spirit of segmentation_models_pytorch's
``TimmUniversalEncoder``: ``timm.create_model(name, features_only=True)`` gives
the feature maps and their channels and strides, which ``TimmFeatures`` exposes
as ``feature_info`` (``{"chs", "reduction", "module"}`` per map, ``module`` being
timm's name for the producing module). Maps are always channels-first
``(B, C, H/s, W/s)`` and ordered strictly finest first: timm's maps are sorted
by stride and, where several share a stride, the last one timm lists (the
deepest) is kept; the earlier ones lie on its path, so no parameter goes unused.

Single-scale models (every map at one stride, as in a plain ViT/DeiT) become
multi-scale through the simple feature pyramid of ViTDet (Li, Mao, Girshick,
He, "Exploring Plain Vision Transformer Backbones for Object Detection", ECCV
2022, arXiv:2203.16527, Sec. 3, Fig. 2): built from the last block's map, it
gives strides 4, 8, 16 and 32 for 16x16 patches (scales 4, 2, 1, 1/2; for other
patch sizes the scales whose stride would be fractional are left out).

What each timm family is given so that it runs at sizes other than its
pre-training size, and the input it then accepts. Every model takes inputs
whose height and width are multiples of ``size_divisor`` and at least
``min_size``; the divisor is at least the coarsest stride, so that each map is
exactly ``H/s x W/s`` (convolutions of different families round odd sizes
differently, ceil or floor, and the decode heads resize maps against each
other). ``Segmentor`` pads its inputs to ``size_divisor`` itself.

- ViT, DeiT, EVA (timm ``vision_transformer``, ``deit``, ``eva``):
  ``dynamic_img_size=True``: the absolute position embedding is interpolated
  to the input's patch grid at every call instead of asserting the
  pre-training size. Divisor: the patch size (16), 32 with the simple pyramid
  (its 1/32 level max-pools the stride-16 map).
- Swin, Swin V2 (``swin_transformer``, ``swin_transformer_v2``,
  ``swin_transformer_v2_cr``): ``strict_img_size=False``: the patch embedding
  accepts any multiple of its patch size and the shifted-window attention
  masks are built for each input; timm pads every map to a multiple of the
  window inside each block and pads odd sizes before patch merging, so the
  window (7 for ``*_window7_224``) does not constrain the input. Divisor 32.
- CoaT and CoaT-Lite (``coat``): timm reshapes tokens to the grid its patch
  embeddings recorded at construction (224 / 4, / 8, ...), while the
  convolutional position encodings themselves work at any size; the adapter
  sets the four patch embeddings' input size to the actual input before every
  call. Divisor 32. (A traced or exported graph is therefore fixed to the
  size it was traced at.)
- MaxViT (``maxxvit``): block and grid attention split every map into P x P
  windows and a P x P grid (P = 8 for ``*_256`` variants, 7 for ``*_224``),
  without padding, so the stride-32 map needs sides divisible by P: divisor
  and minimum size 32 * P (256 for ``maxvit_nano_rw_256``).
- HRNet (``hrnet``): nothing is passed; its fuse layers upsample branches by
  exact factors, so they only align at multiples of 32. timm's feature maps
  (strides 2-32, from the classification "incre" modules) come in order.
- MobileViT v1/v2 (``mobilevit``): nothing is passed; its blocks unfold maps
  into 2x2 patches (at strides 8 to 32) and resize a map the patches do not
  tile, so the divisor is 32 * 2 = 64, where no map is resized.
- Convolutional and hierarchical families (ResNet, ResNeXt, RegNet,
  EfficientNet, MobileNetV3, ConvNeXt, PVTv2, ...): nothing is passed; they run
  at any size. Divisor 32.

Families whose position tables or attention biases are sized at construction
and that timm offers no option to resize per input (BEiT, NesT, LeViT, PiT,
EfficientFormer, Hiera, GCViT, CoAtNet's full-attention stages) run only at
the size they were built for (``img_size=...``); a failure inside timm's
forward is reported as a ``ValueError`` that names that size.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Sequence
from typing import Any

import timm
import torch
from torch import Tensor, nn

from msfusion.layers import check_image_batch
from msfusion.layers.features import check_feature_info, select_features
from msfusion.models.backbones.simple_pyramid import PYRAMID_SCALES, SimpleFeaturePyramid

__all__ = ["TimmFeatures"]

# Keyword arguments each timm family (the module defining the model) needs to
# accept inputs of a size other than its pre-training size; see the module docstring.
_FAMILY_KWARGS: dict[str, dict[str, Any]] = {
    "vision_transformer": dict(dynamic_img_size=True),
    "deit": dict(dynamic_img_size=True),
    "eva": dict(dynamic_img_size=True),
    "swin_transformer": dict(strict_img_size=False),
    "swin_transformer_v2": dict(strict_img_size=False),
    "swin_transformer_v2_cr": dict(strict_img_size=False),
}
# MobileViT blocks unfold maps into patches, resizing maps that the patches do not tile.
_UNFOLDING_BLOCKS = ("MobileVitBlock", "MobileVitV2Block")
_COAT_EMBED = re.compile(r"(?:.*\.)?patch_embed([1-4])")


def _timm_family(name: str) -> str:
    """The timm module that defines ``name`` (e.g. ``"swin_transformer"``)."""
    return timm.models.model_entrypoint(name).__module__.rsplit(".", 1)[-1]


def _shape_checks_off() -> bool:
    # Under tracing, export or compilation the sizes are symbolic; the segmentor's padding
    # already guarantees them there, and a Python check would freeze or break the graph.
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def _fine_to_coarse(strides: Sequence[int]) -> list[int]:
    """Positions of the maps to keep: one per stride (the last listed), sorted by stride."""
    last = {s: i for i, s in enumerate(strides)}
    return [last[s] for s in sorted(last)]


def _auto_scales(in_stride: int) -> tuple[float, ...]:
    """ViTDet's scales whose output stride ``in_stride / scale`` is an integer."""
    return tuple(s for s in PYRAMID_SCALES if (in_stride / s).is_integer())


class TimmFeatures(nn.Module):
    """A timm model's feature maps, finest first, at any input size.

    Args:
        name: a timm model name (``timm.list_models()``).
        out_indices: which of this backbone's outputs to return, as positions
            in its ``feature_info`` (after sorting and, for single-scale models,
            in the simple pyramid's levels). All by default.
        in_chans: input channels.
        pretrained: must be False: weights are never downloaded; load them
            with ``msfusion.load_checkpoint``.
        simple_pyramid: build ViTDet's simple feature pyramid on the last map.
            None (default): exactly when timm reports a single stride.
        pyramid_chs: channels of every pyramid level (256 in ViTDet).
        pyramid_scales: the pyramid's levels as scales of the last map (from
            4, 2, 1, 0.5); None: those giving integer strides.
        **kwargs: passed to ``timm.create_model`` (they override the family
            defaults listed in the module docstring).

    Attributes:
        feature_info: ``[{"chs", "reduction", "module"}]`` per output.
        size_divisor: inputs' height and width must be multiples of this.
        min_size: and at least this.
    """

    def __init__(
        self,
        name: str,
        out_indices: Sequence[int] | None = None,
        in_chans: int = 3,
        pretrained: bool = False,
        simple_pyramid: bool | None = None,
        pyramid_chs: int = 256,
        pyramid_scales: Sequence[float] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if pretrained:
            raise ValueError("timm weights are not downloaded; build without and call msfusion.load_checkpoint")
        if not timm.is_model(name):
            close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ValueError(f"{name!r} is not a timm model.{hint} `timm.list_models(pattern)` lists them.")
        for key in ("num_classes", "features_only", "out_indices"):
            kwargs.pop(key, None)
        self.name = name
        self.in_chans = in_chans
        family = _timm_family(name)
        create_kwargs = {**_FAMILY_KWARGS.get(family, {}), **kwargs, "in_chans": in_chans}

        self.model = _create_features(name, create_kwargs)
        strides = list(self.model.feature_info.reduction())
        keep = _fine_to_coarse(strides)
        use_pyramid = len(set(strides)) == 1 if simple_pyramid is None else bool(simple_pyramid)

        if use_pyramid:
            source = keep[-1]
            in_stride = strides[source]
            scales = _auto_scales(in_stride) if pyramid_scales is None else tuple(pyramid_scales)
            scales = tuple(sorted({float(s) for s in scales}, reverse=True))  # finest first
            if out_indices is not None:
                level_info = [dict(chs=pyramid_chs, reduction=1, module=str(i)) for i in range(len(scales))]
                chosen, _ = select_features(level_info, out_indices)
                scales = tuple(sorted({scales[i] for i in chosen}, reverse=True))
            self.simple_pyramid = SimpleFeaturePyramid(
                self.model.feature_info.channels()[source], in_stride, pyramid_chs, scales
            )
            self._take = (source,)
            info = [dict(f, module=f"simple_pyramid.{f['module']}") for f in self.simple_pyramid.feature_info]
            used_strides = [in_stride]
        else:
            self.simple_pyramid = None
            if out_indices is not None:
                info = self._timm_info(keep)
                chosen, _ = select_features(info, out_indices)
                wanted = sorted({keep[i] for i in chosen}, key=lambda p: strides[p])
                if wanted != keep:
                    # Rebuild with only the wanted maps so that timm drops the stages after the
                    # last one: a trailing stage left in the model would get no gradient (DDP fails).
                    timm_indices = tuple(self.model.feature_info.out_indices[p] for p in wanted)
                    self.model = _create_features(name, {**create_kwargs, "out_indices": timm_indices})
                    strides = list(self.model.feature_info.reduction())
                    keep = _fine_to_coarse(strides)
            self._take = tuple(keep)
            info = self._timm_info(keep)
            used_strides = [strides[p] for p in keep]
        self.feature_info = check_feature_info(info, f"TimmFeatures({name!r})")
        self.out_channels = [f["chs"] for f in self.feature_info]

        fmt = getattr(self.model, "output_fmt", "NCHW")
        self._nhwc = str(getattr(fmt, "value", fmt)) == "NHWC"
        img_size = create_kwargs.get("img_size")
        if img_size is not None:
            self._built_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        else:
            self._built_size = tuple(getattr(self.model, "pretrained_cfg", {}).get("input_size", (0, 0, 0))[1:])
        self._coat_embeds = self._find_coat_embeds() if family == "coat" else ()
        self.size_divisor, self._constraint = self._input_constraint(used_strides)
        self.min_size = self.size_divisor

    def _timm_info(self, positions: Sequence[int]) -> list[dict[str, Any]]:
        fi = self.model.feature_info
        chs, red, mods = fi.channels(), fi.reduction(), fi.module_name()
        return [dict(chs=int(chs[p]), reduction=int(red[p]), module=str(mods[p])) for p in positions]

    def _find_coat_embeds(self) -> tuple[str, ...]:
        found = {}
        for module_name, _ in self.model.named_modules():
            match = _COAT_EMBED.fullmatch(module_name)
            if match:
                found[int(match.group(1))] = module_name
        return tuple(found[i] for i in sorted(found))

    def _input_constraint(self, used_strides: Sequence[int]) -> tuple[int, str]:
        """``size_divisor`` and, for the error message, why it is what it is."""
        divisor = math.lcm(*used_strides, *(f["reduction"] for f in self.feature_info))
        why = f"so that every map is exactly 1/stride of the input (strides {[f['reduction'] for f in self.feature_info]})"
        # Maps that a family cuts into P x P tiles without padding (MaxViT's block and grid
        # attention) or after resizing the map (MobileViT's unfolding) must be tiled exactly
        # at the coarsest stride, which then tiles every finer map too.
        tiles: set[int] = set()
        for m in self.model.modules():
            if getattr(m, "partition_size", None) is not None:
                tiles.update(m.partition_size)
                what = "attention windows and grids"
            elif type(m).__name__ in _UNFOLDING_BLOCKS:
                tiles.update(m.patch_size)
                what = "transformer patches"
        if tiles:
            coarsest = max(used_strides)
            p = math.lcm(*tiles)
            divisor = math.lcm(divisor, coarsest * p)
            why = f"because its {p}x{p} {what} must tile the stride-{coarsest} map"
        return divisor, why

    def valid_size(self, height: int, width: int) -> tuple[int, int]:
        """The smallest input size this backbone accepts that covers ``height x width`` (pad to it)."""
        d = self.size_divisor
        return max(-(-height // d) * d, self.min_size), max(-(-width // d) * d, self.min_size)

    def check_input_size(self, height: int, width: int) -> None:
        """``ValueError`` naming the nearest valid size, for an input this backbone cannot take."""
        height, width = int(height), int(width)
        if (height, width) != self.valid_size(height, width):
            h, w = self.valid_size(height, width)
            raise ValueError(
                f"TimmFeatures({self.name!r}) takes inputs whose height and width are multiples of "
                f"{self.size_divisor} and at least {self.min_size} ({self._constraint}); got {height}x{width}. "
                f"Pad it to {h}x{w} (msfusion's Segmentor pads automatically)."
            )

    def _size_failure(self, x: Tensor, err: BaseException) -> str:
        built = self._built_size
        size = tuple(x.shape[-2:])
        reason = str(err).rstrip(".") or "an assertion without a message"
        msg = f"timm model {self.name!r} failed on input {tuple(x.shape)}: {type(err).__name__}: {reason}."
        if len(built) == 2 and all(built) and size != built:
            msg += (
                f" If the size is the cause: this timm family may only run at the size it was built for, "
                f"{built[0]}x{built[1]} (position tables or attention biases of that size); build it with "
                f"img_size={size} if it accepts that option, or resize the input to {built[0]}x{built[1]}."
            )
        return msg

    def forward(self, x: Tensor) -> list[Tensor]:
        """(B, in_chans, H, W) -> [(B, chs, H/s, W/s) for each ``feature_info`` entry], finest first."""
        check_image_batch(x, self.in_chans)
        if not _shape_checks_off():
            self.check_input_size(x.shape[-2], x.shape[-1])
        if self._coat_embeds:
            # CoaT reshapes tokens to its patch embeddings' recorded grids: record this input's.
            h, w = int(x.shape[-2]), int(x.shape[-1])
            for embed_name in self._coat_embeds:
                embed = self.model.get_submodule(embed_name)
                embed.set_input_size(img_size=(h, w))
                h, w = embed.grid_size
        try:
            feats = self.model(x)
        except (RuntimeError, AssertionError) as err:
            if isinstance(err, torch.OutOfMemoryError) or _shape_checks_off():
                raise
            raise ValueError(self._size_failure(x, err)) from err
        if isinstance(feats, dict):
            feats = list(feats.values())
        feats = [feats[p] for p in self._take]
        if self._nhwc:
            feats = [f.permute(0, 3, 1, 2).contiguous() for f in feats]
        if self.simple_pyramid is not None:
            return self.simple_pyramid(feats[-1])
        return feats


def _create_features(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """``timm.create_model(name, features_only=True, **kwargs)``, its failures rephrased as ``ValueError``."""
    try:
        return timm.create_model(name, features_only=True, **kwargs)
    except (AssertionError, RuntimeError, TypeError, ValueError, NotImplementedError, KeyError) as err:
        call = ", ".join([f"{name!r}", "features_only=True", *(f"{k}={v!r}" for k, v in kwargs.items())])
        reason = str(err).rstrip(".") or "an assertion without a message"
        fix = (
            " A keyword argument is not accepted by this model; drop it."
            if isinstance(err, TypeError) and "argument" in reason
            else " Choose another model or other keyword arguments."
        )
        raise ValueError(
            f"timm model {name!r} cannot return feature maps: timm.create_model({call}) failed with "
            f"{type(err).__name__}: {reason}.{fix}"
        ) from err
