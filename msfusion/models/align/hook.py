"""The alignment hook of the FPN and PAN necks: ``align(low, high) -> low``.

At every top-down fusion step a feature pyramid adds the upsampled coarser map
to the finer lateral map (Lin et al., "Feature Pyramid Networks for Object
Detection", arXiv 1612.03144, Sec. 3, Fig. 3). Cross-level alignment modules
such as FINE (Lee, Lee and Kang, "Context-Guided Semantic Alignment for
Feature Fusion Networks", arXiv 2606.14005, Sec. 4, Eq. 9: the finer map is
modulated as ``F_low * M + F_low`` with ``M`` computed from both maps) change
the finer map before that addition. This file defines that hook:

- ``IdentityAlign``: the default, ``forward(low, high) -> low``, no parameters;
  a neck built with it computes exactly the plain FPN.
- ``ALIGNS``: alignment modules by name; a value is a class or a
  ``"package.module:Attribute"`` path imported only when the name is used, so
  the necks work whether or not an optional module is installed.
- ``build_align(spec, chs, low_stride, high_stride, **kwargs)``: one module
  from a name, a factory, ``None`` or ``{"type": spec, **kwargs}``.
- ``align_per_level(...)``: a neck's whole spec (one for all steps, a dict
  keyed by the finer level's stride, or a list finest first) resolved to one
  spec per fusion step.

Every alignment module is built as ``factory(chs, low_stride, high_stride,
**kwargs)`` and called as ``module(low, high)`` with ``low`` (B, chs, H, W) and
``high`` (B, chs, h, w), returning a tensor shaped like ``low``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from msfusion.registry import Registry, did_you_mean

__all__ = ["ALIGNS", "AlignSpec", "IdentityAlign", "align_per_level", "build_align", "register_align"]

# A spec for one fusion step: None (identity), a registered name, a factory
# ``factory(chs, low_stride, high_stride, **kwargs) -> nn.Module``, or
# ``{"type": <one of those>, **kwargs}``.
AlignSpec = None | str | Callable[..., nn.Module] | Mapping[str, Any]


class IdentityAlign(nn.Module):
    """The default alignment: returns the finer map unchanged (no parameters)."""

    def forward(self, low: Tensor, high: Tensor) -> Tensor:
        return low


ALIGNS = Registry("alignment")
ALIGNS.register("identity", IdentityAlign)
ALIGNS.register_lazy("fine", "msfusion.models.align.fine:FINE")


def register_align(name: str, target: type[nn.Module] | Callable[..., nn.Module] | str) -> None:
    """Make an alignment module available by ``name`` (a factory or a ``"module:attr"`` path)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"an alignment name must be a non-empty string, got {name!r}")
    if isinstance(target, str):
        ALIGNS.register_lazy(name, target)
    else:
        ALIGNS.register(name, target)


def _resolve(name: str) -> Callable[..., nn.Module]:
    key = name.lower()
    if key not in ALIGNS:
        raise ValueError(
            f"unknown alignment {name!r}.{did_you_mean(key, ALIGNS.names())} Known names: {ALIGNS.names()}; "
            "or pass a factory factory(chs, low_stride, high_stride, **kwargs) -> nn.Module, or None."
        )
    return ALIGNS.get(key)


def build_align(spec: AlignSpec, chs: int, low_stride: int, high_stride: int, **kwargs: Any) -> nn.Module:
    """One alignment module for the fusion of the stride-``high_stride`` map into the stride-``low_stride`` one.

    Args:
        spec: ``None`` or ``"identity"`` (``IdentityAlign``), a name in
            ``ALIGNS`` (e.g. ``"fine"``), a factory called as
            ``spec(chs, low_stride, high_stride, **kwargs)``, or a dict
            ``{"type": spec, **more_kwargs}`` (its kwargs override ``kwargs``).
        chs: channels of both maps (the neck's ``out_chs``).
        low_stride: stride of the finer map ``low`` (B, chs, H, W).
        high_stride: stride of the coarser map ``high`` (B, chs, h, w).
        **kwargs: passed to the factory.

    Returns:
        A module with ``forward(low, high) -> low`` (a tensor shaped like ``low``).
    """
    if isinstance(spec, Mapping):
        if "type" not in spec:
            raise ValueError(f"an alignment given as a dict needs a 'type' key (a name or a factory), got {dict(spec)}")
        extra = {k: v for k, v in spec.items() if k != "type"}
        return build_align(spec["type"], chs, low_stride, high_stride, **{**kwargs, **extra})
    if spec is None or (isinstance(spec, str) and spec.lower() == "identity"):
        if kwargs:
            raise ValueError(f"the identity alignment takes no arguments, got {sorted(kwargs)}")
        return IdentityAlign()
    if isinstance(spec, nn.Module):
        raise ValueError(
            f"align got a module instance ({type(spec).__name__}); every fusion step needs its own module, "
            "so pass its class or a factory factory(chs, low_stride, high_stride, **kwargs) instead"
        )
    factory = _resolve(spec) if isinstance(spec, str) else spec
    if not callable(factory):
        raise ValueError(
            f"align must be None, a name in {ALIGNS.names()}, a factory or a dict with 'type'; got {spec!r}"
        )
    module = factory(int(chs), int(low_stride), int(high_stride), **kwargs)
    if not isinstance(module, nn.Module):
        raise ValueError(f"the alignment factory {spec!r} returned a {type(module).__name__}, not an nn.Module")
    return module


def align_per_level(
    spec: AlignSpec | Mapping[int | str, AlignSpec] | Sequence[AlignSpec], low_strides: Sequence[int], owner: str
) -> list[AlignSpec]:
    """One spec per fusion step, finest first, from a neck's ``align`` argument.

    Args:
        spec: one spec for every step; a dict keyed by the finer level's stride
            (``{8: "fine", 16: None}``; keys may be strings such as ``"8"``, as
            a JSON sidecar writes them; strides left out get the identity), a
            dict with a ``"type"`` key (one spec for every step); or a list
            with one spec per step, finest first.
        low_strides: stride of the finer map of each fusion step, finest first.
        owner: the neck's name, for error messages.
    """
    low_strides = [int(s) for s in low_strides]
    if isinstance(spec, Mapping) and "type" not in spec:
        out: list[AlignSpec] = [None] * len(low_strides)
        for key, value in spec.items():
            try:
                stride = int(key)
            except (TypeError, ValueError):
                stride = None
            if stride not in low_strides:
                raise ValueError(
                    f"{owner}: align is keyed by the stride of the finer map of a fusion step; {key!r} is not one. "
                    f"The fusion steps have finer strides {low_strides}."
                )
            out[low_strides.index(stride)] = value
        return out
    if isinstance(spec, (list, tuple)):
        if len(spec) != len(low_strides):
            raise ValueError(
                f"{owner}: align lists {len(spec)} entries, but there are {len(low_strides)} fusion steps "
                f"(finer strides {low_strides}); give one entry per step, finest first, or a dict keyed by stride."
            )
        return list(spec)
    return [spec] * len(low_strides)
