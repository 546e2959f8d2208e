"""Deformable DETR and RT-DETR (v1, v2) from Hugging Face transformers, with our backbones and FINE.

Papers:

- Deformable DETR: "Deformable DETR: Deformable Transformers for End-to-End
  Object Detection", Zhu et al., arXiv 2010.04159 (multi-scale deformable
  attention over C3-C5 plus one stride-2 level; Sec. 4.1). Used by CEDNet
  (arXiv 2302.06052) Table 2(a) and MSCSA (arXiv 2308.05872) Table 2.
- RT-DETR: "DETRs Beat YOLOs on Real-time Object Detection", Zhao et al.,
  arXiv 2304.08069: the hybrid encoder (AIFI on the stride-32 map, then a
  CCFM top-down / bottom-up fusion of S3-S5), IoU-aware query selection.
  RT-DETRv2 (Lv et al., arXiv 2407.17140) keeps the encoder and changes the
  decoder's deformable sampling.
- FINE: "Context-Guided Semantic Alignment for Feature Fusion Networks", Lee
  et al., arXiv 2606.14005, Sec. 5 / Tables 1-3: FINE at the top-down fusion
  points of RT-DETR's hybrid encoder.

The detectors themselves are transformers' (Apache-2.0; the optional extra
``pip install "msfusion[detr]"``). What msfusion adds:

- **Our backbones as a transformers backbone** (``MsfBackboneConfig`` /
  ``MsfBackbone``, registered with ``AutoConfig`` / ``AutoBackbone`` as
  ``model_type="msfusion_backbone"``): any ``create_model(name,
  features_only=True)`` backbone (ours or timm's), optionally followed by a
  registered add-on (MSCSA), read at the strides the detector uses. The
  config records names and keyword arguments, so ``save_pretrained`` /
  ``from_pretrained`` rebuild the same network; nothing is downloaded unless
  backbone weights are asked for by ``build_detr(..., pretrained=...)``.
- **Batch norm decided by msfusion.** transformers' Deformable DETR swaps
  every ``BatchNorm2d`` of its backbone for a frozen copy (its RT-DETR does
  so by default too), which would freeze an add-on's newly initialised
  norms. Here the backbone is rebuilt after transformers' constructor and
  ``frozen_bn=True`` freezes the backbone's own BatchNorm only
  (``torchvision.ops.FrozenBatchNorm2d``; the add-on stays trainable);
  ``frozen_stages=n`` stops the gradients of every parameter up to the
  module producing the backbone's n-th feature output (timm ResNets list
  their stride-2 stem as the first output, so n = 2 is "stem and layer1",
  the stages torchvision and Deformable DETR keep frozen).
- **FINE in RT-DETR's hybrid encoder** (FINE Eq. 3, ``F_fused =
  f(FINE(F_low, F_high), Up(F_high))``): the encoder's top-down step ``idx``
  concatenates ``Up(lateral(F_high))`` with the projected backbone map
  ``F_low`` and runs a CSP block on it; a forward pre-hook on that block
  replaces ``F_low`` by ``FINE(F_low, F_high)``, with ``F_high`` recovered as
  every second pixel of the nearest-neighbour x2 upsampling (exact). All
  levels have the encoder's hidden size (256), so no channel projection is
  needed. The FINE modules live in ``model.encoder.fine`` (new keys only:
  the original RT-DETR keys are untouched); ``fine=False`` adds nothing.
  Two modules of the paper's equations add 526,336 parameters (Table 1:
  +1.0 M; the authors' earlier FINE, ``fine={"preset": "earlier"}``, adds
  1.58 M, so neither reaches it).
- **The torchvision detector interface** (``DetrDetector``), so the
  detection task trains, evaluates and predicts these models like the
  torchvision ones: ``model(images, targets)`` returns a dict of losses,
  ``model(images)`` returns boxes / labels / scores in input pixels, and
  ``num_classes`` counts the background (labels 1..K).

Input handling follows the reference pipelines: RT-DETR resizes every image
to 640 x 640 (aspect ratio not kept) and feeds [0, 1] pixels without mean /
std normalisation; Deformable DETR resizes the shorter side to 800 (longer
side at most 1333), normalises with ImageNet statistics and pads the batch
with a pixel mask. Boxes are predicted relative to the padded input (RT-DETR)
or to each image's valid region (Deformable DETR, whose sampling locations
are scaled by the valid ratios).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torchvision.ops import box_convert

from msfusion.layers import check_feature_info, indices_for_strides
from msfusion.layers.features import pad_to_size_constraint
from msfusion.layers.frozen_norm import freeze_batch_norm
from msfusion.models.align.fine import FINE
from msfusion.models.chain import build_chain, check_finite_input
from msfusion.registry import create_model, recordable
from msfusion.structured_files import read_mapping

try:
    from transformers import (
        AutoBackbone,
        AutoConfig,
        DeformableDetrConfig,
        DeformableDetrForObjectDetection,
        PreTrainedConfig,
        PreTrainedModel,
        RTDetrConfig,
        RTDetrForObjectDetection,
        RTDetrV2Config,
        RTDetrV2ForObjectDetection,
    )
    from transformers.backbone_utils import BackboneConfigMixin, BackboneMixin
    from transformers.modeling_outputs import BackboneOutput
except ImportError as err:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "msfusion's DETR detectors need Hugging Face transformers 5.x and scipy: "
        'pip install "msfusion[detr]" (or pip install "transformers>=5.24,<6" scipy)'
    ) from err

__all__ = [
    "DETR_ARCHS",
    "DetrComplexity",
    "DetrDetector",
    "MsfBackbone",
    "MsfBackboneConfig",
    "MsfDeformableDetrForObjectDetection",
    "MsfRTDetrForObjectDetection",
    "MsfRTDetrV2ForObjectDetection",
    "build_detr",
]

DETR_ARCHS = ("deformable_detr", "rt_detr", "rt_detr_v2")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MsfBackboneConfig(BackboneConfigMixin, PreTrainedConfig):
    """A msfusion backbone (+ add-on) as a transformers backbone config.

    Attributes:
        backbone: a registered or timm name (``create_model(name, features_only=True)``).
        backbone_kwargs: its keyword arguments.
        addon: a registered add-on name (``"mscsa"``) or None.
        addon_kwargs: its keyword arguments.
        strides: the strides of the maps handed to the detector, finest first.
        frozen_bn: freeze the backbone's BatchNorm (never the add-on's).
        frozen_stages: stop gradients up to the module of the backbone's n-th feature output (0: none).
    """

    model_type = "msfusion_backbone"  # must not contain "resnet": Deformable DETR would freeze by name
    backbone: str = "resnet50"
    backbone_kwargs: dict | None = None
    addon: str | None = None
    addon_kwargs: dict | None = None
    strides: list[int] | None = None
    frozen_bn: bool = False
    frozen_stages: int = 0
    num_channels: int = 3
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        self.strides = [int(s) for s in (self.strides or (8, 16, 32))]
        self.stage_names = [f"stride{s}" for s in self.strides]
        self.set_output_features_output_indices(out_features=None, out_indices=list(range(len(self.strides))))
        super().__post_init__(**kwargs)


def _freeze_stages(net: nn.Module, info: Sequence[dict], frozen_stages: int) -> None:
    """Stop gradients of every parameter registered up to the module producing feature output ``frozen_stages``."""
    if frozen_stages <= 0:
        return
    if frozen_stages > len(info):
        raise ValueError(f"frozen_stages={frozen_stages}, but the backbone has only {len(info)} feature stages")
    last = info[frozen_stages - 1]["module"]
    # feature_info names the module relative to the wrapped model; take the shallowest module of that name.
    matches = sorted((n for n, _ in net.named_modules() if n == last or n.endswith(f".{last}")), key=len)
    prefix = f"{matches[0]}." if matches else None
    names = [n for n, _ in net.named_parameters()]
    owned = [i for i, n in enumerate(names) if prefix is not None and n.startswith(prefix)]
    if not owned:
        raise ValueError(f"frozen_stages: no parameter belongs to the stage module {last!r} of the backbone")
    for i, (_, p) in enumerate(net.named_parameters()):
        if i <= owned[-1]:
            p.requires_grad_(False)


class MsfBackbone(BackboneMixin, PreTrainedModel):
    """``backbone -> [add-on]`` returning ``BackboneOutput(feature_maps=...)`` at ``config.strides``."""

    config_class = MsfBackboneConfig
    main_input_name = "pixel_values"
    has_attentions = False

    def __init__(self, config: MsfBackboneConfig) -> None:
        super().__init__(config)
        net = create_model(config.backbone, features_only=True, **(config.backbone_kwargs or {}))
        info = check_feature_info(getattr(net, "feature_info", None), f"the backbone {config.backbone!r}")
        if config.frozen_bn:
            freeze_batch_norm(net)  # before the add-on exists, so the add-on's norms stay trainable
        _freeze_stages(net, info, config.frozen_stages)
        self.net, self.addon, _, info = build_chain(net, config.addon, addon_kwargs=dict(config.addon_kwargs or {}))
        self.indices = indices_for_strides(info, config.strides, f"the detector's backbone {config.backbone!r}")
        self.num_features = [info[i]["chs"] for i in self.indices]
        self.feature_info = [dict(info[i]) for i in self.indices]
        self.size_divisor = int(getattr(net, "size_divisor", 1) or 1)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """Keep the modules' own initialisation (and any weights loaded into them)."""

    def forward(self, pixel_values: Tensor, output_hidden_states=None, output_attentions=None, return_dict=None, **kw):
        """(B, 3, H, W) -> ``BackboneOutput`` with the maps at ``config.strides``, (B, C_i, H/s_i, W/s_i)."""
        feats = self.net(pixel_values)
        if self.addon is not None:
            feats = self.addon(feats)
        return BackboneOutput(feature_maps=tuple(feats[i] for i in self.indices))


