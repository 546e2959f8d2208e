"""The detection task: losses, COCO evaluation, error analysis, result files and pictures.

``task: detection`` in a recipe selects :class:`DetectionTask`; the trainer,
checkpoints, resume, DDP and mixed precision are the segmentation ones (no
second loop). A recipe::

    task: detection
    model: {name: mask_rcnn_r50_fpn}       # or compose: {arch: mask_rcnn, backbone: resnet50, neck: fpn}
    data:
      train: {type: coco, images: coco/train2017, annotations: coco/annotations/instances_train2017.json,
              transforms: {kind: lsj, size: 1024}, copy_paste: true}
      val: {type: coco, images: coco/val2017, annotations: coco/annotations/instances_val2017.json}

- **Loss**: the sum of the torchvision detector's loss dict
  (``model(images, targets)`` in training mode); every term is logged.
- **Evaluation**: pycocotools ``COCOeval`` for boxes and, for mask models,
  masks (Lin et al., arXiv 1405.0312: AP averaged over IoU 0.50:0.05:0.95,
  AP50, AP75 and AP for small / medium / large objects, 100 detections per
  image). Detections are written in the COCO result format (``[x, y, w, h]``
  boxes, RLE masks, the annotation file's category ids).
- **Per-class AP**: COCO AP (IoU 0.50:0.95, all sizes, 100 detections) of
  each category, the mean of COCOeval's precision over IoU thresholds and
  recall points for that category; ``msfusion eval`` prints it as a table.
- **Test-time augmentation** (``eval.tta`` / ``--tta``): the horizontal flip.
  Each image and its mirror image are detected, the mirror's boxes (and
  masks) are flipped back, and the union is reduced per class by NMS at the
  detector's own IoU threshold (torchvision ``batched_nms``) to its own
  number of detections per image. Multi-scale detection TTA and sliding
  windows are not implemented (a detector resizes each whole image itself)
  and are refused.
- **Result files** are checked before scoring: an entry with a NaN or
  infinite score or box, a negative box size or a missing key is refused,
  naming the entry, instead of being scored silently.
- **Error analysis** (FINE, arXiv 2606.14005, Table 5): true positives, false
  positives, false negatives, precision, recall and F1 at IoU 0.5 and
  confidence 0.5. Detections are taken by decreasing score; each matches the
  unmatched ground truth box of its class with the highest IoU >= 0.5 (a TP),
  else it is a FP; a detection that only overlaps a crowd / difficult box is
  neither; unmatched ground truth boxes are FNs.

Under DDP every rank runs its share of the images (``rank::world_size``), the
detections are gathered, and every rank computes the same metrics.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from msfusion.engine.distributed import DistInfo, all_gather_objects
from msfusion.engine.evaluation import DatasetEvaluator, evaluate, shard_loader
from msfusion.engine.task_base import PredictOptions, Task
from msfusion.engine.tasks import register_task

__all__ = [
    "DetectionTask",
    "COCOEvaluator",
    "COCO_STATS",
    "evaluate_detection",
    "detections_to_coco",
    "coco_metrics",
    "coco_evaluation",
    "error_analysis",
    "format_detection_metrics",
    "format_error_table",
    "compare_error_analysis",
    "draw_detections",
    "predict_detection_files",
    "detect",
    "check_coco_results",
    "detection_test_flip",
]

COCO_STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def _train_dataset_cfg(data: Mapping[str, Any], split: str, seed: int, types: str) -> dict[str, Any]:
    cfg = dict(data[split] or {})
    if not cfg:
        return {}
    if "type" not in cfg:
        raise ValueError(f"data.{split} needs a 'type' (one of {types})")
    if split == "train":
        cfg.setdefault("transforms", {"kind": "train"})
        if cfg.get("aug_seed") is None:
            # Augmentation drawn from (seed, epoch, index): independent of worker count, exact on resume.
            cfg["aug_seed"] = seed
    return cfg


def model_predicts_masks(model: Mapping[str, Any]) -> bool | None:
    """Whether a recipe's ``model`` section builds a detector that predicts masks (None: cannot tell).

    ``compose.arch`` names the detector; registered detector names begin with
    theirs (``mask_rcnn_r50_fpn``, ``cascade_mask_rcnn_r50_mscsa``, ``fcos_r50_fpn``).
    """
    compose = model.get("compose") or {}
    name = str(compose.get("arch") if compose else model.get("name") or "")
    if name.startswith(("mask_rcnn", "maskrcnn", "cascade_mask_rcnn")):
        return True
    box_only = ("faster_rcnn", "fasterrcnn", "cascade_rcnn", "retinanet", "fcos", "rt_detr", "deformable_detr", "yolo")
    return False if name.startswith(box_only) else None


@register_task
class DetectionTask(Task):
    """Object detection / instance segmentation with torchvision detectors (module doc)."""

    name = "detection"
    primary_metric = "bbox_AP"
    dataset_example = "{type: coco, images: DIR, annotations: FILE}"
    compose_keys = frozenset({"arch", "fine"})
    demo_dir = "msfusion_demo_detection"
    demo_entry = "msfusion.engine.detection_demo:run_detection_demo"
    predict_refusals = {
        "--slide": "sliding windows are a segmentation test: a detector resizes each whole image itself (its "
        "min_size / max_size), and windows would cut objects apart",
        "--resize": "a detector resizes each image itself to its test size (its min_size / max_size, or "
        "image_size for RT-DETR); to test at another size, build the model with other values",
    }

    def __init__(self, score_thresh: float = 0.5, iou_thresh: float = 0.5) -> None:
        self.score_thresh = score_thresh
        self.iou_thresh = iou_thresh
        self.last_results: list[dict[str, Any]] = []

    @staticmethod
    def compose(**kwargs: Any) -> nn.Module:
        """``model.compose`` of a detection recipe: ``build_detector(arch=..., backbone=..., ...)``."""
        from msfusion.models.meta_arch.detector import build_detector

        if "arch" not in kwargs:
            raise ValueError("model.compose of a detection recipe needs an arch (faster_rcnn, mask_rcnn, ...)")
        return build_detector(kwargs.pop("arch"), **kwargs)

    def dataset_config(self, data: Mapping[str, Any], split: str, seed: int) -> dict[str, Any]:
        return _train_dataset_cfg(data, split, seed, ", ".join(sorted(self.dataset_types())))

    def build_datasets(self, cfg: Mapping[str, Any]) -> tuple[Any, Any | None]:
        self.model_predicts_masks = model_predicts_masks(cfg["model"])
        return super().build_datasets(cfg)

    def build_eval_dataset(self, cfg: Mapping[str, Any]) -> Any:
        self.model_predicts_masks = model_predicts_masks(cfg["model"])
        return super().build_eval_dataset(cfg)

    def build_dataset(self, description: dict[str, Any]) -> Any:
        from msfusion.data import build_detection_dataset

        return build_detection_dataset(description, getattr(self, "model_predicts_masks", None))

    def collate(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        from msfusion.data.detection import collate_detection

        return collate_detection(samples)

    def to_device(self, batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
        out = dict(batch)
        out["images"] = [im.to(device, non_blocking=True) for im in batch["images"]]
        out["targets"] = [
            {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in t.items()}
            for t in batch["targets"]
        ]
        return out

    def model_kwargs(self, dataset: Any) -> dict[str, Any]:
        return {"num_classes": dataset.num_classes}

    def loss(self, forward: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, float]]:
        losses = forward(batch["images"], batch["targets"])
        if not isinstance(losses, Mapping) or not losses:
            raise ValueError(
                "a detector in training mode must return a dict of losses (torchvision's convention), "
                f"got {type(losses).__name__}"
            )
        total = sum(losses.values())
        logs = {k if k.startswith("loss") else f"loss_{k}": float(v.detach()) for k, v in losses.items()}
        logs["loss"] = float(total.detach())
        return total, logs

    def check_test_options(self, eval_cfg: Mapping[str, Any], fast: bool = False) -> None:
        detection_test_flip(eval_cfg)  # slide, multi-scale, flip off: refused with the reason

    def evaluator(self, dataset: Any, cfg: Mapping[str, Any], dist_info: DistInfo) -> COCOEvaluator:
        return COCOEvaluator(
            dataset,
            tta=detection_test_flip(cfg.get("eval") or {}),
            score_thresh=self.score_thresh,
            iou_thresh=self.iou_thresh,
            dist_info=dist_info,
        )

    def eval_loader(self, dataset: Any, cfg: Mapping[str, Any], dist_info: DistInfo) -> Any:
        return shard_loader(
            dataset,
            dist_info,
            batch_size=max(1, cfg["data"]["batch_size"] // max(dist_info.world_size, 1)),
            num_workers=cfg["data"]["num_workers"],
            collate_fn=_collate,
        )

    def finish_evaluation(self, evaluator: Any) -> None:
        self.last_results = evaluator.results  # the detections, for the COCO result file

    def write_eval_outputs(
        self, metrics: dict[str, Any], cfg: Mapping[str, Any], checkpoint: str | Path, out_dir: str | Path
    ) -> list[Path]:
        """``<ckpt>_eval[_tta].json`` (metrics) and ``<ckpt>_eval[_tta]_results.json`` (detections, COCO format)."""
        from msfusion.engine.results import write_json

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = f"{Path(checkpoint).stem}_eval" + ("_tta" if cfg["eval"]["tta"] else "")
        return [
            write_json(out_dir / f"{stem}.json", metrics),
            write_json(out_dir / f"{stem}_results.json", self.last_results, indent=None),
        ]

    def format_metrics(self, metrics: Mapping[str, Any]) -> str:
        return format_detection_metrics(metrics)

    def file_writer(
        self, meta: Mapping[str, Any], options: PredictOptions
    ) -> tuple[Callable[..., list[Any]], dict[str, Any]]:
        return predict_detection_files, {"tta": options.tta}

    def describe_predictions(self, written: Sequence[Path], out_dir: str | Path) -> str:
        return f"wrote {len(written)} PNGs with boxes, masks, class names and scores (and JSONs) to {out_dir}"

    def demo_score(self, metrics: Mapping[str, Any]) -> str:
        return f"box AP {100 * metrics['bbox_AP']:.1f}, AP50 {100 * metrics['bbox_AP50']:.1f}"


_DEFAULT_TTA_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def detection_test_flip(eval_cfg: Mapping[str, Any]) -> bool:
    """Whether a recipe's ``eval`` section asks for flip TTA; refuses the segmentation-only test options.

    Raises:
        ValueError: ``mode: slide``; multi-scale ``scales`` with ``tta``; ``tta`` with ``flip: false``.
    """
    if eval_cfg.get("mode", "whole") == "slide":
        raise ValueError(
            "eval.mode=slide (sliding windows) is a segmentation test mode: a detector resizes each whole image "
            "itself (its min_size / max_size) and windows would cut objects apart. Use eval.mode=whole (drop --mode "
            "slide / --slide)."
        )
    if not eval_cfg.get("tta", False):
        return False
    scales = [float(x) for x in eval_cfg.get("scales", _DEFAULT_TTA_SCALES)]
    if scales not in ([1.0], list(_DEFAULT_TTA_SCALES)):
        raise ValueError(
            f"eval.scales={scales}: detection TTA is the horizontal flip at the detector's own test size; "
            "multi-scale detection TTA is not implemented. Drop eval.scales (or set it to [1.0])."
        )
    if not eval_cfg.get("flip", True):
        raise ValueError("detection TTA is the horizontal flip, and eval.flip=false leaves nothing to augment")
    return True


def _nms_settings(model: nn.Module) -> tuple[float, int]:
    """The detector's own NMS IoU threshold and detections per image (torchvision's attribute names)."""
    for owner in (getattr(model, "roi_heads", None), model):
        if owner is not None and hasattr(owner, "nms_thresh"):
            return float(owner.nms_thresh), int(owner.detections_per_img)
    # DETRs have no NMS of their own: the flip merge uses torchvision's default box NMS threshold, 0.5.
    return 0.5, int(getattr(model, "num_top", 100))


@torch.no_grad()
def detect(model: nn.Module, images: Sequence[Tensor], *, flip: bool = False) -> list[dict[str, Tensor]]:
    """Detections of ``model`` (eval mode) for (3, H_i, W_i) images in [0, 1], optionally with flip TTA.

    With ``flip`` the mirrored images are detected too; their boxes
    ``(x0, y0, x1, y1)`` become ``(W - x1, y0, W - x0, y1)`` and their masks
    (D, 1, H, W) are mirrored back, then both sets are merged per class with
    ``batched_nms`` at the detector's IoU threshold and cut to its number of
    detections per image (module doc).
    """
    from torchvision.ops import batched_nms

    outputs = model(list(images))
    if not flip:
        return outputs
    mirrored = model([image.flip(-1) for image in images])
    iou, keep_top = _nms_settings(model)
    merged = []
    for image, plain, mirror in zip(images, outputs, mirrored, strict=True):
        width = image.shape[-1]
        boxes = mirror["boxes"].clone()
        boxes[:, 0], boxes[:, 2] = width - mirror["boxes"][:, 2], width - mirror["boxes"][:, 0]
        back = {"boxes": boxes, "scores": mirror["scores"], "labels": mirror["labels"]}
        if "masks" in mirror:
            back["masks"] = mirror["masks"].flip(-1)
        both = {k: torch.cat([plain[k], v]) for k, v in back.items() if k in plain}
        keep = batched_nms(both["boxes"].float(), both["scores"].float(), both["labels"], iou)[:keep_top]
        merged.append({k: v[keep] for k, v in both.items()})
    return merged


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_coco_results(results: Sequence[Any], source: str = "results") -> None:
    """Refuse COCO detection results that would be scored silently wrong.

    Every entry must be a dict with an integer ``image_id`` and
    ``category_id``, a finite ``score`` and a ``bbox`` ``[x, y, w, h]`` of four
    finite numbers with ``w, h >= 0`` (or a ``segmentation`` alone). NaN passes
    every comparison, so a NaN score or box would otherwise be ranked and
    matched as if it were a detection.

    Raises:
        ValueError: naming ``source``, the entry's index and its image id.
    """
    if not isinstance(results, (list, tuple)):
        raise ValueError(f"{source}: COCO results must be a list of detections, got {type(results).__name__}")
    for i, entry in enumerate(results):
        where = f"{source}: entry {i}"
        if not isinstance(entry, Mapping):
            raise ValueError(
                f"{where} is a {type(entry).__name__}, not a detection dict (image_id, category_id, bbox, score)"
            )
        where += f" (image_id {entry.get('image_id')!r})"
        missing = [k for k in ("image_id", "category_id", "score") if k not in entry]
        if "bbox" not in entry and "segmentation" not in entry:
            missing.append("bbox")
        if missing:
            raise ValueError(
                f"{where} has no {', '.join(missing)}; every COCO result needs image_id, category_id, bbox, score"
            )
        for key in ("image_id", "category_id"):
            if not isinstance(entry[key], int) or isinstance(entry[key], bool):
                raise ValueError(
                    f"{where}: {key} is {entry[key]!r}, not an integer; the ground truth's ids are integers, so it "
                    "would never match. Write it as a number."
                )
        score = entry["score"]
        if not _is_number(score) or not math.isfinite(score):
            raise ValueError(
                f"{where}: score is {score!r}, not a finite number; such a detection cannot be ranked. Were the "
                "results written by a diverged model? Re-run msfusion eval on finite weights."
            )
        if "bbox" in entry:
            box = entry["bbox"]
            ok = (
                isinstance(box, (list, tuple))
                and len(box) == 4
                and all(_is_number(v) and math.isfinite(v) for v in box)
            )
            if not ok or box[2] < 0 or box[3] < 0:
                raise ValueError(
                    f"{where}: bbox is {box!r}; a COCO box is [x, y, width, height], four finite numbers with "
                    "width and height >= 0."
                )


def detections_to_coco(
    output: Mapping[str, Tensor], image_id: int, label_to_category: Sequence[int], mask_thresh: float = 0.5
) -> list[dict[str, Any]]:
    """One image's detector output -> COCO result entries (xywh boxes, RLE masks, category ids)."""
    from pycocotools import mask as mask_utils

    boxes = output["boxes"].detach().float().cpu()
    scores = output["scores"].detach().float().cpu().tolist()
    labels = output["labels"].detach().cpu().tolist()
    masks = output.get("masks")
    rles = []
    if masks is not None:
        binary = (masks.detach()[:, 0] > mask_thresh).cpu().numpy().astype(np.uint8)
        rles = mask_utils.encode(np.asfortranarray(binary.transpose(1, 2, 0))) if len(binary) else []
    out = []
    for i, (box, score, label) in enumerate(zip(boxes.tolist(), scores, labels, strict=True)):
        x0, y0, x1, y1 = box
        entry = {
            "image_id": int(image_id),
            "category_id": int(label_to_category[int(label)]),
            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
            "score": round(float(score), 5),
        }
        if masks is not None:
            rle = dict(rles[i])
            rle["counts"] = rle["counts"].decode("ascii")
            entry["segmentation"] = rle
        out.append(entry)
    return out


