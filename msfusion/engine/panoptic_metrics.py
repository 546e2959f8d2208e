"""Panoptic quality (PQ), segmentation quality (SQ) and recognition quality (RQ).

Paper: Kirillov, He, Girshick, Rother, Dollar, "Panoptic Segmentation", CVPR
2019 (arXiv 1801.00868), Sec. 4. A panoptic map gives every pixel a segment
id; each segment has a category (and ground-truth segments an ``iscrowd``
flag). Per image and category:

- a predicted and a ground-truth segment of the same category **match** when
  their IoU is above 0.5 (Theorem 1: a match is then unique); the IoU leaves
  out the predicted pixels that fall on void ground truth
  (``union = |p| + |g| - |p n g| - |p n void|``);
- matched pairs are true positives (TP), unmatched ground-truth segments false
  negatives (FN), unmatched predictions false positives (FP), except that
  (Sec. 4.2) a prediction whose pixels lie more than half on void or on crowd
  regions of its own category is not counted at all; crowd segments are never
  matched and never FNs;
- ``PQ = sum_TP IoU / (TP + FP/2 + FN/2) = SQ x RQ`` with ``SQ = sum_TP IoU / TP``
  and ``RQ = TP / (TP + FP/2 + FN/2)``, accumulated over the whole dataset per
  category, then averaged over the categories that have any TP, FP or FN
  (over all, over things, over stuff).

This follows the rules of the reference COCO panoptic evaluation (void = id 0,
crowd regions per category); where an image holds several crowd segments of
one category their union is that category's crowd region. Numbers are
fractions (the papers print them x100; FINE, arXiv 2606.14005, Table 7 reports
Panoptic FPN R50 at PQ 40.2, SQ 77.8, RQ 49.3 and 40.9 / 78.5 / 50.0 with FINE).

Usage::

    pq = PanopticQuality(things={1, 2}, stuff={3, 4})
    for each image:
        pq.update(pred_ids, pred_segments, gt_ids, gt_segments)
    metrics = pq.compute()   # PQ, SQ, RQ, PQ_th ..., RQ_st, per_class
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from msfusion.data.coco_panoptic import VOID, check_panoptic_segments

__all__ = ["PanopticQuality", "pq_from_stats"]

MATCH_IOU = 0.5  # PQ paper Sec. 4.1: IoU > 0.5 makes a unique match
IGNORE_FRACTION = 0.5  # PQ paper Sec. 4.2: a prediction more than half void or crowd is not an FP


def pq_from_stats(iou: np.ndarray, tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-category PQ, SQ, RQ from accumulated sums (NaN where a category has no TP, FP or FN)."""
    denom = tp + 0.5 * fp + 0.5 * fn
    with np.errstate(divide="ignore", invalid="ignore"):
        pq = np.where(denom > 0, iou / denom, np.nan)
        sq = np.where(tp > 0, iou / np.maximum(tp, 1), np.where(denom > 0, 0.0, np.nan))
        rq = np.where(denom > 0, tp / denom, np.nan)
    return pq, sq, rq