AutoConfig.register(MsfBackboneConfig.model_type, MsfBackboneConfig, exist_ok=True)
AutoBackbone.register(MsfBackboneConfig, MsfBackbone, exist_ok=True)


def _rebuild_backbone(model: PreTrainedModel) -> None:
    # transformers' conv encoders may have swapped the backbone's BatchNorm for frozen copies; the
    # backbone is rebuilt from its config so that msfusion's own freezing decision stands.
    encoder = model.model.backbone
    encoder.model = AutoBackbone.from_config(model.config.backbone_config)


class _FineTopDown(nn.Module):
    """FINE at the top-down fusions of RT-DETR's hybrid encoder (module doc).

    Args:
        chs: the encoder's hidden size.
        strides: the encoder's feature strides, finest first (e.g. 8, 16, 32).
        options: FINE keyword arguments (attention, modulation, ratio, kernel, ...).
    """

    def __init__(self, chs: int, strides: Sequence[int], options: dict[str, Any]) -> None:
        super().__init__()
        # Step idx fuses level n-2-idx (F_low) with the running top map at level n-1-idx (F_high).
        n = len(strides)
        self.chs = chs
        self.modules_ = nn.ModuleList(
            FINE(chs, strides[n - 2 - idx], strides[n - 1 - idx], **options) for idx in range(n - 1)
        )

    def hook(self, idx: int):
        module = self.modules_[idx]
        chs = self.chs

        def pre_hook(block: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            fused = args[0]
            up_high, low = fused[:, :chs], fused[:, chs:]
            high = up_high[..., ::2, ::2]  # exact inverse of nearest x2 upsampling
            return (torch.cat([up_high, module(low, high)], dim=1), *args[1:])

        return pre_hook


def _attach_fine(model: PreTrainedModel) -> None:
    options = getattr(model.config, "msfusion_fine", None)
    if not options:
        return
    options = {} if options is True else dict(options)
    encoder = model.model.encoder
    cfg = model.config
    fine = _FineTopDown(cfg.encoder_hidden_dim, list(cfg.feat_strides), options)
    fine.apply(_fine_init)
    encoder.fine = fine.modules_
    for idx, block in enumerate(encoder.fpn_blocks):
        block.register_forward_pre_hook(fine.hook(idx))


def _fine_init(module: nn.Module) -> None:
    # FINE's own initialisation (PyTorch defaults), not the detector's: the decoder-oriented init of
    # transformers would otherwise apply when from_pretrained initialises missing keys.
    if hasattr(module, "reset_parameters") and not list(module.children()):
        module.reset_parameters()
    module._is_hf_initialized = True


class MsfRTDetrForObjectDetection(RTDetrForObjectDetection):
    """transformers' RT-DETR with msfusion's backbone handling and optional FINE (``config.msfusion_fine``)."""

    def __init__(self, config: RTDetrConfig) -> None:
        super().__init__(config)
        _rebuild_backbone(self)
        _attach_fine(self)


class MsfRTDetrV2ForObjectDetection(RTDetrV2ForObjectDetection):
    """transformers' RT-DETRv2 with msfusion's backbone handling and optional FINE (``config.msfusion_fine``)."""

    def __init__(self, config: RTDetrV2Config) -> None:
        super().__init__(config)
        _rebuild_backbone(self)
        _attach_fine(self)


class MsfDeformableDetrForObjectDetection(DeformableDetrForObjectDetection):
    """transformers' Deformable DETR with msfusion's backbone handling (BatchNorm not frozen by force)."""

    def __init__(self, config: DeformableDetrConfig) -> None:
        super().__init__(config)
        _rebuild_backbone(self)


_CLASSES = {
    "rt_detr": (RTDetrConfig, MsfRTDetrForObjectDetection),
    "rt_detr_v2": (RTDetrV2Config, MsfRTDetrV2ForObjectDetection),
    "deformable_detr": (DeformableDetrConfig, MsfDeformableDetrForObjectDetection),
}


def _traced_value(value: Tensor | float, dtype: torch.dtype, device: torch.device | None = None) -> Tensor:
    """A 0-dim tensor of ``value``; a traced size stays traced (``torch.as_tensor`` would freeze it in the trace)."""
    if isinstance(value, Tensor):
        return value.to(dtype=dtype, device=device)
    return torch.tensor(value, dtype=dtype, device=device)


def _loss_weight(config: PreTrainedConfig, key: str) -> float | None:
    """Deformable DETR's weight of a ``loss_dict`` term (its loss_dict is unweighted; aux terms end in _i)."""
    head, _, tail = key.rpartition("_")
    base = head if tail.isdigit() else key
    weights = {"loss_ce": 1.0, "loss_bbox": config.bbox_loss_coefficient, "loss_giou": config.giou_loss_coefficient}
    return weights.get(base)


class DetrDetector(nn.Module):
    """A transformers DETR-family detector behind torchvision's detection interface.

    Training: ``model(images, targets)`` with ``images`` a list of (3, H_i,
    W_i) float tensors in [0, 1] and ``targets`` a list of dicts with
    ``boxes`` (N_i, 4) xyxy pixels and ``labels`` (N_i,) in 1..num_classes-1;
    returns the weighted loss terms (their sum is the detector's loss).
    Inference: ``model(images)`` returns per image ``boxes`` (D, 4) xyxy in
    the input's pixels, ``labels`` (D,) in 1..num_classes-1 and ``scores``
    (D,), the ``num_top`` best (query, class) pairs by sigmoid score.

    Args:
        detr: a ``Msf*ForObjectDetection`` model.
        arch: one of ``DETR_ARCHS``.
        num_classes: classes including the background (torchvision's convention).
        image_size: resize every image to this square (RT-DETR's 640); None
            keeps the aspect ratio with ``min_size`` / ``max_size``.
        min_size, max_size: the keep-ratio resize (Deformable DETR's 800 / 1333).
        image_mean, image_std: normalisation in [0, 1] units; None feeds [0, 1] pixels.
        train_resize: resize training images too (False: the data pipeline's sizes reach the network).
        num_top: detections kept per image.
        size_divisor: the padded batch is a multiple of it.
    """

    def __init__(
        self,
        detr: PreTrainedModel,
        arch: str,
        num_classes: int,
        *,
        image_size: int | None = None,
        min_size: int = 800,
        max_size: int = 1333,
        image_mean: Sequence[float] | None = None,
        image_std: Sequence[float] | None = None,
        train_resize: bool = True,
        num_top: int = 100,
        size_divisor: int = 32,
    ) -> None:
        super().__init__()
        self.detr = detr
        self.arch = arch
        self.num_classes = num_classes
        self.image_size = image_size
        self.min_size = min_size
        self.max_size = max_size
        self.train_resize = train_resize
        self.num_top = num_top
        self.size_divisor = size_divisor
        # Deformable DETR scales its sampling by the valid ratios: its boxes are relative to the unpadded image.
        self.boxes_on_valid = arch == "deformable_detr"
        mean = torch.tensor(image_mean if image_mean is not None else (0.0, 0.0, 0.0)).view(3, 1, 1)
        std = torch.tensor(image_std if image_std is not None else (1.0, 1.0, 1.0)).view(3, 1, 1)
        self.register_buffer("image_mean", mean, persistent=False)
        self.register_buffer("image_std", std, persistent=False)
        backbone = detr.model.backbone.model
        self.feature_info = list(backbone.feature_info)
        if image_size is not None:  # every input is resized to this square: a size too small fails at build
            side = math.ceil(image_size / size_divisor) * size_divisor
            self.check_input_size(side, side)

    def _queries_from_tokens(self) -> int | None:
        """The top-k the encoder selects from its tokens (RT-DETR's queries, two-stage Deformable DETR's proposals)."""
        cfg = self.detr.config
        if self.arch in ("rt_detr", "rt_detr_v2"):
            return int(cfg.num_queries)
        return int(cfg.two_stage_num_proposals) if getattr(cfg, "two_stage", False) else None

    def _encoder_tokens(self, height: int, width: int) -> int:
        """Tokens of the encoder's levels on a padded (height, width) batch: the backbone strides plus the
        stride-2 extra levels (RT-DETR derives each from the last backbone level, Deformable DETR chains them)."""
        strides = [int(s) for s in self.detr.config.backbone_config.strides]
        sizes = [(math.ceil(height / s), math.ceil(width / s)) for s in strides]
        last = sizes[-1]
        for _ in range(int(self.detr.config.num_feature_levels) - len(strides)):
            extra = (math.ceil(last[0] / 2), math.ceil(last[1] / 2))
            sizes.append(extra)
            if self.arch == "deformable_detr":
                last = extra
        return sum(h * w for h, w in sizes)

    def check_input_size(self, height: int, width: int) -> None:
        """Refuse a padded (height, width) batch with fewer encoder tokens than the queries selected from them.

        RT-DETR's query selection (Zhao et al., arXiv 2304.08069, Sec. 4.3) takes
        the top ``num_queries`` encoder tokens, so the input must hold at least
        that many tokens over its levels (a 64 x 64 input has 64 + 16 + 4 = 84 at
        strides 8, 16, 32: too few for the default 300 queries).

        Raises:
            ValueError: naming the smallest square input that works and the settings to change.
        """
        needed = self._queries_from_tokens()
        if needed is None or self._encoder_tokens(height, width) >= needed:
            return
        side = self.size_divisor
        while self._encoder_tokens(side, side) < needed:
            side += self.size_divisor
        what = "num_queries" if self.arch != "deformable_detr" else "two_stage_num_proposals"
        size = f"image_size (now {self.image_size})" if self.image_size is not None else "min_size / max_size"
        raise ValueError(
            f"{self.arch} selects {what}={needed} queries from its encoder tokens, but a {height}x{width} input "
            f"gives only {self._encoder_tokens(height, width)} (strides "
            f"{list(self.detr.config.backbone_config.strides)}); the input must be at least {side}x{side} pixels. "
            f"Raise {size}, or lower {what}."
        )

    def _scale(self, h: int, w: int) -> tuple[float, float]:
        if self.image_size is not None:
            return self.image_size / h, self.image_size / w
        s = self.min_size / min(h, w)
        if max(h, w) * s > self.max_size:
            s = self.max_size / max(h, w)
        return s, s

    def preprocess(
        self, images: Sequence[Tensor]
    ) -> tuple[Tensor, Tensor, list[tuple[float, float]], list[tuple[int, int]]]:
        """Images -> (pixel_values (B, 3, H, W), pixel_mask (B, H, W), (sy, sx) scales, resized (h, w))."""
        if not images:
            raise ValueError("DetrDetector needs at least one image")
        resized, scales = [], []
        for image in images:
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(f"DetrDetector expects (3, H, W) images, got {tuple(image.shape)}")
            h, w = image.shape[-2:]
            if torch.jit.is_tracing():
                # ONNX export (one image): sizes are traced tensors, so the graph keeps H and W dynamic.
                size = self._traced_size(h, w)
            else:
                sy, sx = (1.0, 1.0) if self.training and not self.train_resize else self._scale(h, w)
                size = (max(1, round(h * sy)), max(1, round(w * sx)))
            if torch.jit.is_tracing() or size != (h, w):
                image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]
            resized.append((image - self.image_mean) / self.image_std)
            scales.append((size[0] / h, size[1] / w))
        if torch.jit.is_tracing():
            if len(resized) != 1:
                raise ValueError("ONNX export of a DETR detector takes one image per call")
            image = resized[0]
            size_h, size_w = image.shape[-2:]
            batch = pad_to_size_constraint(image[None], self.size_divisor)
            mask = pad_to_size_constraint(torch.ones_like(image[:1], dtype=torch.long)[None], self.size_divisor)[:, 0]
            return batch, mask, scales, [(size_h, size_w)]
        # Zero-padded (bottom, right) to the largest image, then to a multiple of size_divisor, as the chain pads.
        h, w = max(im.shape[-2] for im in resized), max(im.shape[-1] for im in resized)
        batch = torch.stack([F.pad(im, (0, w - im.shape[-1], 0, h - im.shape[-2])) for im in resized])
        batch = pad_to_size_constraint(batch, self.size_divisor)
        mask = torch.zeros(len(resized), *batch.shape[-2:], dtype=torch.long, device=batch.device)
        for i, im in enumerate(resized):
            mask[i, : im.shape[-2], : im.shape[-1]] = 1
        return batch, mask, scales, [tuple(im.shape[-2:]) for im in resized]

    def _traced_size(self, h: Tensor, w: Tensor) -> tuple[Tensor | int, Tensor | int]:
        """``_scale``'s resize for traced sizes (0-dim tensors), in float64 as Python computes it."""
        if self.image_size is not None:
            return self.image_size, self.image_size
        hf, wf = _traced_value(h, torch.float64), _traced_value(w, torch.float64)
        # min(min_size / short side, max_size / long side) is _scale's "cap the long side" rule.
        s = torch.minimum(self.min_size / torch.minimum(hf, wf), self.max_size / torch.maximum(hf, wf))
        return (hf * s).round().clamp(min=1).long(), (wf * s).round().clamp(min=1).long()

    def _reference(self, size: tuple[int, int], batch: Tensor) -> tuple[int, int]:
        return size if self.boxes_on_valid else tuple(batch.shape[-2:])

    def forward(self, images: Sequence[Tensor], targets: Sequence[dict[str, Tensor]] | None = None):
        check_finite_input(list(images), "detector's input")
        batch, mask, scales, sizes = self.preprocess(images)
        self.check_input_size(*batch.shape[-2:])
        if self.training:
            if targets is None:
                raise ValueError("DetrDetector in training mode needs targets (boxes xyxy in pixels, labels 1..K)")
            labels = []
            for t, (sy, sx), size in zip(targets, scales, sizes, strict=True):
                rh, rw = self._reference(size, batch)
                scale = t["boxes"].new_tensor([sx / rw, sy / rh, sx / rw, sy / rh])
                boxes = box_convert(t["boxes"].float() * scale, "xyxy", "cxcywh")
                if t["labels"].numel() and (t["labels"].min() < 1 or t["labels"].max() >= self.num_classes):
                    raise ValueError(
                        f"labels must lie in 1..{self.num_classes - 1} (0 is the background), got "
                        f"{t['labels'].min().item()}..{t['labels'].max().item()}"
                    )
                labels.append({"class_labels": t["labels"].long() - 1, "boxes": boxes})
            out = self.detr(pixel_values=batch, pixel_mask=mask, labels=labels)
            if self.arch == "deformable_detr":
                return {k: v * w for k, v in out.loss_dict.items() if (w := _loss_weight(self.detr.config, k))}
            return dict(out.loss_dict)
        out = self.detr(pixel_values=batch, pixel_mask=mask)
        return self.postprocess(out.logits, out.pred_boxes, batch, scales, sizes, images)

    def postprocess(self, logits: Tensor, pred_boxes: Tensor, batch: Tensor, scales, sizes, images) -> list[dict]:
        """(B, Q, K) logits and (B, Q, 4) normalised cxcywh boxes -> torchvision-style detections."""
        B, Q, K = logits.shape
        scores = logits.float().sigmoid().flatten(1)
        top = min(self.num_top, Q * K)
        values, index = scores.topk(top, dim=1)
        results = []
        for b in range(B):
            query = index[b] // K
            rh, rw = self._reference(sizes[b], batch)
            sy, sx = scales[b]
            boxes = box_convert(pred_boxes[b, query].float(), "cxcywh", "xyxy")
            # torch.stack keeps traced sizes in the ONNX graph (new_tensor would freeze the export size's).
            factor = [_traced_value(v, boxes.dtype, boxes.device) for v in (rw / sx, rh / sy)]
            boxes = boxes * torch.stack(factor * 2)
            h, w = images[b].shape[-2:]
            limit = [_traced_value(v, boxes.dtype, boxes.device) for v in (w, h)]
            boxes = torch.minimum(boxes.clamp(min=0), torch.stack(limit * 2))
            results.append({"boxes": boxes, "labels": index[b] % K + 1, "scores": values[b]})
        return results

    def save_pretrained(self, path: str | Path) -> None:
        """transformers' ``save_pretrained`` of the detector plus the input settings (``msfusion_detr.json``)."""
        path = Path(path)
        self.detr.save_pretrained(path)
        settings = dict(
            arch=self.arch,
            num_classes=self.num_classes,
            image_size=self.image_size,
            min_size=self.min_size,
            max_size=self.max_size,
            image_mean=self.image_mean.flatten().tolist(),
            image_std=self.image_std.flatten().tolist(),
            train_resize=self.train_resize,
            num_top=self.num_top,
            size_divisor=self.size_divisor,
        )
        (path / "msfusion_detr.json").write_text(json.dumps(settings, indent=1))

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> DetrDetector:
        """Load what ``save_pretrained`` wrote (local files only)."""
        path = Path(path)
        settings_file = path / "msfusion_detr.json"
        if not settings_file.is_file():
            raise ValueError(f"{path} has no msfusion_detr.json: save it with DetrDetector.save_pretrained")
        settings = read_mapping(settings_file, "DETR settings file")
        arch = settings.pop("arch")
        detr = _CLASSES[arch][1].from_pretrained(path, local_files_only=True, **kwargs)
        return cls(detr, arch, **settings)


