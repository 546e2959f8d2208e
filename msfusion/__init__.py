"""msfusion: multi-scale feature fusion for dense prediction, in plain PyTorch."""

__version__ = "0.1.0"

from msfusion.analysis.complexity import count_macs, count_params  # noqa: E402
from msfusion.checkpoint import load_checkpoint, load_model, save_checkpoint  # noqa: E402
from msfusion.models.segmentor import build_segmentor  # noqa: E402
from msfusion.registry import create_model, list_models, register_model  # noqa: E402

__all__ = [
    "__version__",
    "build_segmentor",
    "count_macs",
    "count_params",
    "create_model",
    "list_models",
    "load_checkpoint",
    "load_model",
    "register_model",
    "save_checkpoint",
]
