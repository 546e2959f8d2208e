"""Building datasets of every task from plain config dicts.

``build_dataset({"type": "ade20k", "root": "data/ade", "split": "val"})``
looks ``type`` up among the datasets registered for the task
(``msfusion.data.registry``; each class registers beside its definition)
and passes the other keys to its constructor, so every option is a
constructor argument documented there (detectron2 style: the config only
produces kwargs). ``transforms`` may be a callable or a dict
``{"type": <registered pipeline>, **kwargs}`` (the dataset builds it), so
YAML recipes can describe the pipeline. Unknown types and keys fail with the
registered values and a did-you-mean suggestion.

Importing this module imports every built-in dataset, which registers them.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from typing import Any

# Imported for their registration: each module registers its datasets when imported.
import msfusion.data.ade20k
import msfusion.data.cityscapes
import msfusion.data.coco_detection
import msfusion.data.coco_panoptic
import msfusion.data.coco_stuff
import msfusion.data.detection
import msfusion.data.folder
import msfusion.data.isaid
import msfusion.data.pascal_context
import msfusion.data.shapes
import msfusion.data.shapes_panoptic
import msfusion.data.visdrone
import msfusion.data.voc
import msfusion.data.voc_detection  # noqa: F401
from msfusion.data.registry import check_keys, datasets, get_dataset

__all__ = ["DATASET_TYPES", "build_dataset", "build_detection_dataset", "build_panoptic_dataset"]

#: The segmentation datasets by type: a read-only view of the registry (``register_dataset`` adds to it).
DATASET_TYPES = datasets("segmentation")


def build_dataset(cfg: Mapping[str, Any], task: str = "segmentation") -> Any:
    """Build a dataset of ``task`` from a config dict.

    Args:
        cfg: ``{"type": <a type registered for task>, **constructor kwargs}``,
            e.g. ``{"type": "cityscapes", "root": "data/cityscapes", "split": "val"}``.
            ``root: None`` is accepted (and dropped) for a dataset that takes
            no ``root`` (the synthetic ``"shapes"``), so a recipe's data root
            can be left unset.
        task: ``"segmentation"``, ``"detection"`` or ``"panoptic"``.

    Returns:
        The dataset.

    Raises:
        ValueError: Unknown type or key, naming the registered ones.
    """
    kwargs = copy.deepcopy(dict(cfg))
    kind = kwargs.pop("type", None)
    dataset_cls = get_dataset(kind, task)
    parameters = inspect.signature(dataset_cls).parameters
    if "root" not in parameters and "root" in kwargs and kwargs["root"] is None:
        kwargs.pop("root")
    check_keys(f"{task} dataset {kind!r}", dataset_cls, kwargs)
    return dataset_cls(**kwargs)


def build_detection_dataset(cfg: Mapping[str, Any], model_predicts_masks: bool | None = None) -> Any:
    """A detection dataset from ``{"type": "coco" | "voc" | "visdrone" | "shapes", **constructor kwargs}``.

    Example: ``{"type": "coco", "images": "coco/val2017", "annotations":
    "coco/annotations/instances_val2017.json"}``.

    Args:
        cfg: the description.
        model_predicts_masks: whether the model trained or evaluated on the
            data predicts masks; a dataset that reads masks on request
            (``with_masks``, COCO) and whose description does not set it
            follows it, so that box-only detectors neither decode masks nor
            stop on a bad mask. None: the reader's default.
    """
    kwargs = dict(cfg)
    if model_predicts_masks is not None and "with_masks" not in kwargs:
        dataset_cls = get_dataset(kwargs.get("type"), "detection")
        if "with_masks" in inspect.signature(dataset_cls).parameters:
            kwargs["with_masks"] = bool(model_predicts_masks)
    return build_dataset(kwargs, task="detection")


def build_panoptic_dataset(cfg: Mapping[str, Any]) -> Any:
    """A panoptic dataset from ``{"type": "coco_panoptic" | "shapes", **constructor kwargs}``."""
    return build_dataset(cfg, task="panoptic")
