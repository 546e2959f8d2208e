"""Cascade R-CNN and Cascade Mask R-CNN from torchvision's R-CNN parts.

Paper: Cai and Vasconcelos, "Cascade R-CNN: Delving into High Quality Object
Detection", CVPR 2018 (arXiv 1712.00726), Sec. 4: a sequence of detection
heads trained with increasing IoU thresholds, each re-sampling the boxes the
previous one regressed.

- Three stages, foreground IoU 0.5, 0.6 and 0.7 (Sec. 4.2 / 5.1), each a
  torchvision ``RoIHeads`` with its own ``Matcher`` (an RoI is foreground at
  IoU >= u and background below: no ignored band), sampler (512 RoIs per
  image, 25 % foreground) and ``BoxCoder``.
- Regression weights (the inverse of the target standard deviations of Sec.
  4.1): (10, 10, 5, 5), (20, 20, 10, 10), (30, 30, 15, 15); box regression is
  class-agnostic (4 outputs per RoI), as in the paper's Detectron
  implementation and mmdetection's configs.
- Stage loss weights 1, 0.5, 0.25 (mmdetection's ``stage_loss_weights``,
  used by the Cascade Mask R-CNN results of CEDNet Table 2(d) and MSCSA
  Table 2). The box loss is torchvision's Fast R-CNN loss (smooth L1, beta
  1/9, summed over foreground RoIs and divided by the sampled RoIs).
- Training: stage t+1 samples from stage t's regressed boxes (detached) plus
  the ground truth boxes, as in the paper; each stage of Cascade Mask R-CNN
  also trains its own mask head on its own foreground RoIs.
- Inference: the RPN proposals pass through the three stages; the class
  score is the mean of the three classifiers' softmax scores (the paper's
  ensemble, Sec. 5.3 / Table 5, as mmdetection computes it) and the box is
  the last stage's regression; then per-class NMS (0.5), score threshold
  0.05, 100 detections. Masks: the mean of the three mask heads'
  probabilities on the final boxes (mmdetection's ``merge_aug_masks``).

Box heads: ``"2fc"`` (two 1024-d FC layers, torchvision's ``TwoMLPHead``;
mmdetection's ``Shared2FCBBoxHead`` of the ResNet configs) or ``"4conv1fc"``
(four 3x3 convs with BatchNorm and one FC, torchvision's
``FastRCNNConvFCHead``; the Swin / ConvNeXt / CEDNet Cascade Mask R-CNN
configs with SyncBN).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, TwoMLPHead
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, maskrcnn_inference, maskrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import boxes as box_ops

__all__ = ["CascadeBoxPredictor", "CascadeRoIHeads", "CascadeRCNN", "STAGE_IOUS", "STAGE_BOX_WEIGHTS"]

STAGE_IOUS = (0.5, 0.6, 0.7)
STAGE_BOX_WEIGHTS = ((10.0, 10.0, 5.0, 5.0), (20.0, 20.0, 10.0, 10.0), (30.0, 30.0, 15.0, 15.0))
STAGE_LOSS_WEIGHTS = (1.0, 0.5, 0.25)
BOX_HEADS = ("2fc", "4conv1fc")


class CascadeBoxPredictor(nn.Module):
    """Class scores and one class-agnostic box delta per RoI.

    Args:
        in_chs: the box head's output features (1024).
        num_classes: classes including the background.
    """

    def __init__(self, in_chs: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_chs, num_classes)
        self.bbox_pred = nn.Linear(in_chs, 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(R, in_chs) -> logits (R, num_classes), deltas (R, 4)."""
        x = x.flatten(1)
        return self.cls_score(x), self.bbox_pred(x)


def _box_head(kind: str, chs: int, resolution: int, representation: int) -> nn.Module:
    if kind == "2fc":
        return TwoMLPHead(chs * resolution**2, representation)
    if kind == "4conv1fc":
        return FastRCNNConvFCHead((chs, resolution, resolution), [chs] * 4, [representation], norm_layer=nn.BatchNorm2d)
    raise ValueError(f"box_head must be one of {BOX_HEADS}, got {kind!r}")


