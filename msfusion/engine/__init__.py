"""Training, evaluation, prediction and the demo.

One job per module: ``config`` (YAML recipes, ``--set`` overrides, validation),
``optim`` (official AdamW parameter groups, warm-up + poly), ``tasks`` (what a
task computes: segmentation now, detection later), ``trainer`` (the
task-neutral loop, 1 process or DDP), ``checkpointing`` (atomic, resumable
state), ``distributed``, ``metrics``, ``evaluator``, ``predictor``,
``visualize`` and ``demo``. Nothing here is imported by ``msfusion`` itself,
so ``import msfusion`` stays light.
"""

from msfusion.engine.config import ConfigError, load_config
from msfusion.engine.evaluator import evaluate_segmentation, segment
from msfusion.engine.metrics import confusion_matrix, metrics_from_confusion
from msfusion.engine.tasks import SegmentationTask, Task, build_task
from msfusion.engine.trainer import NonFiniteLossError, Trainer, build_model, train

__all__ = [
    "ConfigError",
    "NonFiniteLossError",
    "SegmentationTask",
    "Task",
    "Trainer",
    "build_model",
    "build_task",
    "confusion_matrix",
    "evaluate_segmentation",
    "load_config",
    "metrics_from_confusion",
    "segment",
    "train",
]
