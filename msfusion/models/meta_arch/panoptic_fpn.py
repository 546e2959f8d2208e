"""Panoptic FPN: Mask R-CNN and a semantic segmentation branch on one shared FPN, merged into panoptic maps.

Paper: Kirillov, Girshick, He, Dollar, "Panoptic Feature Pyramid Networks",
CVPR 2019 (arXiv 1901.02446):

- Sec. 3.1-3.2: the instance branch is Mask R-CNN on the FPN (here
  torchvision's, built by ``build_detector("mask_rcnn", ...)`` with our
  backbones and FPN, with or without FINE); the semantic branch (Fig. 3) reads
  the same P2-P5: per level, 3x3 conv (128 channels) + GroupNorm(32) + ReLU +
  2x bilinear upsampling until stride 4, the maps summed and a 1x1 conv to
  ``num_stuff_classes + 1`` logits at 1/4 (all thing pixels form one extra
  class, index 0 here; void pixels are ignored, label 255);
- Sec. 3.3: the loss is the Mask R-CNN losses plus ``0.5`` x the per-pixel
  cross-entropy of the semantic branch (the weight of the 1x OpenMMLab
  recipe, whose R50 model reaches PQ 40.2 / SQ 77.8 / RQ 49.3 on COCO, the
  baseline of FINE, arXiv 2606.14005, Table 7);
- Sec. 4 (and the PQ paper, arXiv 1801.00868, Sec. 7): the panoptic merge
  lays the instances by decreasing score above ``score_thresh`` (0.6 in the
  OpenMMLab test config), drops an instance whose mask lies more than
  ``overlap_thresh`` (0.5) on instances already laid and keeps only its free
  pixels otherwise; then each stuff class of the semantic prediction fills
  the still free pixels it covers if that area is at least ``stuff_area``
  (4096 pixels, set for COCO's 800-pixel images); the rest is void (id 0).

FINE (Table 7: 47.6 M, 157.3 G against 46.0 M, 156.7 G) sits in the FPN's
top-down fusions, which both branches share. Counting: ``PanopticComplexity``
adds the semantic branch to mmdetection's ``get_flops`` convention
(``msfusion.models.meta_arch.detector.DetectorComplexity``).

Label spaces: detector labels 1..T are the thing classes (``num_classes =
T + 1`` counts the background, torchvision's convention); semantic class k in
1..S is stuff class k; a panoptic segment's ``category_id`` is T + k for stuff
and the thing label for things, so panoptic classes are
``["background", things..., stuff...]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN

from msfusion.models.chain import pad_to_size_constraint, records_call
from msfusion.models.heads.semantic_fpn import SemanticFPNHead
from msfusion.models.meta_arch.detector import DETECTOR_ARCHS, DetectorComplexity, build_detector
from msfusion.registry import PaperFigures, register_model

__all__ = ["PanopticFPN", "PanopticComplexity", "build_panoptic_fpn", "panoptic_merge", "IGNORE_INDEX"]

IGNORE_INDEX = 255
THING_CLASS = 0  # the semantic branch's index of "any thing"


def panoptic_merge(
    scores: Tensor,
    labels: Tensor,
    masks: Tensor,
    semantic: Tensor,
    num_things: int,
    score_thresh: float = 0.6,
    overlap_thresh: float = 0.5,
    stuff_area: int = 4096,
    mask_thresh: float = 0.5,
) -> tuple[Tensor, list[dict[str, Any]]]:
    """Instances and a semantic map -> a panoptic map (module doc, Panoptic FPN Sec. 4).

    Args:
        scores: (D,) instance scores.
        labels: (D,) thing labels in 1..T.
        masks: (D, H, W) or (D, 1, H, W) mask probabilities.
        semantic: (H, W) semantic labels: 0 = thing, 1..S = stuff.
        num_things: T.
        score_thresh, overlap_thresh, stuff_area, mask_thresh: module doc.

    Returns:
        ``(ids, segments)``: ids (H, W) int32 with 0 = void, and one dict per
        segment ``{"id", "category_id", "isthing", "score", "area"}``
        (``category_id``: the thing label, or T + k for stuff class k).
    """
    if masks.dim() == 4:
        masks = masks[:, 0]
    height, width = semantic.shape[-2:]
    if masks.shape[-2:] != (height, width):
        raise ValueError(f"masks {tuple(masks.shape)} and semantic map {tuple(semantic.shape)} differ in size")
    ids = torch.zeros((height, width), dtype=torch.int32, device=semantic.device)
    segments: list[dict[str, Any]] = []
    for i in torch.argsort(scores, descending=True).tolist():
        score = float(scores[i])
        if score < score_thresh:
            break
        mask = masks[i] > mask_thresh
        area = int(mask.sum())
        if area == 0:
            continue
        taken = mask & (ids > 0)
        if int(taken.sum()) / area > overlap_thresh:
            continue
        mask &= ids == 0
        ids[mask] = len(segments) + 1
        segments.append(
            {"id": len(segments) + 1, "category_id": int(labels[i]), "isthing": True, "score": score,
             "area": int(mask.sum())}
        )  # fmt: skip
    for k in torch.unique(semantic).tolist():
        if k == THING_CLASS or k == IGNORE_INDEX:
            continue
        mask = (semantic == k) & (ids == 0)
        area = int(mask.sum())
        if area < stuff_area:
            continue
        ids[mask] = len(segments) + 1
        segments.append(
            {"id": len(segments) + 1, "category_id": num_things + int(k), "isthing": False, "score": 1.0, "area": area}
        )
    return ids, segments


class PanopticFPN(GeneralizedRCNN):
    """Panoptic FPN on a torchvision Mask R-CNN (module doc).

    Training: ``model(images, targets)`` as Mask R-CNN, each target also
    holding ``semantic`` (H_i, W_i) int64 (0 = thing, 1..S = stuff, 255 =
    void) -> the Mask R-CNN losses and ``loss_semantic``. Inference:
    ``model(images)`` -> per image the Mask R-CNN output (``boxes``,
    ``labels``, ``scores``, ``masks``) plus ``semantic`` (H_i, W_i) labels,
    ``panoptic`` (H_i, W_i) int32 segment ids and ``segments_info``, in the
    input image's pixels.

    Args:
        detector: a Mask R-CNN of ``build_detector`` (its backbone yields the
            FPN levels the semantic branch reads).
        num_stuff_classes: S.
        semantic_chs: width of the semantic branch (128).
        semantic_strides: FPN strides it reads (4, 8, 16, 32: P2-P5).
        num_groups: GroupNorm groups of the semantic branch (32).
        semantic_weight: weight of its cross-entropy (0.5).
        score_thresh, overlap_thresh, stuff_area: the merge (``panoptic_merge``).
    """

    def __init__(
        self,
        detector: GeneralizedRCNN,
        num_stuff_classes: int,
        semantic_chs: int = 128,
        semantic_strides: Sequence[int] = (4, 8, 16, 32),
        num_groups: int = 32,
        semantic_weight: float = 0.5,
        score_thresh: float = 0.6,
        overlap_thresh: float = 0.5,
        stuff_area: int = 4096,
    ) -> None:
        if getattr(detector, "arch", None) != "mask_rcnn":
            raise ValueError(f"Panoptic FPN needs a Mask R-CNN, got arch {getattr(detector, 'arch', None)!r}")
        if not isinstance(num_stuff_classes, int) or num_stuff_classes < 1:
            raise ValueError(f"num_stuff_classes must be a positive integer, got {num_stuff_classes!r}")
        super().__init__(detector.backbone, detector.rpn, detector.roi_heads, detector.transform)
        self.arch = detector.arch
        self.num_classes = detector.num_classes
        self.num_things = detector.num_classes - 1
        self.num_stuff_classes = num_stuff_classes
        self.feature_info = detector.feature_info
        self.semantic_head = SemanticFPNHead(
            self.backbone.feature_info, num_stuff_classes + 1, semantic_strides, semantic_chs, dropout=0.0,
            num_groups=num_groups,
        )  # fmt: skip
        self.semantic_weight = semantic_weight
        self.score_thresh = score_thresh
        self.overlap_thresh = overlap_thresh
        self.stuff_area = stuff_area

    @staticmethod
    def _semantic_targets(
        maps: list[Tensor | None], sizes: list[tuple[int, int]], batch_size: tuple[int, int], device: torch.device
    ) -> Tensor:
        """(B, H_pad, W_pad) int64: each (H_i, W_i) map resized (nearest) as its image was, padded with void."""
        out = torch.full((len(maps), *batch_size), IGNORE_INDEX, dtype=torch.long, device=device)
        for i, (sem, (h, w)) in enumerate(zip(maps, sizes, strict=True)):
            if sem is None:
                raise ValueError("Panoptic FPN training targets need 'semantic' (H, W) maps besides boxes and masks")
            sem = sem.to(device)
            if sem.shape[-2:] != (h, w):
                sem = F.interpolate(sem[None, None].float(), size=(h, w), mode="nearest")[0, 0]
            out[i, :h, :w] = sem.long()
        return out

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None) -> Any:
        if self.training and targets is None:
            raise ValueError("Panoptic FPN in training mode needs targets (boxes, labels, masks, semantic)")
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        semantic_maps = [t.get("semantic") for t in targets] if targets is not None else None
        detector_targets = (
            [{k: v for k, v in t.items() if k != "semantic"} for t in targets] if targets is not None else None
        )
        image_list, detector_targets = self.transform(images, detector_targets)
        features = self.backbone(image_list.tensors)
        proposals, proposal_losses = self.rpn(image_list, features, detector_targets)
        detections, detector_losses = self.roi_heads(features, proposals, image_list.image_sizes, detector_targets)
        logits = self.semantic_head(list(features.values()))
        # The branch predicts at 1/4 of the padded batch; bring it to the batch's pixels.
        logits = F.interpolate(logits, size=image_list.tensors.shape[-2:], mode="bilinear", align_corners=False)
        if self.training:
            sem_targets = self._semantic_targets(
                semantic_maps, image_list.image_sizes, tuple(logits.shape[-2:]), logits.device
            )
            if (sem_targets != IGNORE_INDEX).any():
                loss = F.cross_entropy(logits.float(), sem_targets, ignore_index=IGNORE_INDEX)
            else:
                loss = logits.sum() * 0.0  # every pixel void: keep the graph without CE's NaN
            return {**proposal_losses, **detector_losses, "loss_semantic": self.semantic_weight * loss}
        detections = self.transform.postprocess(detections, image_list.image_sizes, original_sizes)
        for i, (det, (h, w), size) in enumerate(zip(detections, image_list.image_sizes, original_sizes, strict=True)):
            sem_logits = logits[i : i + 1, :, :h, :w]
            # While tracing (ONNX export) the sizes are traced values: always resize, so other sizes stay right.
            if torch.jit.is_tracing() or (h, w) != size:
                sem_logits = F.interpolate(sem_logits, size=size, mode="bilinear", align_corners=False)
            det["semantic"] = sem_logits[0].argmax(0)
            if torch.jit.is_tracing():
                continue  # ONNX export: the merge (a Python loop over segments) runs on the graph's outputs
            det["panoptic"], det["segments_info"] = panoptic_merge(
                det["scores"], det["labels"], det["masks"], det["semantic"], self.num_things,
                self.score_thresh, self.overlap_thresh, self.stuff_area,
            )  # fmt: skip
        return detections


class PanopticComplexity(DetectorComplexity):
    """``DetectorComplexity`` (box heads on 1000 RoIs, masks on 100) plus the semantic branch."""

    def forward(self, images: Tensor) -> list[Tensor]:
        det = self.detector
        images = pad_to_size_constraint(images, det.transform.size_divisible)
        feats = list(det.backbone(images).values())
        outs = DETECTOR_ARCHS.get("mask_rcnn").complexity(self, feats)
        return [*outs, det.semantic_head(feats)]


@records_call("build_panoptic_fpn")
def build_panoptic_fpn(
    *,
    backbone: str | nn.Module,
    num_classes: int,
    num_stuff_classes: int,
    fine: bool | dict[str, Any] = False,
    semantic_chs: int = 128,
    num_groups: int = 32,
    semantic_weight: float = 0.5,
    score_thresh: float = 0.6,
    overlap_thresh: float = 0.5,
    stuff_area: int = 4096,
    **detector_kwargs: Any,
) -> PanopticFPN:
    """Panoptic FPN from our parts: ``build_detector("mask_rcnn", ...)`` plus the semantic branch.

    Args:
        backbone: as ``build_detector``.
        num_classes: thing classes + 1 (the background), as ``build_detector``.
        num_stuff_classes: stuff classes S (the semantic branch predicts S + 1).
        fine: FINE in the shared FPN's top-down fusions.
        semantic_chs, num_groups, semantic_weight, score_thresh, overlap_thresh,
            stuff_area: as ``PanopticFPN``.
        **detector_kwargs: ``build_detector``'s (neck, backbone_kwargs,
            min_size, max_size, RPN / RoI settings ...).
    """
    detector = build_detector("mask_rcnn", backbone=backbone, num_classes=num_classes, fine=fine, **detector_kwargs)
    return PanopticFPN(
        detector, num_stuff_classes, semantic_chs, num_groups=num_groups, semantic_weight=semantic_weight,
        score_thresh=score_thresh, overlap_thresh=overlap_thresh, stuff_area=stuff_area,
    )  # fmt: skip


# ``msfusion.analysis.model_report`` counts a detector through this module (mmdetection's get_flops convention).
PanopticFPN.complexity_module = PanopticComplexity

# COCO panoptic: 80 thing and 53 stuff categories (Kirillov et al., arXiv 1801.00868, Sec. 3).
COCO_PANOPTIC = dict(num_classes=81, num_stuff_classes=53)
R50 = dict(backbone="resnet50", backbone_kwargs=dict(out_indices=(1, 2, 3, 4)))


# _paper(params_m, gmacs): FINE Table 7's COCO panoptic figures.
_paper = partial(
    PaperFigures,
    input_size=(3, 640, 640),
    source="FINE paper (arXiv 2606.14005) Table 7",
    macs_rules="mmcv",
    notes="OpenMMLab 1x Panoptic FPN R50 on COCO panoptic (80 things, 53 stuff) at FINE's 640x640 input; "
    "mmdetection get_flops (box head on 1000 RoIs, mask head on 100, the semantic branch on the image)",
)


def _create(defaults: dict[str, Any], kwargs: dict[str, Any]) -> PanopticFPN:
    cfg = {**defaults, **kwargs}
    for key in ("backbone_kwargs", "neck_kwargs"):
        if isinstance(defaults.get(key), dict) and isinstance(kwargs.get(key), dict):
            cfg[key] = {**defaults[key], **kwargs[key]}
    return build_panoptic_fpn(**cfg)


@register_model(kind="detector", paper=_paper(46.0, 156.7), backbone="resnet50")
def panoptic_fpn_r50(**kwargs: Any) -> PanopticFPN:
    """Panoptic FPN, ResNet-50 FPN (FINE Table 7 baseline: 46.0M, 156.7G, PQ 40.2 / SQ 77.8 / RQ 49.3)."""
    return _create({**R50, **COCO_PANOPTIC, "fine": False}, kwargs)


@register_model(kind="detector", paper=_paper(47.6, 157.3), backbone="resnet50")
def panoptic_fpn_r50_fine(**kwargs: Any) -> PanopticFPN:
    """Panoptic FPN, ResNet-50 FPN + FINE (FINE Table 7: 47.6M, 157.3G, PQ 40.9 / SQ 78.5 / RQ 50.0)."""
    return _create({**R50, **COCO_PANOPTIC, "fine": True}, kwargs)


@register_model(kind="detector", backbone="resnet10t")
def test_panoptic_fpn(**kwargs: Any) -> PanopticFPN:
    """A small Panoptic FPN (timm ResNet-10-T, 32-channel FPN, small heads) for tests and the shapes demo."""
    defaults = dict(
        backbone="resnet10t", backbone_kwargs=dict(out_indices=(1, 2, 3, 4)), neck_kwargs=dict(out_chs=32),
        num_classes=7, num_stuff_classes=1, semantic_chs=32, num_groups=8, stuff_area=16, min_size=64, max_size=128,
        representation=64, mask_chs=16, rpn_pre_nms_top_n_train=64, rpn_post_nms_top_n_train=32,
        rpn_pre_nms_top_n_test=64, rpn_post_nms_top_n_test=32, box_batch_size_per_image=16, box_detections_per_img=20,
    )  # fmt: skip
    return _create(defaults, kwargs)