_INPUT_DEFAULTS = {
    # RT-DETR's reference pipeline: 640 x 640, no normalisation; Deformable DETR's: 800 / 1333, ImageNet statistics.
    "rt_detr": dict(image_size=640, image_mean=None, image_std=None),
    "rt_detr_v2": dict(image_size=640, image_mean=None, image_std=None),
    "deformable_detr": dict(image_size=None, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD),
}


def build_detr(
    arch: str,
    *,
    backbone: str,
    num_classes: int,
    addon: str | None = None,
    fine: bool | dict[str, Any] = False,
    backbone_kwargs: dict[str, Any] | None = None,
    addon_kwargs: dict[str, Any] | None = None,
    strides: Sequence[int] = (8, 16, 32),
    frozen_bn: bool = False,
    frozen_stages: int = 0,
    pretrained: str | bool | None = None,
    image_size: int | None | str = "default",
    min_size: int = 800,
    max_size: int = 1333,
    image_mean: Sequence[float] | None | str = "default",
    image_std: Sequence[float] | None | str = "default",
    train_resize: bool = True,
    num_top: int = 100,
    **config: Any,
) -> DetrDetector:
    """Build Deformable DETR, RT-DETR or RT-DETRv2 on a msfusion backbone (module doc).

    Example::

        build_detr("rt_detr", backbone="resnet18d", num_classes=81, hidden_expansion=0.5, decoder_layers=3)
        build_detr("rt_detr", backbone="resnet50d", fine=True, num_classes=81, frozen_bn=True)  # FINE Table 1
        build_detr("deformable_detr", backbone="resnet50", addon="mscsa", num_classes=81)       # MSCSA Table 2

    The encoder / input-projection channels are read from the backbone.

    Args:
        arch: ``"deformable_detr"``, ``"rt_detr"`` or ``"rt_detr_v2"``.
        backbone: a registered or timm backbone name.
        num_classes: classes including the background; the detector has ``num_classes - 1`` labels.
        addon: a registered add-on name (``"mscsa"``) between the backbone and the detector.
        fine: RT-DETR(v2) only: FINE at the hybrid encoder's top-down fusions (True or FINE's kwargs).
        backbone_kwargs, addon_kwargs: their keyword arguments.
        strides: the backbone strides the detector reads (C3-C5: 8, 16, 32).
        frozen_bn: freeze the backbone's BatchNorm (not the add-on's).
        frozen_stages: stop gradients up to the module of the backbone's n-th feature output (0: none).
        pretrained: backbone weights (``create_model``'s ``pretrained``); None downloads nothing.
        image_size, min_size, max_size, image_mean, image_std, train_resize, num_top: see ``DetrDetector``;
            ``"default"`` takes the arch's reference pipeline (module doc).
        **config: transformers config fields (``encoder_layers``, ``d_model``,
            ``decoder_layers``, ``with_box_refine``, ``two_stage``, ...).
    """
    if arch not in DETR_ARCHS:
        raise ValueError(f"unknown DETR arch {arch!r}; choose one of {list(DETR_ARCHS)}")
    if not isinstance(backbone, str) or (addon is not None and not isinstance(addon, str)):
        raise ValueError(
            "the DETR detectors take the backbone and add-on by name (a registered or timm backbone, a registered "
            "add-on), so that save_pretrained / from_pretrained and checkpoints can rebuild them"
        )
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes counts the background and must be at least 2, got {num_classes!r}")
    if fine and arch == "deformable_detr":
        raise ValueError("fine=True puts FINE in RT-DETR's hybrid encoder; Deformable DETR has no top-down fusion")
    cfg_record = dict(
        arch=arch, backbone=backbone, num_classes=num_classes, addon=addon, fine=fine,
        backbone_kwargs=backbone_kwargs, addon_kwargs=addon_kwargs, strides=list(strides), frozen_bn=frozen_bn,
        frozen_stages=frozen_stages, image_size=image_size, min_size=min_size, max_size=max_size,
        image_mean=image_mean, image_std=image_std, train_resize=train_resize, num_top=num_top, **config,
    )  # fmt: skip
    backbone_config = MsfBackboneConfig(
        backbone=backbone,
        backbone_kwargs=dict(backbone_kwargs or {}),
        addon=addon,
        addon_kwargs=dict(addon_kwargs or {}),
        strides=list(strides),
        frozen_bn=frozen_bn,
        frozen_stages=frozen_stages,
    )
    # The channels are known only once the backbone is built: build it on the meta device to read them.
    with torch.device("meta"):
        probe = MsfBackbone(backbone_config)
    chs, size_divisor = list(probe.num_features), probe.size_divisor
    if probe.addon is not None:  # record the settings the add-on resolved (MSCSA's Table 7 row), not the defaults
        backbone_config.addon_kwargs = cfg_record["addon_kwargs"] = dict(probe.addon.model_cfg["kwargs"])
    del probe
    config_cls, model_cls = _CLASSES[arch]
    labels = num_classes - 1
    common = dict(backbone_config=backbone_config, num_labels=labels)
    if arch == "deformable_detr":
        hf_config = config_cls(**common, **config)
        if hf_config.num_feature_levels < len(strides):
            raise ValueError(
                f"Deformable DETR has num_feature_levels={hf_config.num_feature_levels}, fewer than the "
                f"{len(strides)} backbone strides {list(strides)}"
            )
    else:
        if len(strides) < 2:
            raise ValueError(f"RT-DETR's hybrid encoder fuses at least two levels, got strides {list(strides)}")
        bad = [(a, b) for a, b in zip(strides, strides[1:], strict=False) if b != 2 * a]
        if bad:
            raise ValueError(
                f"RT-DETR's hybrid encoder upsamples by 2 between levels, but the strides {list(strides)} have "
                f"steps {bad}; choose consecutive strides such as (8, 16, 32)"
            )
        config.setdefault("num_feature_levels", len(strides))
        config.setdefault("encode_proj_layers", [len(strides) - 1])
        # The decoder reads the encoder's outputs, all of the encoder's hidden size.
        config.setdefault("decoder_in_channels", [config.get("encoder_hidden_dim", 256)] * len(strides))
        hf_config = config_cls(
            **common,
            encoder_in_channels=chs,
            feat_strides=list(strides),
            freeze_backbone_batch_norms=False,  # msfusion's frozen_bn decides
            **config,
        )
        if fine:
            options = {} if fine is True else dict(fine)
            # Checked now so that a bad option is a ValueError here, not inside transformers.
            for idx in range(len(strides) - 1):
                FINE(hf_config.encoder_hidden_dim, strides[-2 - idx], strides[-1 - idx], **options).to("meta")
            hf_config.msfusion_fine = options or True
    detr = model_cls(hf_config)
    if pretrained:
        weights = create_model(backbone, features_only=True, pretrained=pretrained, **(backbone_kwargs or {}))
        missing, unexpected = detr.model.backbone.model.net.load_state_dict(weights.state_dict(), strict=False)
        if unexpected:
            raise ValueError(f"backbone weights {pretrained!r} have keys the backbone lacks: {unexpected[:5]}")
    defaults = _INPUT_DEFAULTS[arch]
    model = DetrDetector(
        detr,
        arch,
        num_classes,
        image_size=defaults["image_size"] if image_size == "default" else image_size,
        min_size=min_size,
        max_size=max_size,
        image_mean=defaults["image_mean"] if image_mean == "default" else image_mean,
        image_std=defaults["image_std"] if image_std == "default" else image_std,
        train_resize=train_resize,
        num_top=num_top,
        size_divisor=math.lcm(32, size_divisor),
    )
    model.model_cfg = {"builder": "build_detector", "kwargs": recordable(cfg_record, "build_detector")}
    return model


