"""The feature chain ``backbone -> [add-on] -> [neck]``, written once for every task model.

Every msfusion model runs the same chain before its task head: a backbone that
returns maps finest first (the feature contract of ``msfusion.layers.features``),
an optional add-on (MSCSA, "Vision Backbone Enhancement via Multi-Stage
Cross-Scale Attention", Sec. 3) and an optional neck (FPN,
PAN, with FINE at its fusion steps). ``FeatureChain`` builds that chain from
modules, checks each part's ``feature_info`` once, exposes the last
producer's ``feature_info`` and the input constraint (``size_divisor``,
``min_size``), and pads an input to that constraint. ``build_chain`` builds
the parts from registered names (``build_part`` for one part), the one way
every builder (``build_segmentor``, ``build_classifier``, ``build_detector``,
``SegNeXt``, ``UPerNet``, the DETR backbone) assembles them; ``records_call``
registers a builder and records each call in the model's ``model_cfg``, which
a checkpoint rebuilds it from.

Task models *are* chains (``Segmentor``, ``Classifier`` and the detectors'
``DetectorBackbone`` subclass it), as detectron2's ``FPN`` is still a
``Backbone``: the parts stay the attributes ``backbone``, ``addon`` and
``neck``, so state-dict keys and official-checkpoint key maps are those of
every earlier release.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

import torch
from torch import Tensor, nn

from msfusion.layers import check_feature_info
from msfusion.layers.features import FeatureInfo, pad_to_size_constraint
from msfusion.registry import create_model, model_entrypoint, recordable, register_builder

__all__ = [
    "ChainParts",
    "FeatureChain",
    "build_chain",
    "build_part",
    "check_finite_input",
    "feature_producer",
    "pad_to_size_constraint",
    "record_resolved_addon",
    "records_call",
]

Builder = TypeVar("Builder", bound=Callable[..., nn.Module])


def check_finite_input(images: Tensor | Sequence[Tensor], what: str = "input") -> None:
    """Refuse images holding NaN or infinite values, which no model output can recover from.

    One such pixel spreads through attention, global pooling and batch
    statistics to every logit (a segmentor's whole map becomes NaN, a
    detector returns no detection at all), so the model refuses it instead of
    returning a silently empty result. The check (one ``isfinite`` reduction)
    is skipped while tracing, scripting, compiling or exporting, where tensors
    have no values to test, and on the meta device.

    Raises:
        ValueError: naming the count of bad values and the image that holds the first.
    """
    if (
        torch.jit.is_scripting()
        or torch.jit.is_tracing()
        or torch.compiler.is_compiling()
        or torch.onnx.is_in_onnx_export()
    ):
        return
    for i, image in enumerate([images] if isinstance(images, Tensor) else images):
        if not isinstance(image, Tensor) or not image.is_floating_point() or image.device.type == "meta":
            continue
        if not bool(torch.isfinite(image).all()):
            count = int((~torch.isfinite(image)).sum())
            where = f"image {i} of the list" if not isinstance(images, Tensor) else f"a {tuple(image.shape)} batch"
            raise ValueError(
                f"the {what} holds {count} NaN or infinite value(s) ({where}); one such pixel turns every output "
                "into NaN (or no detection at all). Clean the image (e.g. torch.nan_to_num) first"
            )


class FeatureChain(nn.Module):
    """``backbone -> [add-on] -> [neck]`` with the last producer's ``feature_info``.

    ``forward(images)`` with images (B, C, H, W) whose H and W meet the input
    constraint (see ``pad``) returns the last producer's maps, a list fine to
    coarse with (B, chs_i, H/s_i, W/s_i) per ``feature_info`` entry.

    Args:
        backbone: returns ``list[Tensor]`` finest first and has ``feature_info``;
            may declare ``size_divisor``, ``min_size``, ``in_chans`` and, for
            extra maps a head reads besides the pyramid (CEDNet's earlier-stage
            1/8 maps), ``extra_feature_info`` with ``forward_with_extras``.
        addon: optional module list -> list on the backbone's maps (e.g. MSCSA).
        neck: optional module list -> list on the previous maps (e.g. FPN).
        size_divisor: inputs are padded to a multiple of this and of the
            backbone's own ``size_divisor``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        addon: nn.Module | None = None,
        neck: nn.Module | None = None,
        size_divisor: int = 1,
    ) -> None:
        super().__init__()
        info = None
        for producer, role in ((backbone, "backbone"), (addon, "add-on"), (neck, "neck")):
            if producer is not None:
                info = check_feature_info(
                    getattr(producer, "feature_info", None), f"the {role} {type(producer).__name__}"
                )
        self.backbone = backbone
        self.addon = addon
        self.neck = neck
        self._chain_feature_info: list[FeatureInfo] = list(info)
        self.size_divisor = math.lcm(int(size_divisor), int(getattr(backbone, "size_divisor", 1) or 1))
        self.min_size = int(getattr(backbone, "min_size", 0) or 0)
        self.in_chans = int(getattr(backbone, "in_chans", 3))

    @property
    def feature_info(self) -> list[FeatureInfo]:
        """One ``dict(chs, reduction, module)`` per output map of the last producer, finest first."""
        return self._chain_feature_info

    @property
    def has_extras(self) -> bool:
        """Whether the backbone exposes extra maps (``forward_with_extras``) beside its pyramid."""
        return bool(getattr(self.backbone, "extra_feature_info", None))

    def pad(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> zero-padded (bottom, right) to ``size_divisor`` and ``min_size``."""
        return pad_to_size_constraint(images, self.size_divisor, self.min_size)

    def fuse(self, feats: list[Tensor]) -> list[Tensor]:
        """The backbone's maps -> the add-on's, then the neck's (each optional), finest first."""
        if self.addon is not None:
            feats = self.addon(feats)
        if self.neck is not None:
            feats = self.neck(feats)
        return list(feats)

    def forward_features(self, images: Tensor) -> list[Tensor]:
        """(B, C, H, W) images meeting the constraint -> the last producer's maps, finest first."""
        return self.fuse(self.backbone(images))

    def forward_with_extras(self, images: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """(B, C, H, W) images meeting the constraint -> (the last producer's maps, the backbone's extra maps).

        The extra maps are what a backbone exposes besides its pyramid for
        auxiliary heads (CEDNet's earlier-stage 1/8 maps); empty for others.
        """
        if not self.has_extras:
            return self.forward_features(images), []
        feats, extras = self.backbone.forward_with_extras(images)
        return self.fuse(feats), list(extras)

    def forward(self, images: Tensor) -> list[Tensor]:
        return self.forward_features(images)


def feature_producer(backbone: nn.Module, addon: nn.Module | None, neck: nn.Module | None) -> nn.Module:
    """The last feature producer of a chain: the neck, else the add-on, else the backbone."""
    return neck if neck is not None else addon if addon is not None else backbone


def backbone_name(backbone: str | nn.Module | None) -> str | None:
    """The registered (or timm) name a backbone was built from, if it is known."""
    if isinstance(backbone, str):
        return backbone
    cfg = getattr(backbone, "model_cfg", None)
    if isinstance(cfg, dict) and isinstance(cfg.get("name"), str):
        return cfg["name"]
    arch = (getattr(backbone, "pretrained_cfg", None) or {}).get("architecture")
    return arch if isinstance(arch, str) else None


def build_part(
    spec: str | nn.Module | None,
    kind: str,
    feature_info: Sequence[dict],
    kwargs: dict[str, Any] | None,
    *,
    backbone: str | nn.Module | None = None,
    **extra: Any,
) -> nn.Module | None:
    """Build a registered add-on, neck or head by name on ``feature_info``, or pass a module through.

    A name is checked against the registry's names of ``kind`` (did-you-mean
    error otherwise); kwargs only apply to names. A part whose builder takes
    ``backbone`` (MSCSA: its Table 7 row depends on it) gets the backbone's
    name. A part that reports ``resolved_kwargs`` (every setting it chose) has
    those recorded in its ``model_cfg``, so a checkpoint rebuilds it the same
    way even if the defaults change.
    """
    if spec is None:
        if kwargs:
            raise ValueError(f"{kind}_kwargs given without a {kind}")
        return None
    if isinstance(spec, nn.Module):
        if kwargs:
            raise ValueError(f"{kind}_kwargs only apply when the {kind} is given by name, not as a module")
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"the {kind} must be a registered name or an nn.Module, got {type(spec).__name__}")
    builder = model_entrypoint(spec, kind=kind)
    if "backbone" in inspect.signature(builder).parameters and "backbone" not in (kwargs or {}):
        extra = {"backbone": backbone_name(backbone), **extra}
    part = builder(list(feature_info), **extra, **(kwargs or {}))
    recorded = getattr(part, "resolved_kwargs", None)
    recorded = dict(kwargs or {}) if recorded is None else dict(recorded)
    part.model_cfg = {"name": spec, "kwargs": recordable(recorded, f"{kind} {spec!r}")}
    return part


class ChainParts(NamedTuple):
    """The built parts of a chain and the last producer's ``feature_info``."""

    backbone: nn.Module
    addon: nn.Module | None
    neck: nn.Module | None
    feature_info: list[FeatureInfo]


def build_chain(
    backbone: str | nn.Module,
    addon: str | nn.Module | None = None,
    neck: str | nn.Module | None = None,
    *,
    backbone_kwargs: dict[str, Any] | None = None,
    addon_kwargs: dict[str, Any] | None = None,
    neck_kwargs: dict[str, Any] | None = None,
    addon_defaults: dict[str, Any] | None = None,
    neck_defaults: Callable[[list[FeatureInfo]], dict[str, Any]] | None = None,
) -> ChainParts:
    """Build ``backbone -> [add-on] -> [neck]`` from names or modules, each part on the previous one's features.

    A backbone name is built with ``create_model(name, features_only=True,
    **backbone_kwargs)``, so any registered backbone and any timm model works.
    The add-on and the neck are built by ``build_part`` on the previous
    producer's ``feature_info`` (checked once per part).

    Args:
        backbone, addon, neck: registered names (kwargs in ``*_kwargs``) or modules.
        backbone_kwargs, addon_kwargs, neck_kwargs: constructor arguments of parts given by name.
        addon_defaults: arguments of an add-on given by name that ``addon_kwargs``
            overrides (the classifier's ``mode="classification"``).
        neck_defaults: ``neck_defaults(feature_info) -> kwargs`` for a neck given
            by name, overridden by ``neck_kwargs`` (a detector's pyramid levels).
            The neck records only ``neck_kwargs``: the defaults are a function of
            the caller and the features, and are recomputed on rebuilding.

    Returns:
        ``ChainParts(backbone, addon, neck, feature_info)``, ``feature_info``
        being the last producer's.
    """
    if isinstance(backbone, str):
        backbone = create_model(backbone, features_only=True, **(backbone_kwargs or {}))
    elif backbone_kwargs:
        raise ValueError("backbone_kwargs only apply when the backbone is given by name")
    info = check_feature_info(getattr(backbone, "feature_info", None), f"the backbone {type(backbone).__name__}")
    if isinstance(addon, str) and addon_defaults:
        addon_kwargs = {**addon_defaults, **(addon_kwargs or {})}
    addon = build_part(addon, "addon", info, addon_kwargs, backbone=backbone)
    if addon is not None:
        info = check_feature_info(getattr(addon, "feature_info", None), f"the add-on {type(addon).__name__}")
    if isinstance(neck, str) and neck_defaults is not None:
        built = build_part(neck, "neck", info, {**neck_defaults(info), **(neck_kwargs or {})})
        built.model_cfg = {"name": neck, "kwargs": recordable(dict(neck_kwargs or {}), f"neck {neck!r}")}
        neck = built
    else:
        neck = build_part(neck, "neck", info, neck_kwargs)
    if neck is not None:
        info = check_feature_info(getattr(neck, "feature_info", None), f"the neck {type(neck).__name__}")
    return ChainParts(backbone, addon, neck, list(info))


def record_resolved_addon(cfg: dict[str, Any], chain: FeatureChain) -> None:
    """An add-on given by name in ``cfg`` records the settings it resolved (MSCSA's Table 7 row for the backbone)."""
    if chain.addon is not None and isinstance(cfg.get("addon"), str):
        cfg["addon_kwargs"] = chain.addon.model_cfg["kwargs"]


def records_call(name: str) -> Callable[[Builder], Builder]:
    """Register a composition builder under ``name``; each model it builds records the call in ``model_cfg``.

    The record is ``{"builder": name, "kwargs": ...}``: the call's arguments
    by name, defaults filled in and ``**kwargs`` spread, as JSON values
    (``recordable``), which ``load_model`` passes to the builder again. An
    add-on given by name records the settings it resolved
    (``record_resolved_addon``), so a rebuild does not depend on later
    defaults. The model's chain is the model itself or its ``backbone``
    (a detector's ``DetectorBackbone``).
    """

    def wrap(builder: Builder) -> Builder:
        signature = inspect.signature(builder)

        @functools.wraps(builder)
        def build(*args: Any, **kwargs: Any) -> nn.Module:
            call = signature.bind(*args, **kwargs)
            call.apply_defaults()
            cfg: dict[str, Any] = {}
            for key, value in call.arguments.items():
                if signature.parameters[key].kind is inspect.Parameter.VAR_KEYWORD:
                    cfg.update(value)
                else:
                    cfg[key] = value
            model = builder(*args, **kwargs)
            chain = model if isinstance(model, FeatureChain) else model.backbone
            record_resolved_addon(cfg, chain)
            model.model_cfg = {"builder": name, "kwargs": recordable(cfg, name)}
            return model

        register_builder(name, build)
        return build  # type: ignore[return-value]

    return wrap
