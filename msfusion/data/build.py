"""Building datasets from plain config dicts, and batching their samples.

``build_dataset({"type": "ade20k", "root": "data/ade", "split": "val"})``
maps ``type`` to a dataset class and passes the other keys to its
constructor, so every option is a constructor argument documented there
(detectron2 style: the config only produces kwargs). ``transforms`` may be a
callable or a dict ``{"type": "train" | "eval", **kwargs}`` for
``build_train_transforms`` / ``build_eval_transforms``, so YAML configs can
describe the pipeline. Unknown types and keys fail with the allowed values
and a did-you-mean suggestion.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from msfusion.data.ade20k import ADE20KDataset
from msfusion.data.cityscapes import CityscapesDataset
from msfusion.data.coco_stuff import COCOStuffDataset
from msfusion.data.folder import FolderDataset
from msfusion.data.isaid import ISAIDDataset
from msfusion.data.pascal_context import PascalContextDataset
from msfusion.data.segmentation import SegmentationDataset
from msfusion.data.segmentation_transforms import (
    IGNORE_INDEX,
    Transform,
    build_eval_transforms,
    build_train_transforms,
)
from msfusion.data.shapes import ShapesDataset
from msfusion.data.voc import VOCSegmentationDataset

DATASET_TYPES: dict[str, type[SegmentationDataset]] = {
    "shapes": ShapesDataset,
    "folder": FolderDataset,
    "ade20k": ADE20KDataset,
    "cityscapes": CityscapesDataset,
    "voc": VOCSegmentationDataset,
    "coco_stuff": COCOStuffDataset,
    "pascal_context": PascalContextDataset,
    "isaid": ISAIDDataset,
}
TRANSFORM_TYPES: dict[str, Callable[..., Transform]] = {
    "train": build_train_transforms,
    "eval": build_eval_transforms,
}
_INSTANCE_KEYS = ("instance_masks", "labels", "boxes")


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def _lookup(kind: str, name: Any, table: Mapping[str, Any]) -> Any:
    if name not in table:
        raise ValueError(
            f"unknown {kind} type {name!r}; choose one of {sorted(table)}." + _suggest(str(name), list(table))
        )
    return table[name]


def check_keys(
    kind: str, factory: Callable[..., Any], kwargs: Mapping[str, Any], exclude: Sequence[str] = ("self",)
) -> None:
    """``ValueError`` (with a did-you-mean) for a key that ``factory`` does not take."""
    allowed = [p for p in inspect.signature(factory).parameters if p not in exclude]
    for key in kwargs:
        if key not in allowed:
            raise ValueError(f"unknown key {key!r} for {kind}; allowed keys: {allowed}." + _suggest(key, allowed))


def build_transforms(cfg: Mapping[str, Any]) -> Transform:
    """Build a pipeline from ``{"type": "train" | "eval", **kwargs}``."""
    kwargs = dict(cfg)
    factory = _lookup("transforms", kwargs.pop("type", None), TRANSFORM_TYPES)
    check_keys(f"{cfg.get('type')} transforms", factory, kwargs)
    return factory(**kwargs)


def build_dataset(cfg: Mapping[str, Any]) -> SegmentationDataset:
    """Build a dataset from a config dict.

    Args:
        cfg: ``{"type": <one of DATASET_TYPES>, **constructor kwargs}``, e.g.
            ``{"type": "cityscapes", "root": "data/cityscapes", "split": "val"}``.
            ``root: None`` is accepted (and dropped) for ``"shapes"``.

    Returns:
        The dataset.

    Raises:
        ValueError: Unknown type or key, naming the allowed ones.
    """
    kwargs = dict(cfg)
    kind = kwargs.pop("type", None)
    dataset_cls = _lookup("dataset", kind, DATASET_TYPES)
    if dataset_cls is ShapesDataset and kwargs.get("root", "absent") is None:
        kwargs.pop("root")
    check_keys(f"dataset {kind!r}", dataset_cls, kwargs)
    if isinstance(kwargs.get("transforms"), Mapping):
        kwargs["transforms"] = build_transforms(kwargs["transforms"])
    return dataset_cls(**kwargs)


def collate_segmentation(batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Batch samples of the msfusion contract for a DataLoader.

    Images and masks of different sizes are padded bottom-right to the
    largest (images with 0, i.e. the mean colour after normalisation; masks
    with the ignore index 255), each to its own largest size.

    Returns:
        ``"image"`` ``(B, 3, H, W)``, ``"mask"`` ``(B, H, W)``, ``"path"``
        list of str, and when present ``"instance_masks"``, ``"labels"``,
        ``"boxes"`` as lists (one tensor per sample, N varies).
    """
    if not batch:
        raise ValueError("cannot collate an empty batch")
    out: dict[str, Any] = {
        "image": _pad_stack([s["image"] for s in batch], 0.0),
        "mask": _pad_stack([s["mask"] for s in batch], IGNORE_INDEX),
        "path": [s["path"] for s in batch],
    }
    for key in _INSTANCE_KEYS:
        if key in batch[0]:
            out[key] = [s[key] for s in batch]
    return out


def _pad_stack(tensors: Sequence[torch.Tensor], value: float) -> torch.Tensor:
    height = max(t.shape[-2] for t in tensors)
    width = max(t.shape[-1] for t in tensors)
    padded = [F.pad(t, (0, width - t.shape[-1], 0, height - t.shape[-2]), value=value) for t in tensors]
    return torch.stack(padded)