class _MetaGridSample(TorchDispatchMode):
    """Shape-only ``grid_sampler_2d`` on the meta device.

    PyTorch's meta kernel for it runs the full Python decomposition (about
    0.05 s a call, two thirds of a Deformable DETR count); the output shape
    alone is (N, C, H_out, W_out) from input (N, C, H, W) and grid (N, H_out,
    W_out, 2). No counting rule reads it (sampling is not a multiply-add).
    """

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket is torch.ops.aten.grid_sampler_2d and args[0].device.type == "meta":
            x, grid = args[0], args[1]
            return x.new_empty((x.shape[0], x.shape[1], grid.shape[1], grid.shape[2]))
        return func(*args, **(kwargs or {}))


class DetrComplexity(nn.Module):
    """A DETR detector's forward on an already resized, normalised (B, 3, H, W) batch, for ``count_macs``.

    The papers count their "GFLOPs" on the network alone (RT-DETR and FINE
    Table 1 at 640 x 640, CEDNet / MSCSA at 800 x 1280): no resize, no
    post-processing.
    """

    def __init__(self, detector: DetrDetector) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: Tensor) -> Tensor:
        mask = torch.ones(images.shape[0], *images.shape[-2:], dtype=torch.long, device=images.device)
        if images.device.type != "meta":
            return self.detector.detr(pixel_values=images, pixel_mask=mask).logits
        # transformers' shape checks read tensor values, which the meta device does not have; its documented
        # switch skips them for this shape-only pass.
        previous = os.environ.get("TRANSFORMERS_DISABLE_TORCH_CHECK")
        os.environ["TRANSFORMERS_DISABLE_TORCH_CHECK"] = "1"
        try:
            with _MetaGridSample():
                return self.detector.detr(pixel_values=images, pixel_mask=mask).logits
        finally:
            if previous is None:
                del os.environ["TRANSFORMERS_DISABLE_TORCH_CHECK"]
            else:
                os.environ["TRANSFORMERS_DISABLE_TORCH_CHECK"] = previous


# msfusion.analysis.report counts a detector through its complexity module.
DetrDetector.complexity_module = DetrComplexity