def coco_metrics(coco_gt: Any, results: list[dict[str, Any]], iou_type: str, image_ids: Iterable[int]) -> dict:
    """pycocotools COCOeval of ``results``: ``{"AP", "AP50", "AP75", "APs", "APm", "APl"}`` (fractions)."""
    return coco_evaluation(coco_gt, results, iou_type, image_ids)[0]


def coco_evaluation(
    coco_gt: Any, results: list[dict[str, Any]], iou_type: str, image_ids: Iterable[int]
) -> tuple[dict[str, float], dict[int, float]]:
    """``coco_metrics`` and the AP of every category ``{category_id: AP}`` (NaN: no ground truth of it).

    A category's AP is COCOeval's precision averaged over the IoU thresholds
    0.50:0.05:0.95 and the 101 recall points, for all object sizes and 100
    detections per image; the overall AP is the mean of these over the
    categories that have ground truth.
    """
    from pycocotools.cocoeval import COCOeval

    check_coco_results(results)
    image_ids = sorted(set(int(i) for i in image_ids))
    categories = sorted(int(c) for c in coco_gt.getCatIds())
    if not results:
        anns = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=image_ids, iscrowd=False))
        present = {int(a["category_id"]) for a in anns}
        return dict.fromkeys(COCO_STATS, 0.0), {c: 0.0 if c in present else float("nan") for c in categories}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and table
        coco_dt = coco_gt.loadRes(results)
        evaluator = COCOeval(coco_gt, coco_dt, iou_type)
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # COCOeval writes -1 where a size range has no ground truth: reported as NaN.
    stats = {k: (float(v) if v >= 0 else float("nan")) for k, v in zip(COCO_STATS, evaluator.stats[:6], strict=True)}
    # precision: (IoU thresholds, recall points, categories, area ranges, max detections); area "all", 100 dets.
    precision = evaluator.eval["precision"]
    per_class = {}
    for k, category in enumerate(evaluator.params.catIds):
        values = precision[:, :, k, 0, -1]
        values = values[values > -1]
        per_class[int(category)] = float(values.mean()) if values.size else float("nan")
    return stats, per_class


