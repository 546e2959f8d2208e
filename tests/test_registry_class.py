"""The one name table (``msfusion.registry.Registry``): detector architectures, composition builders, datasets."""

from __future__ import annotations

import pytest

import msfusion  # noqa: F401  (registers every composition builder)
from msfusion.registry import Registry, rebuild_model, register_builder


def _make() -> int:
    return 1


class _Arch:
    pass


def test_registering_the_same_object_again_is_a_no_op_and_another_is_refused_by_name() -> None:
    table = Registry("widget")
    assert table.register("a", _make) is _make
    assert table.register("a")(_make) is _make  # a module imported twice registers the same object again
    with pytest.raises(ValueError, match="widget 'a' is already registered to _make"):
        table.register("a", lambda: 2)
    table.register("b", _Arch())
    with pytest.raises(ValueError, match="widget 'b' is already registered to _Arch"):
        table.register("b", _Arch())  # an instance is named by its class
    assert table.names() == ["a", "b"]


def test_lookups_resolve_aliases_and_fail_with_the_names_and_a_hint() -> None:
    table = Registry("widget")
    table.register("retinanet", _make, aliases=("retina",))
    assert table.get("retina") is _make and table.canonical("retina") == "retinanet" and "retina" in table
    with pytest.raises(ValueError, match=r"unknown widget 'retinenet'; choose one of \['retinanet'\]\. Did you mean"):
        table.get("retinenet")
    # Whatever a recipe holds (a list, None, a mapping) is named, never an "unhashable type" TypeError.
    for bad in (["retinanet"], None, {"retinanet": 1}):
        with pytest.raises(ValueError, match=r"unknown widget .*; choose one of \['retinanet'\]"):
            table.get(bad)


def test_the_mapping_is_a_live_read_only_view() -> None:
    table = Registry("widget")
    view = table.as_mapping()
    table.register("late", _make, aliases=("alias",))
    assert dict(view) == {"late": _make}  # later registrations show, aliases do not
    with pytest.raises(TypeError):
        view["other"] = _make  # type: ignore[index]


def test_checkpoints_name_their_builder_from_the_registry() -> None:
    with pytest.raises(
        ValueError, match="unknown composition builder 'build_segmentr'.*Did you mean 'build_segmentor'"
    ):
        rebuild_model({"builder": "build_segmentr", "kwargs": {}})
    # A second function under a builder's name would silently rebuild other checkpoints with it.
    with pytest.raises(ValueError, match="composition builder 'build_segmentor' is already registered"):
        register_builder("build_segmentor", _make)
