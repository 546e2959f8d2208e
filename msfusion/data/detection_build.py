"""Detection datasets built by name: ``build_detection_dataset({"type": "coco", ...})``.

Kept apart from ``msfusion.data.detection`` (the sample contract), which the
COCO and VOC readers import, so that no module imports itself in a circle.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping
from typing import Any

from msfusion.data.build import check_keys
from msfusion.data.coco_detection import COCODetection
from msfusion.data.detection import DetectionDataset, ShapesDetection
from msfusion.data.visdrone import VisDroneDetection
from msfusion.data.voc_detection import VOCDetection

__all__ = ["DETECTION_DATASET_TYPES", "build_detection_dataset"]


def _types() -> dict[str, type[DetectionDataset]]:
    return {"shapes": ShapesDetection, "coco": COCODetection, "voc": VOCDetection, "visdrone": VisDroneDetection}


DETECTION_DATASET_TYPES = ("shapes", "coco", "voc", "visdrone")


def build_detection_dataset(cfg: Mapping[str, Any], model_predicts_masks: bool | None = None) -> DetectionDataset:
    """A detection dataset from ``{"type": "coco" | "voc" | "visdrone" | "shapes", **constructor kwargs}``.

    Example: ``{"type": "coco", "images": "coco/val2017", "annotations":
    "coco/annotations/instances_val2017.json"}``.

    Args:
        cfg: the description.
        model_predicts_masks: whether the model trained or evaluated on the
            data predicts masks; a COCO dataset whose description does not set
            ``with_masks`` follows it, so that box-only detectors neither
            decode masks nor stop on a bad mask. None: the reader's default.
    """
    kwargs = copy.deepcopy(dict(cfg))
    if kwargs.get("type") == "coco" and "with_masks" not in kwargs and model_predicts_masks is not None:
        kwargs["with_masks"] = bool(model_predicts_masks)
    kind = kwargs.pop("type", None)
    types = _types()
    if kind not in types:
        close = difflib.get_close_matches(str(kind), list(types), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown detection dataset type {kind!r}; choose one of {sorted(types)}.{hint}")
    if kind == "shapes" and kwargs.get("root", "absent") is None:
        kwargs.pop("root")
    check_keys(f"detection dataset {kind!r}", types[kind], kwargs, exclude=("self", "kind"))
    return types[kind](**kwargs)
