"""Training, evaluation, prediction and the demo.

One job per module: ``api`` (the public face: ``msfusion.train``,
``msfusion.evaluate``, ``msfusion.predict``), ``config`` (YAML recipes,
``--set`` overrides, validation), ``optim`` (official AdamW parameter groups,
warm-up + poly), ``task_base`` (the :class:`Task` interface), ``tasks`` (the task
registry), ``segmentation``, ``detection`` and ``panoptic`` (the tasks),
``trainer`` (the task-neutral training loop, 1 process or DDP),
``evaluation`` (the one evaluation loop every task uses, with a
``DatasetEvaluator`` per task), ``results`` (metric files),
``checkpointing`` (atomic, resumable state), ``distributed``,
``segmentation_eval`` and ``segmentation_metrics`` (segmentation test modes
and mIoU), ``panoptic_metrics`` (PQ), ``segmentation_predict``, ``image_files``, ``visualize`` and
``demo``.
"""

from msfusion.engine.config import ConfigError, load_config
from msfusion.engine.evaluation import DatasetEvaluator, evaluate
from msfusion.engine.segmentation import SegmentationTask
from msfusion.engine.segmentation_eval import evaluate_segmentation, segment
from msfusion.engine.segmentation_metrics import confusion_matrix, metrics_from_confusion
from msfusion.engine.tasks import Task, build_task, get_task, list_tasks, register_task
from msfusion.engine.trainer import NonFiniteLossError, Trainer, build_model, train

__all__ = [
    "ConfigError",
    "DatasetEvaluator",
    "NonFiniteLossError",
    "SegmentationTask",
    "Task",
    "Trainer",
    "build_model",
    "build_task",
    "confusion_matrix",
    "evaluate",
    "evaluate_segmentation",
    "get_task",
    "list_tasks",
    "load_config",
    "metrics_from_confusion",
    "register_task",
    "segment",
    "train",
]