class PanopticQuality:
    """Accumulates PQ statistics over images (module doc) and averages them.

    Args:
        things: category ids of countable objects.
        stuff: category ids of amorphous regions.
        names: optional ``{category id: name}`` for ``per_class``.
    """

    def __init__(self, things: Collection[int], stuff: Collection[int], names: Mapping[int, str] | None = None):
        things, stuff = {int(c) for c in things}, {int(c) for c in stuff}
        if things & stuff:
            raise ValueError(f"categories {sorted(things & stuff)} are listed as both things and stuff")
        if not things | stuff:
            raise ValueError("PanopticQuality needs at least one thing or stuff category")
        self.categories = sorted(things | stuff)
        self.things, self.stuff = things, stuff
        self.names = dict(names or {})
        self._index = {c: i for i, c in enumerate(self.categories)}
        self.reset()

    def reset(self) -> None:
        n = len(self.categories)
        self.iou, self.tp, self.fp, self.fn = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
        self.num_images = 0

    def _category(self, seg: Mapping[str, Any], what: str) -> int:
        category = int(seg["category_id"])
        if category not in self._index:
            raise ValueError(f"{what}: category {category} is neither a thing nor a stuff category {self.categories}")
        return category

    def update(
        self,
        pred_ids: np.ndarray,
        pred_segments: Sequence[Mapping[str, Any]],
        gt_ids: np.ndarray,
        gt_segments: Sequence[Mapping[str, Any]],
        name: str = "image",
    ) -> None:
        """Add one image.

        Args:
            pred_ids: (H, W) predicted segment ids (0 = void).
            pred_segments: ``{"id", "category_id"}`` per predicted segment.
            gt_ids: (H, W) ground-truth segment ids (0 = void).
            gt_segments: ``{"id", "category_id", "iscrowd"}`` per ground-truth segment.
            name: names the image in error messages.
        """
        pred_ids, gt_ids = np.asarray(pred_ids, dtype=np.int64), np.asarray(gt_ids, dtype=np.int64)
        if pred_ids.shape != gt_ids.shape or pred_ids.ndim != 2:
            raise ValueError(f"{name}: prediction {pred_ids.shape} and ground truth {gt_ids.shape} must be one (H, W)")
        preds = check_panoptic_segments(pred_ids, pred_segments, f"{name} (prediction)")
        gts = check_panoptic_segments(gt_ids, gt_segments, f"{name} (ground truth)")
        pred_cat = {s: self._category(seg, f"{name} (prediction)") for s, seg in preds.items()}
        gt_cat = {s: self._category(seg, f"{name} (ground truth)") for s, seg in gts.items()}
        crowd = {s for s, seg in gts.items() if seg.get("iscrowd", 0)}
        # One pass over the pixels: areas of every (gt id, pred id) pair, void included.
        offset = int(pred_ids.max(initial=0)) + 1
        pairs, counts = np.unique(gt_ids * offset + pred_ids, return_counts=True)
        overlap = {(int(p // offset), int(p % offset)): int(c) for p, c in zip(pairs, counts, strict=True)}
        gt_area = {s: 0 for s in gts}
        pred_area = {s: 0 for s in preds}
        for (g, p), c in overlap.items():
            if g != VOID:
                gt_area[g] += c
            if p != VOID:
                pred_area[p] += c
        matched_gt, matched_pred = set(), set()
        for (g, p), inter in overlap.items():
            if g == VOID or p == VOID or g in crowd or gt_cat[g] != pred_cat[p]:
                continue
            union = pred_area[p] + gt_area[g] - inter - overlap.get((VOID, p), 0)
            iou = inter / union
            if iou > MATCH_IOU:
                k = self._index[gt_cat[g]]
                self.tp[k] += 1
                self.iou[k] += iou
                matched_gt.add(g)
                matched_pred.add(p)
        for g in gts:
            if g not in matched_gt and g not in crowd and gt_area[g] > 0:
                self.fn[self._index[gt_cat[g]]] += 1
        crowd_by_cat: dict[int, set[int]] = {}
        for g in crowd:
            crowd_by_cat.setdefault(gt_cat[g], set()).add(g)
        for p in preds:
            if p in matched_pred or pred_area[p] == 0:
                continue
            ignored = overlap.get((VOID, p), 0)
            ignored += sum(overlap.get((g, p), 0) for g in crowd_by_cat.get(pred_cat[p], ()))
            if ignored / pred_area[p] > IGNORE_FRACTION:
                continue
            self.fp[self._index[pred_cat[p]]] += 1
        self.num_images += 1

    def state(self) -> np.ndarray:
        """(5, C) array of the sums (IoU, TP, FP, FN, and the image count in [4, 0]) for merging across processes."""
        out = np.stack([self.iou, self.tp, self.fp, self.fn, np.zeros_like(self.iou)])
        out[4, 0] = self.num_images
        return out

    def merge(self, states: Iterable[np.ndarray]) -> None:
        """Add the ``state()`` of other accumulators (e.g. gathered from other ranks)."""
        for s in states:
            self.iou += s[0]
            self.tp += s[1]
            self.fp += s[2]
            self.fn += s[3]
            self.num_images += int(s[4, 0])

    def compute(self) -> dict[str, Any]:
        """``PQ, SQ, RQ`` (all categories), ``PQ_th ...`` (things), ``PQ_st ...`` (stuff), ``N, N_th, N_st``
        (categories averaged) and ``per_class`` ({name: {PQ, SQ, RQ, TP, FP, FN}}); NaN for an empty group."""
        pq, sq, rq = pq_from_stats(self.iou, self.tp, self.fp, self.fn)
        present = (self.tp + self.fp + self.fn) > 0
        out: dict[str, Any] = {}
        for suffix, group in (("", self.things | self.stuff), ("_th", self.things), ("_st", self.stuff)):
            sel = present & np.array([c in group for c in self.categories])
            for key, values in (("PQ", pq), ("SQ", sq), ("RQ", rq)):
                out[f"{key}{suffix}"] = float(values[sel].mean()) if sel.any() else float("nan")
            out[f"N{suffix}"] = int(sel.sum())
        out["per_class"] = {
            self.names.get(c, str(c)): {
                "PQ": float(pq[i]),
                "SQ": float(sq[i]),
                "RQ": float(rq[i]),
                "TP": int(self.tp[i]),
                "FP": int(self.fp[i]),
                "FN": int(self.fn[i]),
                "isthing": c in self.things,
            }  # fmt: skip
            for i, c in enumerate(self.categories)
        }
        out["num_images"] = self.num_images
        return out
