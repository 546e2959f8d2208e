"""msfusion: multi-scale feature fusion for dense prediction, in plain PyTorch.

The public API (``import msfusion as mf``); importing it registers every model
family, as ``import timm`` does. ``mf.train``, ``mf.evaluate`` and
``mf.predict`` are the engine's face, the same as the commands of those names.
"""

from msfusion import models  # noqa: F401  (registers every model family)
from msfusion.analysis.complexity import count_macs, count_params
from msfusion.checkpoint import load_checkpoint, save_checkpoint
from msfusion.engine.api import evaluate, predict, train
from msfusion.engine.fast_inference import optimize_for_inference
from msfusion.models.meta_arch.classifier import build_classifier
from msfusion.models.meta_arch.detector import build_detector
from msfusion.models.meta_arch.segmentor import build_segmentor
from msfusion.registry import KINDS, create_model, list_models, load_model, model_kind, register_model
from msfusion.version import __version__

__all__ = [
    "KINDS",
    "__version__",
    "build_classifier",
    "build_detector",
    "build_segmentor",
    "count_macs",
    "count_params",
    "create_model",
    "evaluate",
    "list_models",
    "load_checkpoint",
    "load_model",
    "model_kind",
    "optimize_for_inference",
    "predict",
    "register_model",
    "save_checkpoint",
    "train",
]