def error_analysis(
    coco_gt: Any,
    results: list[dict[str, Any]],
    image_ids: Iterable[int],
    score_thresh: float = 0.5,
    iou_thresh: float = 0.5,
) -> dict[str, float]:
    """TP, FP, FN, precision, recall, F1 of box results at one IoU and confidence (module doc)."""
    from torchvision.ops import box_iou

    check_coco_results(results)

    def xyxy(boxes: list[list[float]]) -> Tensor:
        t = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)
        return torch.cat([t[:, :2], t[:, :2] + t[:, 2:]], dim=1)

    by_image: dict[int, list[dict]] = {}
    for r in results:
        if r["score"] >= score_thresh:
            by_image.setdefault(int(r["image_id"]), []).append(r)
    tp = fp = fn = 0
    for image_id in sorted(set(int(i) for i in image_ids)):
        anns = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[image_id]))
        dets = sorted(by_image.get(image_id, []), key=lambda r: -r["score"])
        for category in {a["category_id"] for a in anns} | {d["category_id"] for d in dets}:
            gts = [a for a in anns if a["category_id"] == category]
            crowd = torch.tensor([bool(a.get("iscrowd", 0)) for a in gts], dtype=torch.bool)
            cat_dets = [d for d in dets if d["category_id"] == category]
            ious = box_iou(xyxy([d["bbox"] for d in cat_dets]), xyxy([a["bbox"] for a in gts]))
            matched = torch.zeros(len(gts), dtype=torch.bool)
            for i in range(len(cat_dets)):
                candidates = ious[i].clone()
                candidates[matched | crowd] = -1.0
                if len(gts) and candidates.max() >= iou_thresh:
                    matched[int(candidates.argmax())] = True
                    tp += 1
                elif len(gts) and crowd.any() and ious[i][crowd].max() >= iou_thresh:
                    continue  # a detection of an ignored object: neither right nor wrong
                else:
                    fp += 1
            fn += int((~matched & ~crowd).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"TP": tp, "FP": fp, "FN": fn, "precision": precision, "recall": recall, "F1": f1}


