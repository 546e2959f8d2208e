"""The task registry: ``task: <name>`` in a recipe (or a checkpoint sidecar) -> its :class:`Task`.

The task is chosen once, here; the trainer and the commands then ask the task
for everything that differs (``msfusion.engine.task_base``). Built-in tasks:
``segmentation`` (``msfusion.engine.segmentation``), ``detection``
(``msfusion.engine.detection``) and ``panoptic``
(``msfusion.engine.panoptic``), each imported on first use (detection and
panoptic need torchvision's detectors), so looking up segmentation stays light.
A new task is a :class:`Task` subclass decorated with :func:`register_task`.

Example::

    from msfusion.engine.tasks import get_task

    task = get_task("detection")()      # DetectionTask
    task.primary_metric                 # "bbox_AP"
"""

from __future__ import annotations

from typing import TypeVar

from msfusion.engine.task_base import Task
from msfusion.registry import Registry

__all__ = ["TASKS", "Task", "build_task", "demo_tasks", "get_task", "list_tasks", "register_task"]

TASKS = Registry("task")
# The built-in tasks, each imported on first use (its module registers it with @register_task).
TASKS.register_lazy("segmentation", "msfusion.engine.segmentation:SegmentationTask")
TASKS.register_lazy("detection", "msfusion.engine.detection:DetectionTask")
TASKS.register_lazy("panoptic", "msfusion.engine.panoptic:PanopticTask")

T = TypeVar("T", bound="type[Task]")


def register_task(cls: T) -> T:
    """Class decorator: make a :class:`Task` subclass available as ``task: <cls.name>`` in recipes."""
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise TypeError(f"register_task takes a Task subclass, got {cls!r}")
    return TASKS.register(cls.name, cls)


def list_tasks() -> list[str]:
    """The names a recipe's ``task`` key accepts."""
    return TASKS.names()


def get_task(name: str) -> type[Task]:
    """The task class registered as ``name``.

    Raises:
        ValueError: an unknown name (the message lists the tasks).
    """
    return TASKS.get(name)


def build_task(name: str) -> Task:
    """A fresh task of a recipe's ``task`` key (tasks keep per-run state, e.g. the last detections)."""
    return get_task(name)()


def demo_tasks() -> list[str]:
    """The tasks with an embedded demo (``msfusion demo --task``)."""
    return [name for name in list_tasks() if get_task(name).demo_entry]
