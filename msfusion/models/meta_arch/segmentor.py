"""The segmentor: backbone -> [add-on] -> [neck] -> head -> logits at the input size.

The encoder-decoder of mmsegmentation's ``EncoderDecoder`` as one plain module
(the composition contract: every part passes a list of maps finest first
described by ``feature_info``; heads read maps by stride). Inputs of any size
work: the image is padded inside (bottom and right, with zeros, i.e. the mean
colour after normalisation) to a multiple of ``size_divisor`` (32, as
mmsegmentation's test pipeline, or more when the backbone needs it, e.g. a
window transformer) and at least to the backbone's minimum size; the logits
are upsampled bilinearly (align_corners=False) and cropped back.

Also here: sliding-window inference and multi-scale + flip testing, used by the
evaluator, and ``build_segmentor``, which composes a segmentor from names.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from msfusion.layers import check_image_batch, resize_to
from msfusion.models.chain import FeatureChain, build_chain, build_part, check_finite_input, records_call

__all__ = ["Segmentor", "build_segmentor"]


class Segmentor(FeatureChain):
    """Backbone, optional add-on and neck, a decode head and optional auxiliary heads.

    ``forward(images)`` with images (B, 3, H, W), float and normalised, returns
    logits (B, num_classes, H, W) in train and eval mode. ``forward_train``
    also returns the auxiliary heads' logits for the loss.

    Args:
        backbone: returns ``list[Tensor]`` finest first and has ``feature_info``.
        decode_head: takes the last producer's list, returns (B, K, h, w) logits.
        num_classes: K.
        addon: optional module list -> list (e.g. MSCSA), same contract.
        neck: optional module list -> list (e.g. FPN), same contract.
        auxiliary_heads: optional heads trained with ``auxiliary_weights``.
        auxiliary_inputs: per auxiliary head, what it reads: ``"features"``
            (the last producer's list, default) or ``"extra:<k>"``, the k-th
            extra map of a backbone that exposes ``forward_with_extras`` (a
            CEDNet's earlier-stage 1/8 maps).
        size_divisor: inputs are padded to a multiple of this and of the
            backbone's own ``size_divisor``.
        in_chans: input channels.
    """

    def __init__(
        self,
        backbone: nn.Module,
        decode_head: nn.Module,
        num_classes: int,
        addon: nn.Module | None = None,
        neck: nn.Module | None = None,
        auxiliary_heads: Sequence[nn.Module] = (),
        auxiliary_weights: Sequence[float] = (),
        auxiliary_inputs: Sequence[str] | None = None,
        size_divisor: int = 32,
        in_chans: int = 3,
    ) -> None:
        if len(auxiliary_heads) != len(auxiliary_weights):
            raise ValueError("give one loss weight per auxiliary head")
        auxiliary_inputs = tuple(auxiliary_inputs or ("features",) * len(auxiliary_heads))
        if len(auxiliary_inputs) != len(auxiliary_heads):
            raise ValueError("give one input ('features' or 'extra:<k>') per auxiliary head")
        super().__init__(backbone, addon, neck, size_divisor=size_divisor)
        self.decode_head = decode_head
        self.auxiliary_head = nn.ModuleList(auxiliary_heads) if auxiliary_heads else None
        self.auxiliary_weights = tuple(auxiliary_weights)
        self.auxiliary_inputs = auxiliary_inputs
        self.num_classes = num_classes
        self.in_chans = in_chans

    def weight_dtype(self) -> torch.dtype | None:
        """The weights' floating dtype (that of the first floating parameter), which inputs must match."""
        return next((p.dtype for p in self.parameters() if p.is_floating_point()), None)

    def extract_features(self, images: Tensor) -> list[Tensor]:
        """(B, C, H, W) padded images -> the maps the decode head reads, finest first."""
        return self.forward_features(images)

    def _to_input_size(self, logits: Tensor, padded: tuple[int, int], size: tuple[int, int]) -> Tensor:
        # A channels-last model's logits stay channels-last: the bilinear upsample runs 1.7x faster forward
        # and 9x faster backward on NHWC data on CPU (150 classes, 2x64x64 -> 2x512x512, torch 2.14), and
        # the segmentation loss reads NHWC logits as rows of classes (SegmentationTask).
        logits = resize_to(logits, padded)
        return logits[..., : size[0], : size[1]]

    def forward_train(self, images: Tensor) -> dict[str, Tensor | list[Tensor]]:
        """Logits of the decode head and of each auxiliary head, all at (H, W)."""
        check_image_batch(images, self.in_chans, self.weight_dtype())
        size = tuple(images.shape[-2:])
        padded = self.pad(images)
        feats, extras = self.forward_with_extras(padded)
        out: dict[str, Tensor | list[Tensor]] = {
            "logits": self._to_input_size(self.decode_head(feats), padded.shape[-2:], size)
        }
        if self.auxiliary_head is not None:
            aux = []
            for head, source in zip(self.auxiliary_head, self.auxiliary_inputs, strict=True):
                inputs = feats if source == "features" else [extras[int(source.split(":")[1])]]
                aux.append(self._to_input_size(head(inputs), padded.shape[-2:], size))
            out["aux_logits"] = aux
        return out

    def forward(self, images: Tensor) -> Tensor:
        check_image_batch(images, self.in_chans, self.weight_dtype())
        check_finite_input(images)
        size = tuple(images.shape[-2:])
        padded = self.pad(images)
        logits = self.decode_head(self.extract_features(padded))
        return self._to_input_size(logits, padded.shape[-2:], size)

    @torch.no_grad()
    def slide_inference(self, images: Tensor, crop_size: tuple[int, int], stride: tuple[int, int]) -> Tensor:
        """Sliding-window logits, averaged where windows overlap (mmseg's ``slide`` mode)."""
        b, _, h, w = images.shape
        ch, cw = crop_size
        sh, sw = stride
        if min(ch, cw, sh, sw) < 1 or sh > ch or sw > cw:
            # Windows start every stride and the last is moved back to the edge: stride <= crop covers every pixel.
            raise ValueError(
                f"slide crop {tuple(crop_size)} and stride {tuple(stride)} must be positive, stride <= crop"
            )
        rows = max(math.ceil((h - ch) / sh), 0) + 1
        cols = max(math.ceil((w - cw) / sw), 0) + 1
        logits = images.new_zeros((b, self.num_classes, h, w))
        count = images.new_zeros((b, 1, h, w))
        for r in range(rows):
            for c in range(cols):
                y1, x1 = r * sh, c * sw
                y2, x2 = min(y1 + ch, h), min(x1 + cw, w)
                y1, x1 = max(y2 - ch, 0), max(x2 - cw, 0)
                logits[:, :, y1:y2, x1:x2] += self(images[:, :, y1:y2, x1:x2])
                count[:, :, y1:y2, x1:x2] += 1
        return logits / count

    @torch.no_grad()
    def aug_inference(
        self,
        images: Tensor,
        scales: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75),
        flip: bool = True,
        crop_size: tuple[int, int] | None = None,
        stride: tuple[int, int] | None = None,
    ) -> Tensor:
        """Multi-scale (+ flip) test: softmax scores averaged over scales at (H, W)."""
        size = tuple(images.shape[-2:])
        total = None
        n = 0
        for scale in scales:
            scaled_size = (max(int(size[0] * scale + 0.5), 1), max(int(size[1] * scale + 0.5), 1))
            x = resize_to(images, scaled_size)
            for flipped in (False, True) if flip else (False,):
                xi = x.flip(-1) if flipped else x
                if crop_size is not None and stride is not None:
                    logits = self.slide_inference(xi, crop_size, stride)
                else:
                    logits = self(xi)
                if flipped:
                    logits = logits.flip(-1)
                probs = resize_to(logits, size).softmax(dim=1)
                total = probs if total is None else total + probs
                n += 1
        return total / n


@records_call("build_segmentor")
def build_segmentor(
    backbone: str | nn.Module,
    *,
    head: str | nn.Module,
    num_classes: int,
    addon: str | nn.Module | None = None,
    neck: str | nn.Module | None = None,
    backbone_kwargs: dict[str, Any] | None = None,
    addon_kwargs: dict[str, Any] | None = None,
    neck_kwargs: dict[str, Any] | None = None,
    head_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Segmentor:
    """Compose a segmentor: backbone -> [add-on] -> [neck] -> head.

    Each part is a registered name (``msfusion.list_models(kind=...)``) with
    its keyword arguments in ``*_kwargs``, or a module. A backbone name is
    built with ``create_model(name, features_only=True)``, so any registered
    backbone or classifier family (``mscan_t``, ``cednet_next_t``) and any timm
    model name works. Each later part is built from the ``feature_info`` of
    the one before, and the head reads the strides it names.

    Example::

        mf.build_segmentor("resnet50", neck="fpn", head="semantic_fpn", num_classes=19)
        mf.build_segmentor("convnext_atto", head="ham", num_classes=5, head_kwargs={"channels": 128})

    Args:
        backbone, addon, neck, head: names or modules.
        num_classes: K.
        backbone_kwargs, addon_kwargs, neck_kwargs, head_kwargs: constructor
            arguments of parts given by name.
        **kwargs: ``Segmentor`` arguments (``size_divisor``, ...).

    Returns:
        The ``Segmentor``, with a ``model_cfg`` that ``save_checkpoint`` records
        and ``load_model`` rebuilds (refused when a part was given as a module
        that was not itself built by name).
    """
    backbone, addon, neck, info = build_chain(
        backbone, addon, neck, backbone_kwargs=backbone_kwargs, addon_kwargs=addon_kwargs, neck_kwargs=neck_kwargs
    )
    head = build_part(head, "head", info, head_kwargs, num_classes=num_classes)
    kwargs.setdefault("in_chans", getattr(backbone, "in_chans", 3))
    return Segmentor(backbone, head, num_classes, addon=addon, neck=neck, **kwargs)