def _stage_loss(
    class_logits: Tensor, box_regression: Tensor, labels: list[Tensor], targets: list[Tensor]
) -> tuple[Tensor, Tensor]:
    """torchvision's Fast R-CNN loss with class-agnostic deltas (R, 4)."""
    labels_cat = torch.cat(labels, dim=0)
    targets_cat = torch.cat(targets, dim=0)
    loss_cls = F.cross_entropy(class_logits, labels_cat)
    pos = torch.where(labels_cat > 0)[0]
    loss_box = F.smooth_l1_loss(box_regression[pos], targets_cat[pos], beta=1 / 9, reduction="sum")
    return loss_cls, loss_box / max(labels_cat.numel(), 1)


class CascadeRoIHeads(nn.Module):
    """The three cascade stages (and mask heads) behind the RPN.

    Same call as torchvision's ``RoIHeads``: ``forward(features, proposals,
    image_shapes, targets)`` -> (detections, losses).

    Args:
        box_roi_pool: RoI Align 7x7 over the pyramid (shared by the stages; no weights).
        num_classes: classes including the background.
        in_chs: channels of the pyramid.
        box_head: ``"2fc"`` or ``"4conv1fc"`` (module doc).
        representation: the box head's output features (1024).
        mask_chs: channels of the mask heads' convs and deconv (256).
        stage_ious: foreground IoU of each stage.
        stage_box_weights: ``BoxCoder`` weights of each stage.
        stage_loss_weights: loss weight of each stage.
        batch_size_per_image, positive_fraction: RoI sampling per stage.
        score_thresh, nms_thresh, detections_per_img: inference.
        mask_roi_pool: RoI Align 14x14 for Cascade Mask R-CNN, or None.
    """

    def __init__(
        self,
        box_roi_pool: MultiScaleRoIAlign,
        num_classes: int,
        in_chs: int = 256,
        box_head: str = "2fc",
        representation: int = 1024,
        mask_chs: int = 256,
        stage_ious: Sequence[float] = STAGE_IOUS,
        stage_box_weights: Sequence[Sequence[float]] = STAGE_BOX_WEIGHTS,
        stage_loss_weights: Sequence[float] = STAGE_LOSS_WEIGHTS,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        mask_roi_pool: MultiScaleRoIAlign | None = None,
    ) -> None:
        super().__init__()
        if not len(stage_ious) == len(stage_box_weights) == len(stage_loss_weights) >= 1:
            raise ValueError(
                f"give one IoU, one box weight and one loss weight per stage, got {len(stage_ious)}, "
                f"{len(stage_box_weights)} and {len(stage_loss_weights)}"
            )
        if any(not 0 < u < 1 for u in stage_ious):
            raise ValueError(f"stage IoU thresholds must lie in (0, 1), got {tuple(stage_ious)}")
        resolution = box_roi_pool.output_size[0]
        self.stages = nn.ModuleList(
            RoIHeads(
                box_roi_pool,
                _box_head(box_head, in_chs, resolution, representation),
                CascadeBoxPredictor(representation, num_classes),
                fg_iou_thresh=u,
                bg_iou_thresh=u,
                batch_size_per_image=batch_size_per_image,
                positive_fraction=positive_fraction,
                bbox_reg_weights=tuple(w),
                score_thresh=score_thresh,
                nms_thresh=nms_thresh,
                detections_per_img=detections_per_img,
            )
            for u, w in zip(stage_ious, stage_box_weights, strict=True)
        )
        self.stage_loss_weights = tuple(float(w) for w in stage_loss_weights)
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img
        self.mask_roi_pool = mask_roi_pool
        self.mask_heads: nn.ModuleList | None = None
        self.mask_predictors: nn.ModuleList | None = None
        if mask_roi_pool is not None:
            self.mask_heads = nn.ModuleList(MaskRCNNHeads(in_chs, [mask_chs] * 4, 1) for _ in self.stages)
            self.mask_predictors = nn.ModuleList(
                MaskRCNNPredictor(mask_chs, mask_chs, num_classes) for _ in self.stages
            )

    @property
    def has_mask(self) -> bool:
        return self.mask_roi_pool is not None

    def _mask_logits(self, t: int, features: dict[str, Tensor], boxes: list[Tensor], image_shapes) -> Tensor:
        x = self.mask_roi_pool(features, boxes, image_shapes)
        return self.mask_predictors[t](self.mask_heads[t](x))

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        if self.training and targets is None:
            raise ValueError("targets are needed in training mode")
        if self.training and self.has_mask and any("masks" not in t for t in targets):
            raise ValueError("Cascade Mask R-CNN trains on instance masks: every target needs 'masks' (N, H, W)")
        losses: dict[str, Tensor] = {}
        scores: list[Tensor] = []
        rois = proposals
        for t, stage in enumerate(self.stages):
            if self.training:
                rois, matched_idxs, labels, regression_targets = stage.select_training_samples(rois, targets)
            x = stage.box_head(stage.box_roi_pool(features, rois, image_shapes))
            class_logits, box_regression = stage.box_predictor(x)
            weight = self.stage_loss_weights[t]
            if self.training:
                loss_cls, loss_box = _stage_loss(class_logits, box_regression, labels, regression_targets)
                losses[f"loss_classifier_s{t}"] = weight * loss_cls
                losses[f"loss_box_reg_s{t}"] = weight * loss_box
                if self.has_mask:
                    positive = [torch.where(lab > 0)[0] for lab in labels]
                    mask_rois = [r[p] for r, p in zip(rois, positive, strict=True)]
                    mask_idxs = [m[p] for m, p in zip(matched_idxs, positive, strict=True)]
                    logits = self._mask_logits(t, features, mask_rois, image_shapes)
                    gt_masks = [tgt["masks"] for tgt in targets]
                    gt_labels = [tgt["labels"] for tgt in targets]
                    losses[f"loss_mask_s{t}"] = weight * maskrcnn_loss(
                        logits, mask_rois, gt_masks, gt_labels, mask_idxs
                    )
            else:
                scores.append(F.softmax(class_logits, -1))
            counts = [r.shape[0] for r in rois]  # shape[0], not len(): ONNX traces keep it dynamic
            decoded = stage.box_coder.decode(box_regression.detach(), rois).reshape(-1, 4)
            rois = [
                box_ops.clip_boxes_to_image(b, shape)
                for b, shape in zip(decoded.split(counts), image_shapes, strict=True)
            ]
        if self.training:
            return [], losses
        result = self._postprocess(rois, torch.stack(scores).mean(0), image_shapes)
        if self.has_mask:
            det_boxes = [r["boxes"] for r in result]
            det_labels = [r["labels"] for r in result]
            probs = [
                maskrcnn_inference(self._mask_logits(t, features, det_boxes, image_shapes), det_labels)
                for t in range(len(self.stages))
            ]
            for i, r in enumerate(result):
                r["masks"] = torch.stack([p[i] for p in probs]).mean(0)
        return result, losses

    def _postprocess(
        self, boxes: list[Tensor], scores: Tensor, image_shapes: list[tuple[int, int]]
    ) -> list[dict[str, Tensor]]:
        """Per image: every (box, class) pair above the threshold, per-class NMS, the best detections."""
        result = []
        for b, s in zip(boxes, scores.split([b.shape[0] for b in boxes]), strict=True):
            num_classes = s.shape[1]
            labels = torch.arange(num_classes, device=s.device).view(1, -1).expand_as(s)
            b = b[:, None, :].expand(-1, num_classes, 4)[:, 1:].reshape(-1, 4)
            s, labels = s[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
            keep = torch.where(s > self.score_thresh)[0]
            b, s, labels = b[keep], s[keep], labels[keep]
            keep = box_ops.remove_small_boxes(b, min_size=1e-2)
            b, s, labels = b[keep], s[keep], labels[keep]
            keep = box_ops.batched_nms(b, s, labels, self.nms_thresh)[: self.detections_per_img]
            result.append({"boxes": b[keep], "scores": s[keep], "labels": labels[keep]})
        return result


class CascadeRCNN(GeneralizedRCNN):
    """Cascade (Mask) R-CNN: torchvision's transform and RPN, then ``CascadeRoIHeads``.

    Same call convention as torchvision's ``FasterRCNN`` / ``MaskRCNN``; the
    RPN settings are torchvision's defaults (anchors from the caller,
    2000/1000 proposals after NMS 0.7 in training/test).

    Args:
        backbone: returns an ``OrderedDict`` of maps and has ``out_channels``.
        num_classes: classes including the background.
        with_mask: build Cascade Mask R-CNN.
        rpn_anchor_generator: the RPN's anchors (one size per level).
        box_roi_pool, mask_roi_pool: RoI Align over the pyramid (7x7, 14x14).
        min_size, max_size, image_mean, image_std, size_divisible: the transform.
        box_head, representation, mask_chs, stage_ious, stage_box_weights, stage_loss_weights,
            box_score_thresh, box_nms_thresh, box_detections_per_img,
            box_batch_size_per_image, box_positive_fraction: ``CascadeRoIHeads``.
        **rpn_kwargs: torchvision RPN settings (``rpn_pre_nms_top_n_test``, ...).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        *,
        with_mask: bool = False,
        rpn_anchor_generator: nn.Module,
        box_roi_pool: MultiScaleRoIAlign,
        mask_roi_pool: MultiScaleRoIAlign | None = None,
        min_size: int | Sequence[int] = 800,
        max_size: int = 1333,
        image_mean: Sequence[float] = (0.485, 0.456, 0.406),
        image_std: Sequence[float] = (0.229, 0.224, 0.225),
        size_divisible: int = 32,
        box_head: str = "2fc",
        representation: int = 1024,
        mask_chs: int = 256,
        stage_ious: Sequence[float] = STAGE_IOUS,
        stage_box_weights: Sequence[Sequence[float]] = STAGE_BOX_WEIGHTS,
        stage_loss_weights: Sequence[float] = STAGE_LOSS_WEIGHTS,
        box_score_thresh: float = 0.05,
        box_nms_thresh: float = 0.5,
        box_detections_per_img: int = 100,
        box_batch_size_per_image: int = 512,
        box_positive_fraction: float = 0.25,
        rpn_pre_nms_top_n_train: int = 2000,
        rpn_pre_nms_top_n_test: int = 1000,
        rpn_post_nms_top_n_train: int = 2000,
        rpn_post_nms_top_n_test: int = 1000,
        rpn_nms_thresh: float = 0.7,
        rpn_fg_iou_thresh: float = 0.7,
        rpn_bg_iou_thresh: float = 0.3,
        rpn_batch_size_per_image: int = 256,
        rpn_positive_fraction: float = 0.5,
        rpn_score_thresh: float = 0.0,
    ) -> None:
        if with_mask and mask_roi_pool is None:
            raise ValueError("Cascade Mask R-CNN needs a mask_roi_pool (RoI Align 14x14)")
        chs = backbone.out_channels
        rpn = RegionProposalNetwork(
            rpn_anchor_generator,
            RPNHead(chs, rpn_anchor_generator.num_anchors_per_location()[0]),
            rpn_fg_iou_thresh,
            rpn_bg_iou_thresh,
            rpn_batch_size_per_image,
            rpn_positive_fraction,
            dict(training=rpn_pre_nms_top_n_train, testing=rpn_pre_nms_top_n_test),
            dict(training=rpn_post_nms_top_n_train, testing=rpn_post_nms_top_n_test),
            rpn_nms_thresh,
            score_thresh=rpn_score_thresh,
        )
        roi_heads = CascadeRoIHeads(
            box_roi_pool,
            num_classes,
            in_chs=chs,
            box_head=box_head,
            representation=representation,
            mask_chs=mask_chs,
            stage_ious=stage_ious,
            stage_box_weights=stage_box_weights,
            stage_loss_weights=stage_loss_weights,
            batch_size_per_image=box_batch_size_per_image,
            positive_fraction=box_positive_fraction,
            score_thresh=box_score_thresh,
            nms_thresh=box_nms_thresh,
            detections_per_img=box_detections_per_img,
            mask_roi_pool=mask_roi_pool if with_mask else None,
        )
        transform = GeneralizedRCNNTransform(
            min_size, max_size, list(image_mean), list(image_std), size_divisible=size_divisible
        )
        super().__init__(backbone, rpn, roi_heads, transform)

    def extra_repr(self) -> str:
        return f"stages={len(self.roi_heads.stages)}, mask={self.roi_heads.has_mask}"
