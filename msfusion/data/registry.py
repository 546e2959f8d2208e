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

Each table is a :class:`msfusion.registry.Registry`, the name table the
detector architectures and composition builders use too. This module imports
nothing else of ``msfusion``: the dataset modules import it to register, and
``msfusion.data`` imports every built-in dataset module, so ``import
msfusion.data`` fills the registry.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from msfusion.registry import Registry, did_you_mean

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


def _per_task(role: str) -> Registry:
    """A registry of tasks holding one ``role`` registry each, so an unknown task fails like an unknown name."""
    tasks = Registry("task")
    for task in TASKS:
        tasks.register(task, Registry(f"{task} {role} type"))
    return tasks


_DATASETS = _per_task("dataset")
_TRANSFORMS = _per_task("transforms")


def register_dataset(name: str, task: str = "segmentation") -> Callable[[T], T]:
    """Class decorator: make a dataset buildable as ``{"type": name, ...}`` in recipes of ``task``.

    Raises:
        ValueError: ``task`` is not one of :data:`TASKS`, or ``name`` is
            already registered for ``task`` to another class.
    """
    return _DATASETS.get(task).register(name)


def register_transform(name: str, task: str = "segmentation") -> Callable[[T], T]:
    """Function decorator: make a pipeline builder usable as ``transforms: {type: name, ...}`` in ``task``."""
    return _TRANSFORMS.get(task).register(name)


def dataset_types(task: str) -> tuple[str, ...]:
    """The registered dataset types of ``task``, sorted."""
    return tuple(_DATASETS.get(task).names())


def datasets(task: str) -> Mapping[str, Callable[..., Any]]:
    """The registered datasets of ``task`` by type: a read-only live view (later registrations show)."""
    return _DATASETS.get(task).as_mapping()


def transform_types(task: str) -> tuple[str, ...]:
    """The registered pipeline names of ``task``, sorted."""
    return tuple(_TRANSFORMS.get(task).names())


def get_dataset(name: Any, task: str = "segmentation") -> Callable[..., Any]:
    """The dataset class registered as ``name`` for ``task``.

    Raises:
        ValueError: unknown name, listing the registered ones with a did-you-mean.
    """
    return _DATASETS.get(task).get(name)


def get_transform(name: Any, task: str = "segmentation") -> Callable[..., Any]:
    """The pipeline builder registered as ``name`` for ``task`` (``ValueError`` listing them if unknown)."""
    return _TRANSFORMS.get(task).get(name)


def check_keys(
    kind: str, factory: Callable[..., Any], kwargs: Mapping[str, Any], exclude: Sequence[str] = ("self",)
) -> None:
    """``ValueError`` (with a did-you-mean) for a key that ``factory`` does not take."""
    allowed = [p for p in inspect.signature(factory).parameters if p not in exclude]
    for key in kwargs:
        if key not in allowed:
            raise ValueError(f"unknown key {key!r} for {kind}; allowed keys: {allowed}." + did_you_mean(key, allowed))


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
