"""The segmentor: backbone -> [add-on] -> [neck] -> head -> logits at the input size.

The encoder-decoder of mmseg's ``EncoderDecoder`` as one plain module (DESIGN.md,
"Segmentor"). Inputs of any size work: the image is padded inside (bottom and
right, with zeros, i.e. the mean colour after normalisation) to a multiple of
``size_divisor``, as mmseg's test pipeline does (``size_divisor=32``,
official_facts §2 "Test"), and the logits are upsampled bilinearly
(align_corners=False) and cropped back.

Also here: sliding-window inference and multi-scale + flip testing, used by the
evaluator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msfusion.layers import check_image_batch, resize_to

__all__ = ["Segmentor", "build_segmentor"]


class Segmentor(nn.Module):
    """Backbone, optional add-on and neck, a decode head and optional auxiliary heads.

    ``forward(images)`` with images (B, 3, H, W), float and normalised, returns
    logits (B, num_classes, H, W) in train and eval mode. ``forward_train``
    also returns the auxiliary heads' logits for the loss.

    Args:
        backbone: returns ``list[Tensor]`` fine to coarse and has ``feature_info``.
        decode_head: takes that list, returns (B, K, h, w) logits.
        num_classes: K.
        addon: optional module list -> list (e.g. MSCSA), same contract.
        neck: optional module list -> list (e.g. FPN), same contract.
        auxiliary_heads: optional heads trained with ``auxiliary_weights``.
        size_divisor: inputs are padded to a multiple of this.
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
        size_divisor: int = 32,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if len(auxiliary_heads) != len(auxiliary_weights):
            raise ValueError("give one loss weight per auxiliary head")
        self.backbone = backbone
        self.addon = addon
        self.neck = neck
        self.decode_head = decode_head
        self.auxiliary_head = nn.ModuleList(auxiliary_heads) if auxiliary_heads else None
        self.auxiliary_weights = tuple(auxiliary_weights)
        self.num_classes = num_classes
        self.size_divisor = size_divisor
        self.in_chans = in_chans

    def extract_features(self, images: Tensor) -> list[Tensor]:
        feats = self.backbone(images)
        if self.addon is not None:
            feats = self.addon(feats)
        if self.neck is not None:
            feats = self.neck(feats)
        return feats

    def _pad(self, images: Tensor) -> Tensor:
        # Integer shape arithmetic and an unconditional pad keep this a traced expression,
        # so an exported graph (ONNX, dynamic H and W) pads correctly at every size.
        h, w = images.shape[-2], images.shape[-1]
        d = self.size_divisor
        return F.pad(images, (0, (d - w % d) % d, 0, (d - h % d) % d))

    def _to_input_size(self, logits: Tensor, padded: tuple[int, int], size: tuple[int, int]) -> Tensor:
        logits = resize_to(logits, padded)
        return logits[..., : size[0], : size[1]]

    def forward_train(self, images: Tensor) -> dict[str, Tensor | list[Tensor]]:
        """Logits of the decode head and of each auxiliary head, all at (H, W)."""
        check_image_batch(images, self.in_chans)
        size = tuple(images.shape[-2:])
        padded = self._pad(images)
        feats = self.extract_features(padded)
        out: dict[str, Tensor | list[Tensor]] = {
            "logits": self._to_input_size(self.decode_head(feats), padded.shape[-2:], size)
        }
        if self.auxiliary_head is not None:
            out["aux_logits"] = [self._to_input_size(h(feats), padded.shape[-2:], size) for h in self.auxiliary_head]
        return out

    def forward(self, images: Tensor) -> Tensor:
        check_image_batch(images, self.in_chans)
        size = tuple(images.shape[-2:])
        padded = self._pad(images)
        logits = self.decode_head(self.extract_features(padded))
        return self._to_input_size(logits, padded.shape[-2:], size)

    @torch.no_grad()
    def slide_inference(self, images: Tensor, crop_size: tuple[int, int], stride: tuple[int, int]) -> Tensor:
        """Sliding-window logits, averaged where windows overlap (mmseg's ``slide`` mode)."""
        b, _, h, w = images.shape
        ch, cw = crop_size
        sh, sw = stride
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


def build_segmentor(
    backbone: str | nn.Module,
    *,
    head: str | nn.Module,
    num_classes: int,
    addon: nn.Module | None = None,
    neck: nn.Module | None = None,
    head_kwargs: dict | None = None,
    backbone_kwargs: dict | None = None,
    **kwargs,
) -> Segmentor:
    """Compose a segmentor from a backbone (name or module) and a head (name or module).

    A backbone name is built with ``create_model(name, features_only=True)``,
    so any registered backbone or timm model works. Head names: ``"ham"``
    (LightHamHead), ``"mlp"`` (SegFormer all-MLP), ``"msca"`` (MSCA head),
    ``"uper"`` (UperNet).
    """
    from msfusion.models.heads import build_head
    from msfusion.registry import create_model

    if isinstance(backbone, str):
        backbone = create_model(backbone, features_only=True, **(backbone_kwargs or {}))
    feature_source = neck if neck is not None else addon if addon is not None else backbone
    in_channels = [info["chs"] for info in feature_source.feature_info]
    if isinstance(head, str):
        head = build_head(head, in_channels=in_channels, num_classes=num_classes, **(head_kwargs or {}))
    return Segmentor(backbone, head, num_classes, addon=addon, neck=neck, **kwargs)