class COCOEvaluator(DatasetEvaluator):
    """COCO box (and mask) AP, per-class AP and the error analysis of detections (module doc).

    Each batch (``collate_detection``: lists of (3, H_i, W_i) images and their
    ``image_id``) is detected with :func:`detect` (``tta``: the horizontal
    flip); the detections are kept in COCO result format, gathered over ranks
    and scored with pycocotools against ``dataset.coco_gt()``. After
    :meth:`evaluate`, ``results`` holds every rank's detections.
    ``dist_info``: under DDP (each rank ran its share) the detections are
    gathered from every rank.
    """

    def __init__(
        self,
        dataset: Any,
        *,
        tta: bool = False,
        score_thresh: float = 0.5,
        iou_thresh: float = 0.5,
        dist_info: DistInfo | None = None,
    ) -> None:
        self.dataset = dataset
        self.dist_info = dist_info or DistInfo()
        self.tta = tta
        self.score_thresh = score_thresh
        self.iou_thresh = iou_thresh
        self.reset()

    def reset(self) -> None:
        self.results: list[dict[str, Any]] = []
        self.image_ids: list[int] = []
        self.with_masks = False

    def run(self, model: nn.Module, batch: Mapping[str, Any], device: torch.device) -> list[dict[str, Tensor]]:
        return detect(model, [im.to(device) for im in batch["images"]], flip=self.tta)

    def process(self, batch: Mapping[str, Any], outputs: list[dict[str, Tensor]]) -> None:
        for output, image_id in zip(outputs, batch["image_id"], strict=True):
            self.with_masks = self.with_masks or "masks" in output
            self.results.extend(detections_to_coco(output, image_id, self.dataset.label_to_category))
            self.image_ids.append(int(image_id))

    def evaluate(self) -> dict[str, Any]:
        gathered = [(self.results, self.image_ids, self.with_masks)]
        if self.dist_info.distributed:
            gathered = all_gather_objects(gathered[0])
        results = [r for part in gathered for r in part[0]]
        image_ids = [i for part in gathered for i in part[1]]
        with_masks = any(part[2] for part in gathered)
        self.results = results
        gt = self.dataset.coco_gt()
        metrics: dict[str, Any] = {}
        kinds = ["bbox"]
        if with_masks and all("segmentation" in a for a in gt.dataset["annotations"]):
            kinds.append("segm")
        per_class = {int(c): {"class": str(gt.cats[c].get("name", c)), "category_id": int(c)} for c in sorted(gt.cats)}
        for kind in kinds:
            stats, by_category = coco_evaluation(gt, results, kind, image_ids)
            metrics.update({f"{kind}_{key}": value for key, value in stats.items()})
            for category, value in by_category.items():
                per_class[category][f"{kind}_AP"] = value
        metrics["per_class"] = list(per_class.values())
        metrics.update(error_analysis(gt, results, image_ids, self.score_thresh, self.iou_thresh))
        metrics["num_images"] = len(image_ids)
        metrics["num_detections"] = len(results)
        return metrics


