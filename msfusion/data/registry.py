"""One registry per role of the data layer: datasets and transform pipelines, by task.

A recipe names a dataset by ``type`` and a pipeline by ``type`` (or
``kind``); both are looked up here, for every task, in the way detectron2's
``DatasetCatalog`` and ``Registry`` name a constructor. Each dataset class
registers beside its definition::

    @register_dataset("coco", task="detection")
    class COCODetection(DetectionDataset): ...

and each pipeline builder beside its own::

    @register_transform("train", task="segmentation")
    def build_train_transforms(...): ...

The same name may mean different things in different tasks (``"shapes"`` is
a dataset of every task). An unknown name fails with the registered names of
that task and a did-you-mean; an unknown constructor key fails with the
allowed keys (:func:`check_keys`), so a typo in a recipe never falls back to
a default.

This module imports nothing of ``msfusion``: the dataset modules import it to
register, and ``msfusion.data`` imports every built-in dataset module, so
``import msfusion.data`` fills the registry.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeVar

__all__ = [
    "TASKS",
    "build_transforms",
    "check_keys",
    "dataset_types",
    "datasets",
    "get_dataset",
    "get_transform",
    "register_dataset",
    "register_transform",
    "transform_types",
]

#: The tasks whose data the registry holds (the ``task`` of a recipe).
TASKS = ("segmentation", "detection", "panoptic")

T = TypeVar("T", bound=Callable[..., Any])

_DATASETS: dict[str, dict[str, Callable[..., Any]]] = {task: {} for task in TASKS}
_TRANSFORMS: dict[str, dict[str, Callable[..., Any]]] = {task: {} for task in TASKS}


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


def _table(tables: dict[str, dict[str, Callable[..., Any]]], task: str) -> dict[str, Callable[..., Any]]:
    if task not in tables:
        raise ValueError(f"unknown task {task!r}; choose one of {list(TASKS)}." + _suggest(str(task), TASKS))
    return tables[task]


def _register(tables: dict[str, dict[str, Callable[..., Any]]], role: str, name: str, task: str) -> Callable[[T], T]:
    table = _table(tables, task)

    def decorator(obj: T) -> T:
        if name in table and table[name] is not obj:
            raise ValueError(f"{task} {role} type {name!r} is already registered to {table[name].__qualname__}")
        table[name] = obj
        return obj

    return decorator


def _get(tables: dict[str, dict[str, Callable[..., Any]]], role: str, name: Any, task: str) -> Callable[..., Any]:
    table = _table(tables, task)
    if name not in table:
        raise ValueError(
            f"unknown {task} {role} type {name!r}; choose one of {sorted(table)}." + _suggest(str(name), list(table))
        )
    return table[name]


def register_dataset(name: str, task: str = "segmentation") -> Callable[[T], T]:
    """Class decorator: make a dataset buildable as ``{"type": name, ...}`` in recipes of ``task``.

    Raises:
        ValueError: ``task`` is not one of :data:`TASKS`, or ``name`` is
            already registered for ``task`` to another class.
    """
    return _register(_DATASETS, "dataset", name, task)


def register_transform(name: str, task: str = "segmentation") -> Callable[[T], T]:
    """Function decorator: make a pipeline builder usable as ``transforms: {type: name, ...}`` in ``task``."""
    return _register(_TRANSFORMS, "transforms", name, task)


def dataset_types(task: str) -> tuple[str, ...]:
    """The registered dataset types of ``task``, sorted."""
    return tuple(sorted(_table(_DATASETS, task)))


def datasets(task: str) -> Mapping[str, Callable[..., Any]]:
    """The registered datasets of ``task`` by type: a read-only live view (later registrations show)."""
    return MappingProxyType(_table(_DATASETS, task))


def transform_types(task: str) -> tuple[str, ...]:
    """The registered pipeline names of ``task``, sorted."""
    return tuple(sorted(_table(_TRANSFORMS, task)))


def get_dataset(name: Any, task: str = "segmentation") -> Callable[..., Any]:
    """The dataset class registered as ``name`` for ``task``.

    Raises:
        ValueError: unknown name, listing the registered ones with a did-you-mean.
    """
    return _get(_DATASETS, "dataset", name, task)


def get_transform(name: Any, task: str = "segmentation") -> Callable[..., Any]:
    """The pipeline builder registered as ``name`` for ``task`` (``ValueError`` listing them if unknown)."""
    return _get(_TRANSFORMS, "transforms", name, task)


def check_keys(
    kind: str, factory: Callable[..., Any], kwargs: Mapping[str, Any], exclude: Sequence[str] = ("self",)
) -> None:
    """``ValueError`` (with a did-you-mean) for a key that ``factory`` does not take."""
    allowed = [p for p in inspect.signature(factory).parameters if p not in exclude]
    for key in kwargs:
        if key not in allowed:
            raise ValueError(f"unknown key {key!r} for {kind}; allowed keys: {allowed}." + _suggest(key, allowed))


def build_transforms(cfg: Mapping[str, Any], task: str = "segmentation", default: str | None = None) -> Any:
    """A pipeline from ``{"type": name, **kwargs}`` (``"kind"`` is read as ``"type"``).

    Args:
        cfg: the description, e.g. ``{"type": "train", "crop_size": 512}``.
        task: whose pipelines to look ``name`` up in.
        default: the name used when ``cfg`` names none (None: it must name one).

    Raises:
        ValueError: unknown name or key, naming the allowed ones.
    """
    kwargs = dict(cfg)
    name = kwargs.pop("kind", kwargs.pop("type", default))
    factory = get_transform(name, task)
    check_keys(f"{task} transforms {name!r}", factory, kwargs)
    return factory(**kwargs)
