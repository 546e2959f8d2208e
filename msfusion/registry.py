"""Model registry: ``register_model``, ``list_models``, ``create_model``.

Every model family registers its paper variants with ``@register_model`` at the
bottom of its file (timm's pattern). ``create_model`` builds any registered name,
and for any other name tries timm, wrapped by the features adapter, when
``features_only=True``.

A variant may carry the figures its paper reports (``paper=dict(...)``) so that
``msfusion models`` and the fidelity tests can put measured and published
numbers side by side.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

__all__ = [
    "PaperFigures",
    "register_model",
    "list_models",
    "create_model",
    "model_entrypoint",
    "paper_figures",
    "is_model",
]


@dataclass(frozen=True)
class PaperFigures:
    """What a paper reports for a registered variant.

    Attributes:
        params_m: parameters in millions, as published.
        gmacs: multiply-adds in G at ``input_size`` ("GFLOPs" in the papers).
        input_size: (C, H, W) the MACs were counted at.
        source: where the figures come from (paper table, official code).
        macs_rules: the counting convention the figure uses ("torchprofile"
            or "mmcv"; see ``msfusion.count_macs``).
        notes: anything a reader needs to compare the numbers fairly.
    """

    params_m: float | None = None
    gmacs: float | None = None
    input_size: tuple[int, int, int] = (3, 224, 224)
    source: str = ""
    macs_rules: str = "torchprofile"
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


_entrypoints: dict[str, Callable[..., nn.Module]] = {}
_paper: dict[str, PaperFigures] = {}

# Modules whose import registers models; imported lazily on first registry use so
# that ``import msfusion`` stays cheap and lower layers never import higher ones.
_MODEL_MODULES = (
    "msfusion.models.backbones.mscan",
    "msfusion.models.segnext",
    "msfusion.models.segnext_ablations",
    "msfusion.models.backbones.cednet",
    "msfusion.models.upernet_cednet",
)
_loaded = False


def _load_model_modules() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _MODEL_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            # A family that is not part of this build is simply absent; any other
            # missing module is a real error.
            if err.name != module:
                raise


def register_model(fn: Callable[..., nn.Module] | None = None, *, paper: PaperFigures | None = None) -> Any:
    """Register a model constructor under its function name.

    Use as ``@register_model`` or ``@register_model(paper=PaperFigures(...))``.
    """

    def wrap(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        name = f.__name__
        if name in _entrypoints and _entrypoints[name] is not f:
            raise ValueError(f"model name {name!r} is registered twice")
        _entrypoints[name] = f
        if paper is not None:
            _paper[name] = paper
        return f

    return wrap(fn) if fn is not None else wrap


def list_models(pattern: str = "*", *, include_test: bool = False) -> list[str]:
    """Registered model names matching an fnmatch ``pattern``, sorted.

    Tiny ``test_*`` variants (used by the test suite) are left out unless
    ``include_test`` is set or the pattern asks for them.
    """
    _load_model_modules()
    names = sorted(n for n in _entrypoints if fnmatch.fnmatch(n, pattern))
    if not include_test and not pattern.startswith("test"):
        names = [n for n in names if not n.startswith("test_")]
    return names


def is_model(name: str) -> bool:
    _load_model_modules()
    return name in _entrypoints


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    """The constructor registered as ``name``; ``ValueError`` with close matches."""
    _load_model_modules()
    if name not in _entrypoints:
        close = difflib.get_close_matches(name, list(_entrypoints), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}.{hint} `msfusion.list_models()` lists every name; "
            "with features_only=True any timm model name works too."
        )
    return _entrypoints[name]


def paper_figures(name: str) -> PaperFigures | None:
    """The published figures registered with ``name``, if any."""
    _load_model_modules()
    return _paper.get(name)


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    pretrained: str | Path | bool | None = None,
    features_only: bool = False,
    out_indices: Sequence[int] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a model by name.

    Args:
        name: a registered name (``msfusion.list_models()``) or, with
            ``features_only=True``, any timm model name.
        num_classes: classes of the classifier or segmentation head; the
            variant's default when None.
        pretrained: a checkpoint path (ours or an official layout) loaded with
            ``load_checkpoint``. Nothing is ever downloaded: ``True`` raises.
        features_only: return a backbone whose ``forward`` gives a list of
            feature maps, fine to coarse, described by ``feature_info``.
        out_indices: which of the backbone's outputs to return.
        **kwargs: passed to the model's constructor (every hyper-parameter is
            a keyword argument there).

    Returns:
        The model, with ``model.model_cfg = {"name": ..., "kwargs": ...}``
        recorded so that checkpoints can rebuild it.
    """
    if pretrained is True:
        raise ValueError(
            "pretrained=True would need a download, which msfusion never does. "
            "Pass the path of a checkpoint file instead, e.g. "
            "pretrained='mscan_t_20230227-119e8c9f.pth'."
        )
    build_kwargs = dict(kwargs)
    if num_classes is not None:
        build_kwargs["num_classes"] = num_classes
    if features_only:
        build_kwargs["features_only"] = True
        if out_indices is not None:
            build_kwargs["out_indices"] = tuple(out_indices)
    elif out_indices is not None:
        raise ValueError("out_indices only applies with features_only=True")

    if is_model(name):
        model = model_entrypoint(name)(**build_kwargs)
    elif features_only and _is_timm_model(name):
        from msfusion.models.backbones.timm_adapter import TimmFeatures

        build_kwargs.pop("features_only")
        model = TimmFeatures(name, **build_kwargs)
    else:
        model_entrypoint(name)  # raises the did-you-mean error
        raise AssertionError("unreachable")

    model.model_cfg = {"name": name, "kwargs": _jsonable(build_kwargs)}
    if pretrained:
        from msfusion.checkpoint import load_checkpoint

        load_checkpoint(model, pretrained)
    return model


def _is_timm_model(name: str) -> bool:
    import timm

    return bool(timm.list_models(name)) or name in timm.list_models(pretrained=True)


def _jsonable(kwargs: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in kwargs.items():
        if isinstance(value, tuple):
            value = list(value)
        if isinstance(value, (str, int, float, bool, list, dict, type(None))):
            out[key] = value
    return out