def evaluate_detection(
    model: nn.Module,
    dataset: Any,
    *,
    tta: bool = False,
    device: torch.device | str = "cpu",
    amp: str = "none",
    dist_info: DistInfo | None = None,
    batch_size: int = 2,
    num_workers: int = 0,
    progress: bool = False,
    score_thresh: float = 0.5,
    iou_thresh: float = 0.5,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """COCO box (and mask) AP, per-class AP and the error analysis of ``model`` on ``dataset``.

    The shared loop (:func:`msfusion.engine.evaluation.evaluate`) with a
    :class:`COCOEvaluator`. ``tta``: horizontal-flip test-time augmentation
    (see :func:`detect`).

    Returns:
        ``(metrics, results)``: ``metrics`` has ``bbox_AP`` ... ``bbox_APl``
        (and ``segm_*`` for mask models; fractions, NaN where a size range has
        no object), ``per_class`` (one dict per category: ``class``,
        ``category_id``, ``bbox_AP`` and for mask models ``segm_AP``), ``TP``,
        ``FP``, ``FN``, ``precision``, ``recall``, ``F1``, ``num_images``,
        ``num_detections``; ``results`` are the detections in COCO result
        format.
    """
    dist_info = dist_info or DistInfo()
    evaluator = COCOEvaluator(dataset, tta=tta, score_thresh=score_thresh, iou_thresh=iou_thresh, dist_info=dist_info)
    loader = shard_loader(dataset, dist_info, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)
    metrics = evaluate(model, loader, evaluator, device=device, amp=amp, progress=progress, dist_info=dist_info)
    return metrics, evaluator.results


def _collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    from msfusion.data.detection import collate_detection

    return collate_detection(batch)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "  n/a" if math.isnan(value) else f"{100 * value:5.1f}"
    return str(value)


def format_detection_metrics(metrics: Mapping[str, Any]) -> str:
    """The per-class AP table (when ``per_class`` is given), COCO AP rows (bbox, segm) in %, the error analysis."""
    lines = []
    rows = metrics.get("per_class") or []
    if rows:
        kinds = [k for k in ("bbox", "segm") if f"{k}_AP" in rows[0]]
        width = max([5] + [len(str(r["class"])) for r in rows])
        lines.append(f"{'class':<{width}}  " + "  ".join(f"{k + ' AP':>7}" for k in kinds))
        lines.append(f"{'-' * width}  " + "  ".join("-------" for _ in kinds))
        lines += [f"{r['class']:<{width}}  " + "  ".join(f"{_cell(r[f'{k}_AP']):>7}" for k in kinds) for r in rows]
        lines.append("")
    header = "       " + "  ".join(f"{k:>5}" for k in COCO_STATS)
    lines.append(header)
    for kind in ("bbox", "segm"):
        if f"{kind}_AP" in metrics:
            lines.append(f"{kind:<6} " + "  ".join(f"{_cell(metrics[f'{kind}_{k}']):>5}" for k in COCO_STATS))
    if "TP" in metrics:
        lines.append(
            f"IoU 0.5, score 0.5: TP {metrics['TP']}  FP {metrics['FP']}  FN {metrics['FN']}  "
            f"P {100 * metrics['precision']:.1f}  R {100 * metrics['recall']:.1f}  F1 {100 * metrics['F1']:.1f}"
        )
    return "\n".join(lines)


def format_error_table(analyses: Mapping[str, Mapping[str, Any]]) -> str:
    """Error analyses of one or more models side by side (FINE Table 5's layout)."""
    names = list(analyses)
    width = max([5] + [len(n) for n in names])
    lines = [f"{'model':<{width}}  {'TP':>6}  {'FP':>6}  {'FN':>6}  {'P':>6}  {'R':>6}  {'F1':>6}"]
    for name in names:
        a = analyses[name]
        lines.append(
            f"{name:<{width}}  {a['TP']:>6}  {a['FP']:>6}  {a['FN']:>6}  {100 * a['precision']:6.2f}  "
            f"{100 * a['recall']:6.2f}  {100 * a['F1']:6.2f}"
        )
    return "\n".join(lines)


def compare_error_analysis(
    dataset: Any,
    results: Mapping[str, list[dict[str, Any]] | str | Path],
    score_thresh: float = 0.5,
    iou_thresh: float = 0.5,
) -> str:
    """FINE Table 5 for several models on one dataset: ``{name: COCO results (list or JSON file)}`` -> table.

    The result files are those ``msfusion eval`` writes (``*_eval_results.json``).
    """
    gt = dataset.coco_gt()
    image_ids = gt.getImgIds()
    analyses = {}
    for name, value in results.items():
        if isinstance(value, (str, Path)):
            try:
                entries = json.loads(Path(value).read_text())
            except ValueError as err:
                raise ValueError(f"{value}: not a readable JSON list of COCO results ({err})") from err
            check_coco_results(entries, str(value))
        else:
            check_coco_results(value, f"results of {name!r}")
            entries = value
        analyses[name] = error_analysis(gt, entries, image_ids, score_thresh, iou_thresh)
    return format_error_table(analyses)


def draw_detections(
    image: Tensor,
    output: Mapping[str, Tensor],
    classes: Sequence[str],
    palette: Sequence[Sequence[int]] | None = None,
    score_thresh: float = 0.5,
    mask_thresh: float = 0.5,
) -> Tensor:
    """(3, H, W) float image in [0, 1] + one detector output -> (3, H, W) uint8 picture.

    Masks are blended in (``draw_segmentation_masks``), then boxes with
    "class score" captions (``draw_bounding_boxes``), for detections scoring
    at least ``score_thresh``.
    """
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    picture = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    keep = output["scores"].detach().cpu() >= score_thresh
    labels = output["labels"].detach().cpu()[keep].tolist()
    scores = output["scores"].detach().cpu()[keep].tolist()
    colors = [tuple(int(c) for c in palette[lab]) if palette else _color(lab) for lab in labels]
    if "masks" in output and keep.any():
        masks = output["masks"].detach().cpu()[keep]
        masks = (masks[:, 0] if masks.dim() == 4 else masks).float() > mask_thresh  # (D, 1, H, W) or (D, H, W)
        picture = draw_segmentation_masks(picture, masks, alpha=0.45, colors=colors)
    if keep.any():
        captions = [
            f"{classes[lab] if lab < len(classes) else lab} {score:.2f}"
            for lab, score in zip(labels, scores, strict=True)
        ]
        boxes = output["boxes"].detach().cpu()[keep].float()
        picture = draw_bounding_boxes(picture, boxes, labels=captions, colors=colors, width=2)
    return picture


def _color(label: int) -> tuple[int, int, int]:
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((label * 0.618034) % 1.0, 0.85, 1.0)
    return int(255 * r), int(255 * g), int(255 * b)


@torch.no_grad()
def predict_detection_files(
    model: nn.Module,
    inputs: Iterable[str | Path],
    out_dir: str | Path,
    *,
    classes: Sequence[str] | None = None,
    palette: Sequence[Sequence[int]] | None = None,
    device: str | torch.device = "cpu",
    score_thresh: float = 0.5,
    on_bad_file: str = "raise",
    progress: bool = True,
    tta: bool = False,
) -> list[Path]:
    """Detect objects in image files and write ``<stem>_det.png`` (boxes, masks, names, scores) and
    ``<stem>_det.json`` (the detections: xyxy boxes, labels, class names, scores) per image.

    ``tta``: horizontal-flip test-time augmentation (see :func:`detect`). Unreadable files and
    ``on_bad_file``: as :func:`~msfusion.engine.image_files.write_predictions`.
    """
    from PIL import Image

    from msfusion.engine.image_files import write_predictions

    classes = list(classes or [str(i) for i in range(getattr(model, "num_classes", 91))])
    model.eval().to(device)

    def write_one(array: np.ndarray, _path: Path, prefix: Path) -> Path:
        image = torch.from_numpy(np.array(array)).permute(2, 0, 1).float() / 255.0  # a writable copy
        output = {k: v.cpu() for k, v in detect(model, [image.to(device)], flip=tta)[0].items()}
        picture = draw_detections(image, output, classes, palette, score_thresh)
        png = Path(f"{prefix}_det.png")
        Image.fromarray(picture.permute(1, 2, 0).numpy()).save(png)
        keep = output["scores"] >= score_thresh
        record = [
            {
                "box": [round(v, 2) for v in b],
                "label": int(lab),
                "class": classes[int(lab)],
                "score": round(float(s), 4),
            }
            for b, lab, s in zip(
                output["boxes"][keep].tolist(), output["labels"][keep].tolist(), output["scores"][keep], strict=True
            )
        ]
        Path(f"{prefix}_det.json").write_text(json.dumps(record, indent=1))
        return png

    return write_predictions(inputs, out_dir, write_one, on_bad_file=on_bad_file, progress=progress)
