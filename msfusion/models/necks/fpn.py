"""Feature Pyramid Network neck with an alignment hook at every top-down fusion.

Paper: Lin, Dollar, Girshick, He, Hariharan, Belongie, "Feature Pyramid
Networks for Object Detection", CVPR 2017 (arXiv 1612.03144), Sec. 3 / Fig. 3:
a 1x1 lateral conv per backbone level to ``d = 256`` channels, a top-down path
that upsamples the coarser map by nearest neighbour and adds it to the lateral,
and a 3x3 conv on every merged map; no non-linearity (Sec. 3: "there are no
non-linearities in these extra layers").

Extra coarser levels, as the detectors that use FPN build them:

- ``extra_type="maxpool"``: P6 subsamples P5 with stride 2 (max pooling with
  kernel 1), as Faster R-CNN / Mask R-CNN with FPN (the paper's P6 for the RPN,
  Sec. 4.1) and torchvision's ``LastLevelMaxPool``.
- ``extra_type="conv"``: P6 is a 3x3 stride-2 conv, P7 a 3x3 stride-2 conv on
  ReLU(P6), as RetinaNet (Lin et al., "Focal Loss for Dense Object Detection",
  arXiv 1708.02002, Sec. 4: P6 from C5, P7 from ReLU(P6)). P6 reads C5
  (``extra_source="c5"``) or P5 (``"p5"``); torchvision's ``LastLevelP6P7(in,
  out)`` reads P5 when ``in == out`` (its RetinaNet and FCOS builders pass 256,
  256, i.e. P5; RetinaNet v2 passes 2048, 256, i.e. C5) and always applies
  the ReLU before P7.

Parameter names follow mmdetection's ``FPN`` (``lateral_convs.{i}.conv``,
``fpn_convs.{i}.conv``, the extra convs continuing ``fpn_convs``), so its and
mmsegmentation's FPN checkpoints load; ``checkpoint_filter_fn`` maps
torchvision's ``FeaturePyramidNetwork`` keys. Weights are initialised as
torchvision and Detectron do (Kaiming-uniform with ``a=1``, zero bias).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msfusion.layers import ConvNormAct, FeatureInfo, check_feature_info, indices_for_strides
from msfusion.models.align.hook import AlignSpec, align_per_level, build_align
from msfusion.registry import register_model

__all__ = ["FPN", "checkpoint_filter_fn"]

EXTRA_TYPES = ("conv", "maxpool")
EXTRA_SOURCES = ("p5", "c5")


def _is_tracing() -> bool:
    # Input checks read tensor shapes as Python values; a tracer would bake them in.
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


class FPN(nn.Module):
    """Feature Pyramid Network (Lin et al., arXiv 1612.03144, Sec. 3).

    Forward, for selected inputs ``C_0 .. C_{L-1}`` (finest first):

    1. laterals ``l_i = lateral_convs[i](C_i)`` (1x1, ``out_chs`` channels);
    2. top-down, for i = L-2 .. 0, with ``t_{L-1} = l_{L-1}``::

           low  = aligns[i](l_i, t_{i+1})          # the alignment hook
           t_i  = low + nearest_upsample(t_{i+1}, size=low.shape[-2:])

    3. outputs ``P_i = fpn_convs[i](t_i)`` (3x3), then the extra levels.

    **The alignment hook.** ``aligns[i](low, high)`` receives ``low``, the
    lateral ``l_i`` (B, out_chs, H, W) of the finer level, and ``high``, the
    top-down map ``t_{i+1}`` (B, out_chs, h, w) of the next coarser level
    (already merged with everything above it, before upsampling); it returns
    the finer map to fuse, shaped like ``low``. The default is the identity
    (``IdentityAlign``, no parameters), which gives the plain FPN. FINE (Lee et
    al., arXiv 2606.14005, Sec. 4) is such a module: ``fine=True`` puts it at
    the paper's fusion stages, the steps whose finer map has stride 8 or 16.

    Upsampling goes to the exact size of the finer map, so inputs of any size
    work (a 97x131 image gives 25x33, 13x17, 7x9, 4x5 maps on a ResNet).

    Args:
        feature_info: the producer's ``feature_info`` (finest first).
        out_chs: channels of every output (256 in the paper).
        in_strides: strides of the maps fused, finest first. By default
            every level of stride 4 or more: the paper leaves the stride-2
            conv1 map out of the pyramid for its memory footprint (Sec. 4.1),
            and timm backbones return that map first. Each stride must be in
            ``feature_info`` (``ValueError`` listing those there).
        extra_levels: coarser levels added after the last one, each at twice
            the stride of the previous.
        extra_type: ``"conv"`` (3x3 stride-2 convs, RetinaNet / FCOS) or
            ``"maxpool"`` (stride-2 subsampling, Faster / Mask R-CNN).
        extra_source: input of the first extra conv: ``"p5"`` (the coarsest
            output) or ``"c5"`` (the coarsest selected input). Max pooling
            reads the coarsest output (``"p5"`` only).
        relu_before_extra: apply ReLU before every extra conv after the first
            (P7 = conv(ReLU(P6)), as RetinaNet and torchvision). ``False``
            gives mmdetection's default (no ReLU).
        norm: normalisation after the lateral and output convs (``None`` as in
            the paper, ``"bn"``, ``"syncbn"`` or ``"gn"``); convs have a bias
            only without a norm. Extra convs never have a norm (torchvision).
        align: the alignment at each fusion step: ``None`` (identity), a name
            (``"fine"``), a factory ``factory(chs, low_stride, high_stride,
            **align_kwargs) -> nn.Module``, ``{"type": ..., **kwargs}``, a dict
            keyed by the finer stride (``{8: "fine", 16: None}``; strides left
            out get the identity) or a list with one entry per step, fine to
            coarse.
        align_kwargs: keyword arguments for every non-identity alignment.
        fine: shorthand: ``True`` is ``align={8: "fine", 16: "fine"}`` (the
            paper's stages, those of them this neck has; every step if it has
            neither); a dict also gives FINE's arguments (``align_kwargs``).

    Attributes:
        feature_info: one ``{"chs", "reduction", "module"}`` per output.
        out_channels: ``out_chs`` (torchvision detectors read it).
    """

    def __init__(
        self,
        feature_info: Sequence[FeatureInfo],
        out_chs: int = 256,
        in_strides: Sequence[int] | None = None,
        extra_levels: int = 0,
        extra_type: str = "conv",
        extra_source: str = "p5",
        relu_before_extra: bool = True,
        norm: str | None = None,
        align: AlignSpec | Mapping[int | str, AlignSpec] | Sequence[AlignSpec] = None,
        align_kwargs: Mapping[str, Any] | None = None,
        fine: bool | Mapping[str, Any] = False,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        info = check_feature_info(feature_info, f"the features given to {owner}")
        if in_strides is None:
            # Sec. 4.1: conv1 (stride 2) is left out of the pyramid for its large memory footprint.
            strides = [f["reduction"] for f in info if f["reduction"] >= 4] or [f["reduction"] for f in info]
        else:
            strides = [int(s) for s in in_strides]
        self.in_index = indices_for_strides(info, strides, owner)
        if any(b <= a for a, b in zip(strides, strides[1:], strict=False)):
            raise ValueError(f"{owner}: in_strides {strides} must increase strictly (finest first)")
        if extra_type not in EXTRA_TYPES:
            raise ValueError(f"{owner}: extra_type must be one of {EXTRA_TYPES}, got {extra_type!r}")
        if extra_source not in EXTRA_SOURCES:
            raise ValueError(f"{owner}: extra_source must be one of {EXTRA_SOURCES}, got {extra_source!r}")
        if extra_type == "maxpool" and extra_source != "p5" and int(extra_levels) > 0:
            raise ValueError(f"{owner}: max-pooled extra levels subsample the coarsest output; use extra_source='p5'")
        if int(extra_levels) < 0:
            raise ValueError(f"{owner}: extra_levels must be 0 or more, got {extra_levels}")
        if int(out_chs) < 1:
            raise ValueError(f"{owner}: out_chs must be positive, got {out_chs}")
        align, align_kwargs = _fine_shorthand(fine, align, align_kwargs, owner, strides[:-1])

        self.in_strides = tuple(strides)
        self.in_channels = [info[i]["chs"] for i in self.in_index]
        self.num_inputs = len(info)
        self.out_chs = self.out_channels = int(out_chs)
        self.extra_levels = int(extra_levels)
        self.extra_type = extra_type
        self.extra_source = extra_source
        self.relu_before_extra = bool(relu_before_extra)
        self.norm = norm  # of the lateral and output convs (and of PAN's bottom-up convs)
        num_levels = len(strides)

        self.lateral_convs = nn.ModuleList(
            ConvNormAct(c, self.out_chs, 1, norm=norm, act=None) for c in self.in_channels
        )
        self.fpn_convs = nn.ModuleList(
            ConvNormAct(self.out_chs, self.out_chs, 3, norm=norm, act=None) for _ in range(num_levels)
        )
        self.extra_pools = nn.ModuleList()
        if extra_type == "conv":
            for j in range(self.extra_levels):
                in_chs = self.in_channels[-1] if j == 0 and extra_source == "c5" else self.out_chs
                self.fpn_convs.append(ConvNormAct(in_chs, self.out_chs, 3, stride=2, norm=None, act=None))
        else:
            self.extra_pools.extend(nn.MaxPool2d(kernel_size=1, stride=2) for _ in range(self.extra_levels))
        self.apply(_init_weights)

        specs = align_per_level(align, strides[:-1], owner)
        kwargs = dict(align_kwargs or {})
        self.aligns = nn.ModuleList(
            build_align(spec, self.out_chs, low, high, **(kwargs if spec is not None else {}))
            for spec, low, high in zip(specs, strides[:-1], strides[1:], strict=True)
        )
        self.feature_info = self._output_info([f"fpn_convs.{i}" for i in range(num_levels)])

    def _output_info(self, level_modules: list[str]) -> list[FeatureInfo]:
        """``feature_info`` of the outputs: the levels (named by ``level_modules``), then the extras."""
        info = [
            FeatureInfo(chs=self.out_chs, reduction=s, module=m)
            for s, m in zip(self.in_strides, level_modules, strict=True)
        ]
        stride = self.in_strides[-1]
        for j in range(self.extra_levels):
            stride *= 2
            module = f"fpn_convs.{len(self.in_strides) + j}" if self.extra_type == "conv" else f"extra_pools.{j}"
            info.append(FeatureInfo(chs=self.out_chs, reduction=stride, module=module))
        return info

    def select(self, features: Sequence[Tensor]) -> list[Tensor]:
        """The maps of ``in_strides`` from the producer's full list, checked against ``feature_info``."""
        owner = type(self).__name__
        if not isinstance(features, (list, tuple)) or len(features) != self.num_inputs:
            got = f"{len(features)} maps" if isinstance(features, (list, tuple)) else f"a {type(features).__name__}"
            raise ValueError(
                f"{owner} was built for a list of {self.num_inputs} feature maps (finest first), got {got}; "
                "feed it the output of the producer whose feature_info built it"
            )
        inputs = [features[i] for i in self.in_index]
        if _is_tracing():
            return inputs
        for x, i, chs, stride in zip(inputs, self.in_index, self.in_channels, self.in_strides, strict=True):
            if x.dim() != 4 or x.shape[1] != chs:
                raise ValueError(
                    f"{owner}: the stride-{stride} level (features[{i}]) should be (B, {chs}, H, W) as its "
                    f"feature_info says, got shape {tuple(x.shape)}. Is the list ordered finest first, and "
                    "was the neck built from this producer's feature_info?"
                )
        for k in range(1, len(inputs)):
            fine_size, coarse_size = tuple(inputs[k - 1].shape[-2:]), tuple(inputs[k].shape[-2:])
            if coarse_size[0] > fine_size[0] or coarse_size[1] > fine_size[1]:
                raise ValueError(
                    f"{owner}: the stride-{self.in_strides[k]} map {coarse_size} is larger than the "
                    f"stride-{self.in_strides[k - 1]} map {fine_size}; feature lists must be ordered finest first"
                )
        return inputs

    def forward_top_down(self, inputs: Sequence[Tensor]) -> list[Tensor]:
        """Selected inputs ``C_i`` (B, C_i, H_i, W_i) -> ``P_i`` (B, out_chs, H_i, W_i), finest first."""
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs, strict=True)]
        top_down = laterals[-1]
        merged = [top_down]
        for i in range(len(laterals) - 2, -1, -1):
            low = self.aligns[i](laterals[i], top_down)
            top_down = low + F.interpolate(top_down, size=low.shape[-2:], mode="nearest")
            merged.insert(0, top_down)
        return [self.fpn_convs[i](m) for i, m in enumerate(merged)]

    def forward_extra(self, outs: Sequence[Tensor], inputs: Sequence[Tensor]) -> list[Tensor]:
        """The extra levels from the coarsest output (or the coarsest input for ``"c5"``), each at half size."""
        extra: list[Tensor] = []
        if self.extra_type == "maxpool":
            x = outs[-1]
            for pool in self.extra_pools:
                x = pool(x)
                extra.append(x)
            return extra
        x = inputs[-1] if self.extra_source == "c5" else outs[-1]
        for j in range(self.extra_levels):
            if j > 0 and self.relu_before_extra:
                x = F.relu(x)
            x = self.fpn_convs[len(self.in_strides) + j](x)
            extra.append(x)
        return extra

    def forward(self, features: Sequence[Tensor]) -> list[Tensor]:
        """Producer features (full list, finest first) -> ``len(feature_info)`` maps (B, out_chs, ., .)."""
        inputs = self.select(features)
        outs = self.forward_top_down(inputs)
        return outs + self.forward_extra(outs, inputs)

    def checkpoint_filter_fn(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return checkpoint_filter_fn(state_dict, self)


# FINE's fusion stages l=3 and l=2 (arXiv 2606.14005, Sec. 3-4): the fusions whose finer map
# is S3 (stride 16) or S2 (stride 8). The stride-4 fusion of a C2-C5 FPN is left as it is.
FINE_LOW_STRIDES = (8, 16)


def _fine_shorthand(
    fine: bool | Mapping[str, Any],
    align: Any,
    align_kwargs: Mapping[str, Any] | None,
    owner: str,
    low_strides: Sequence[int],
) -> tuple[Any, Mapping[str, Any] | None]:
    """Turn ``fine=True`` / ``fine={...}`` into FINE at the paper's fusion stages (and its kwargs).

    FINE goes where the paper puts it, the fusions whose finer map has stride 8
    or 16; a neck with neither (an unusual stride set) gets FINE at every step.
    Per-level control beyond that is ``align={stride: "fine", ...}``.
    """
    if fine is False or fine is None:
        return align, align_kwargs
    if align is not None:
        raise ValueError(
            f"{owner}: give either fine= or align=, not both (fine=True is align={{8: 'fine', 16: 'fine'}})"
        )
    if fine is not True and not isinstance(fine, Mapping):
        raise ValueError(f"{owner}: fine must be True, False or a dict of FINE's arguments, got {fine!r}")
    paper_steps = {s: "fine" for s in low_strides if s in FINE_LOW_STRIDES}
    spec = paper_steps or "fine"
    if fine is True:
        return spec, align_kwargs
    if align_kwargs:
        raise ValueError(f"{owner}: fine={dict(fine)} already gives FINE's arguments; drop align_kwargs")
    return spec, dict(fine)


def _init_weights(m: nn.Module) -> None:
    # Caffe2's XavierFill, as torchvision and Detectron initialise FPN convs.
    if isinstance(m, nn.Conv2d):
        nn.init.kaiming_uniform_(m.weight, a=1)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def checkpoint_filter_fn(state_dict: Mapping[str, Tensor], model: FPN | None = None) -> dict[str, Tensor]:
    """Map torchvision ``FeaturePyramidNetwork`` keys to ours; other keys pass unchanged.

    torchvision -> ours, for L levels: ``inner_blocks.{i}.0`` -> ``lateral_convs.{i}.conv``,
    ``inner_blocks.{i}.1`` (its norm) -> ``lateral_convs.{i}.bn`` (``.gn`` when the
    model's norm is GroupNorm), ``layer_blocks.{i}`` likewise -> ``fpn_convs.{i}``,
    ``extra_blocks.p6`` / ``extra_blocks.p7`` (``LastLevelP6P7``) ->
    ``fpn_convs.{L}.conv`` / ``fpn_convs.{L+1}.conv``. The pre-0.8 layout
    (``inner_blocks.{i}.weight``, no ``.0``) is accepted too.

    Args:
        state_dict: a torchvision FPN's state dict (keys relative to the FPN).
        model: the FPN to load into; it decides the norm's name. ``None``
            assumes BatchNorm-style names (``bn``).
    """
    levels = {int(m.group(1)) for k in state_dict if (m := re.match(r"inner_blocks\.(\d+)\.", k))}
    num_levels = max(levels) + 1 if levels else 0
    norm_name = "bn"
    if model is not None:
        norm_name = model.lateral_convs[0].norm_name or "bn"
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        m = re.match(r"(inner_blocks|layer_blocks)\.(\d+)\.(?:(\d+)\.)?(\w+)$", key)
        if m:
            block, level, part, leaf = m.groups()
            ours = "lateral_convs" if block == "inner_blocks" else "fpn_convs"
            sub = "conv" if part in (None, "0") else norm_name
            out[f"{ours}.{level}.{sub}.{leaf}"] = value
            continue
        m = re.match(r"extra_blocks\.p([67])\.(weight|bias)$", key)
        if m:
            out[f"fpn_convs.{num_levels + int(m.group(1)) - 6}.conv.{m.group(2)}"] = value
            continue
        out[key] = value
    return out


@register_model(kind="neck")
def fpn(feature_info: Sequence[FeatureInfo], **kwargs: Any) -> FPN:
    """FPN (Lin et al., arXiv 1612.03144): 256 channels on every input level; ``fine=True`` adds FINE."""
    return FPN(feature_info, **kwargs)
