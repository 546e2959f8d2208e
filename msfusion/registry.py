"""Model registry: ``register_model``, ``list_models``, ``create_model``.

Every model family registers its paper variants with
``@register_model(kind=...)`` at the bottom of its file (timm's pattern);
``msfusion.models`` imports the families, the registry imports none of them.
``create_model`` builds any registered name, and for any other name, with
``features_only=True``, asks the registered fallbacks (the timm adapter wraps
any timm model).

A variant may carry the figures its paper reports (``paper=dict(...)``) so that
``msfusion models`` and the fidelity tests can put measured and published
numbers side by side.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from torch import nn

__all__ = [
    "KINDS",
    "Registry",
    "did_you_mean",
    "PaperFigures",
    "register_model",
    "register_builder",
    "register_fallback",
    "list_models",
    "model_kind",
    "create_model",
    "rebuild_model",
    "load_model",
    "model_entrypoint",
    "paper_figures",
    "is_model",
    "recordable",
]


class Registry:
    """A name -> object table for one role that is not a model (detectron2's ``Registry``).

    Used for what a recipe or a builder names by a string: detector
    architectures (``msfusion.models.meta_arch``), the composition builders
    that checkpoints name, the datasets and transform pipelines of each task
    (``msfusion.data.registry``), the tasks (``msfusion.engine.tasks``), the
    alignments of the necks' fusion hook and the heads' context modules.
    Lookups of unknown names fail with the registered names and a
    did-you-mean; it reads like a mapping (``reg[name]``, ``name in reg``,
    ``list(reg)``).

    Args:
        role: what the table holds, for messages (e.g. ``"detector architecture"``).
    """

    def __init__(self, role: str) -> None:
        self.role = role
        self._table: dict[str, Any] = {}
        self._aliases: dict[str, str] = {}
        # name -> "package.module:attr", imported on the first lookup (keeps heavy modules off the import path).
        self._lazy: dict[str, str] = {}

    def register(self, name: str, obj: Any = None, *, aliases: Sequence[str] = ()) -> Any:
        """Register ``obj`` under ``name`` (and ``aliases``); without ``obj``, a decorator.

        Registering the same object again under its name is a no-op (a module
        imported twice); another object under a taken name is a ``ValueError``.
        """

        def wrap(target: Any) -> Any:
            held = self._table.get(name, target)
            if held is not target:
                owner = getattr(held, "__qualname__", type(held).__qualname__)
                raise ValueError(f"{self.role} {name!r} is already registered to {owner}")
            self._table[name] = target
            self._lazy.pop(name, None)  # a lazily declared name, now registered by its own module
            for alias in aliases:
                self._aliases[alias] = name
            return target

        return wrap(obj) if obj is not None else wrap

    def register_lazy(self, name: str, target: str) -> None:
        """Declare ``name`` as ``"package.module:attr"``, imported on its first lookup.

        For entries whose module is heavy or would import upwards at load time. If
        importing the module registers ``name`` itself (a decorator), that registration wins.
        """
        module, sep, attr = target.partition(":")
        if not (isinstance(name, str) and name and sep and module and attr):
            raise ValueError(f"register_lazy needs a name and a 'package.module:attr' target, got {name!r}, {target!r}")
        if name in self._table:
            raise ValueError(f"{self.role} {name!r} is already registered")
        self._lazy[name] = target

    def canonical(self, name: Any) -> str:
        """The registered name that ``name`` spells (itself or an alias's target); ``ValueError`` if none."""
        if isinstance(name, str):
            name = self._aliases.get(name, name)
        if not isinstance(name, str) or (name not in self._table and name not in self._lazy):
            # A recipe may hold anything here (a list, None): name it in the error instead of a TypeError.
            raise ValueError(
                f"unknown {self.role} {name!r}; choose one of {self.names()}." + did_you_mean(name, self.names())
            )
        return name

    def get(self, name: Any) -> Any:
        """The object registered under ``name`` or one of its aliases (a lazy entry is imported now)."""
        name = self.canonical(name)
        if name in self._lazy:
            module, _, attr = self._lazy[name].partition(":")
            try:
                obj = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as err:
                raise ImportError(
                    f"{self.role} {name!r} is {self._lazy[name]!r}, which cannot be imported: {err}"
                ) from err
            if name in self._lazy:  # the import did not register it itself
                self.register(name, obj)
        return self._table[name]

    def names(self) -> list[str]:
        """Registered names (lazy ones included), sorted."""
        return sorted({*self._table, *self._lazy})

    def as_mapping(self) -> Mapping[str, Any]:
        """The loaded objects by name: a read-only live view (later registrations show; aliases and
        lazy entries not yet looked up do not)."""
        return MappingProxyType(self._table)

    def __contains__(self, name: object) -> bool:
        return name in self._table or name in self._aliases or name in self._lazy

    def __getitem__(self, name: str) -> Any:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


def did_you_mean(word: Any, choices: Iterable[str]) -> str:
    """``" Did you mean 'x'?"`` (up to three close matches of ``word`` among ``choices``), or ``""``."""
    close = difflib.get_close_matches(str(word), list(choices), n=3, cutoff=0.5)
    return f" Did you mean {' or '.join(map(repr, close))}?" if close else ""


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


KINDS = ("backbone", "classifier", "segmentor", "neck", "addon", "head", "detector")
# The kinds whose models have a ``features_only`` form, a backbone (an ImageNet classifier without its head).
_BACKBONE_KINDS = ("backbone", "classifier")

_entrypoints: dict[str, Callable[..., nn.Module]] = {}
_kinds: dict[str, str] = {}
_paper: dict[str, PaperFigures] = {}
# Composition builders (``build_segmentor``, ``build_classifier``, ...) that
# checkpoints of composed models name; they register themselves, so the
# registry never imports the modules that define them.
_builders = Registry("composition builder")
# Fallbacks for names that are not registered (the timm adapter registers one).
_fallbacks: list[Callable[..., nn.Module | None]] = []
# Segmentors and detectors name the backbone a user should build for features.
_feature_backbone: dict[str, str] = {}


def register_model(
    fn: Callable[..., nn.Module] | None = None,
    *,
    kind: str | None = None,
    paper: PaperFigures | None = None,
    backbone: str | None = None,
) -> Any:
    """Register a model constructor under its function name.

    Use as ``@register_model(kind="segmentor")`` or with ``paper=PaperFigures(...)``.
    ``kind`` is one of ``KINDS``. Registered necks, add-ons and heads take the
    producer's ``feature_info`` as their first argument. ``backbone`` names the
    registered backbone of a segmentor or detector, suggested to a user who
    asks the composed model for ``features_only``.
    """

    def wrap(f: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if kind not in KINDS:
            raise ValueError(f"register_model({f.__name__}): kind must be one of {KINDS}, got {kind!r}")
        name = f.__name__
        if name in _entrypoints and _entrypoints[name] is not f:
            raise ValueError(f"model name {name!r} is registered twice")
        _entrypoints[name] = f
        _kinds[name] = kind
        if backbone is not None:
            _feature_backbone[name] = backbone
        if paper is not None:
            _paper[name] = paper
        return f

    return wrap(fn) if fn is not None else wrap


def register_builder(name: str, fn: Callable[..., nn.Module]) -> None:
    """Register a composition function (e.g. ``build_segmentor``) that checkpoints can name."""
    _builders.register(name, fn)


def register_fallback(fn: Callable[..., nn.Module | None]) -> None:
    """Register ``fn(name, **kwargs) -> module | None``, tried for names that are not registered."""
    if fn not in _fallbacks:
        _fallbacks.append(fn)


def list_models(pattern: str = "*", kind: str | None = None, *, include_test: bool = False) -> list[str]:
    """Registered model names matching an fnmatch ``pattern``, sorted.

    Args:
        pattern: fnmatch pattern, e.g. ``"segnext_*"``.
        kind: only names of this kind (one of ``KINDS``). ``"backbone"``
            lists every name that ``create_model(name, features_only=True)``
            builds: the registered backbones and the ImageNet classifiers
            (MSCAN, CEDNet, TopFormer, the MSCSA classifiers), whose
            ``features_only`` form is their backbone; timm names work too but
            are not listed (``timm.list_models()``).
        include_test: also list the tiny ``test_*`` variants used by the test
            suite (listed anyway when the pattern starts with ``test``).
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    names = sorted(n for n in _entrypoints if fnmatch.fnmatch(n, pattern))
    if kind is not None:
        kinds = _BACKBONE_KINDS if kind == "backbone" else (kind,)
        names = [n for n in names if _kinds[n] in kinds]
    if not include_test and not pattern.startswith("test"):
        names = [n for n in names if not n.startswith("test_")]
    return names


def model_kind(name: str) -> str:
    """The kind of a registered name (one of ``KINDS``)."""
    model_entrypoint(name)
    return _kinds[name]


def is_model(name: str) -> bool:
    return name in _entrypoints


def model_entrypoint(name: str, kind: str | None = None) -> Callable[..., nn.Module]:
    """The constructor registered as ``name``; ``ValueError`` with close matches.

    With ``kind``, the name must be of that kind and the suggestions are too.
    """
    pool = [n for n in _entrypoints if kind is None or _kinds[n] == kind]
    if name not in pool:
        what = f"{kind} " if kind else ""
        close = difflib.get_close_matches(name, pool, n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        if name in _entrypoints:
            hint = f" {name!r} is a {_kinds[name]}, not a {kind}."
        listing = f"msfusion.list_models(kind={kind!r})" if kind else "msfusion.list_models()"
        extra = "" if kind else " With features_only=True any timm model name works too."
        raise ValueError(f"unknown {what}{name!r}.{hint} `{listing}` lists every name.{extra}")
    return _entrypoints[name]


def paper_figures(name: str) -> PaperFigures | None:
    """The published figures registered with ``name``, if any."""
    return _paper.get(name)


def create_model(
    name: str,
    *,
    num_classes: int | None = None,
    pretrained: str | Path | bool | None = None,
    pretrained_partial: bool = False,
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
        pretrained: ``True`` (the variant's default published weights; a
            timm backbone's default hub weights), a weights name from
            ``msfusion.weights.list_weights()`` (e.g. ``"mscan_t.in1k"``), or
            the path of a file in any supported layout (ours, official,
            timm, torchvision ResNet). Names resolve through the torch.hub /
            Hugging Face caches with the SHA-256 checked; with
            ``HF_HUB_OFFLINE=1`` nothing is downloaded (see ``msfusion.weights``).
            Loaded by ``msfusion.weights.load_pretrained`` (the loader a recipe's
            ``model.pretrained`` uses too); when a tensor is skipped, a warning
            carries its report: every skipped tensor with its shape in the file
            and in the model and the reason.
        pretrained_partial: also load a file that fits only in part (a tensor of
            another shape outside the head, tensors missing from the file);
            without it such a file is refused with the table of what does not fit.
        features_only: return a backbone whose ``forward`` gives a list of
            feature maps, finest first, described by ``feature_info``.
        out_indices: which of the backbone's outputs to return.
        **kwargs: passed to the model's constructor (every hyper-parameter is
            a keyword argument there).

    Returns:
        The model, with ``model.model_cfg = {"name": ..., "kwargs": ...}``
        recorded so that checkpoints can rebuild it.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"model name must be a string such as 'segnext_t' (see msfusion.list_models()), got {name!r}")
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
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
        kind = _kinds[name]
        if features_only and kind not in _BACKBONE_KINDS:
            hint = _feature_backbone.get(name)
            use = f" Use its backbone instead: create_model({hint!r}, features_only=True)." if hint else ""
            raise ValueError(f"{name!r} is a {kind}, which has no features_only form.{use}")
        try:
            model = model_entrypoint(name)(**build_kwargs)
        except TypeError as err:
            # A misspelt or foreign keyword (a recipe's model.kwargs, a checkpoint's sidecar) fails
            # deep inside a constructor; name the model and the keywords instead.
            if "keyword argument" not in str(err):
                raise
            raise ValueError(
                f"create_model({name!r}) with {sorted(build_kwargs)}: {err}. Check the keyword names (a recipe's "
                "model.kwargs, a checkpoint's .json) against the model's constructor arguments."
            ) from err
    else:
        model = None
        if features_only:
            fallback_kwargs = {k: v for k, v in build_kwargs.items() if k != "features_only"}
            for fallback in _fallbacks:
                model = fallback(name, **fallback_kwargs)
                if model is not None:
                    break
        if model is None:
            model_entrypoint(name)  # raises the did-you-mean error
            raise AssertionError("unreachable")

    model.model_cfg = {"name": name, "kwargs": recordable(build_kwargs, f"create_model({name!r})")}
    if pretrained:
        import warnings

        from msfusion.weights import load_pretrained

        report = load_pretrained(model, pretrained, name, partial=pretrained_partial)
        if report.skipped:
            warnings.warn(str(report), stacklevel=2)
    return model


def recordable(kwargs: dict[str, Any], where: str) -> dict[str, Any]:
    """``kwargs`` as JSON values, so that a checkpoint can rebuild the model.

    A value that JSON cannot hold (a module, a function, a tensor) is not
    dropped: the result carries ``"__unrecordable__"`` with the reason, and
    ``save_checkpoint`` refuses such a model instead of writing a sidecar that
    rebuilds something else.
    """
    out: dict[str, Any] = {}
    problems: list[str] = []

    def convert(value: Any, path: str) -> Any:
        if isinstance(value, tuple):
            value = list(value)
        if isinstance(value, (str, int, float, bool, type(None))):
            return value
        if isinstance(value, list):
            return [convert(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, dict) and all(isinstance(k, (str, int)) for k in value):
            return {str(k): convert(v, f"{path}.{k}") for k, v in value.items()}
        cfg = getattr(value, "model_cfg", None)
        if isinstance(value, nn.Module) and isinstance(cfg, dict) and "__unrecordable__" not in cfg:
            return {"__model_cfg__": cfg}
        problems.append(f"{path} is a {type(value).__name__}")
        return None

    for key, value in kwargs.items():
        out[key] = convert(value, key)
    if problems:
        out["__unrecordable__"] = f"{where}: " + "; ".join(problems)
    return out


def rebuild_model(cfg: dict[str, Any], **overrides: Any) -> nn.Module:
    """Build the model a ``model_cfg`` (a checkpoint's sidecar) describes."""
    if not isinstance(cfg, dict) or not ({"name", "builder"} & set(cfg)):
        raise ValueError(f"not a model description: {cfg!r}")
    # Parts built with pretrained weights (backbone_kwargs={"pretrained": True}) get the checkpoint's weights
    # when rebuilt; resolving the original weights again would only need a download.
    kwargs = _restore(_without_pretrained(dict(cfg.get("kwargs", {}))))
    if "__unrecordable__" in kwargs:
        raise ValueError(f"this model cannot be rebuilt from its description: {kwargs['__unrecordable__']}")
    kwargs.update(overrides)
    if "builder" in cfg:
        return _builders.get(cfg["builder"])(**kwargs)
    return create_model(cfg["name"], **kwargs)


def _without_pretrained(kwargs: dict[str, Any]) -> dict[str, Any]:
    out = dict(kwargs)
    for key, value in kwargs.items():
        if key.endswith("_kwargs") and isinstance(value, dict):
            out[key] = {k: v for k, v in value.items() if k != "pretrained"}
    return out


def _restore(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__model_cfg__"}:
            return rebuild_model(value["__model_cfg__"])
        return {k: _restore(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore(v) for v in value]
    return value


def load_model(path: str | Path, **overrides: Any) -> nn.Module:
    """Rebuild a model from one of our checkpoints (its JSON sidecar) and load the weights."""
    from msfusion.checkpoint import CheckpointError, load_checkpoint, read_metadata

    meta = read_metadata(path)
    cfg = meta.get("model")
    if not cfg or not ({"name", "builder"} & set(cfg)):
        raise CheckpointError(
            f"{path}: no model description beside it ({Path(path).with_suffix('.json').name} missing or "
            "without 'model'). Build the model with create_model(...) and call load_checkpoint(model, path)."
        )
    try:
        model = rebuild_model(cfg, **overrides)
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from err
    load_checkpoint(model, path)
    return model
