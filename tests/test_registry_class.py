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


def test_lazy_entries_import_on_first_lookup_and_list_like_the_rest():
    from msfusion.registry import Registry

    reg = Registry("thing")
    reg.register_lazy("ordered", "collections:OrderedDict")
    reg.register("plain", dict)
    assert reg.names() == ["ordered", "plain"] and "ordered" in reg and list(reg) == ["ordered", "plain"]
    assert "ordered" not in reg.as_mapping()  # not imported yet
    import collections

    assert reg.get("ordered") is collections.OrderedDict and reg["plain"] is dict
    with pytest.raises(ValueError, match="already registered"):
        reg.register_lazy("plain", "collections:Counter")
    with pytest.raises(ValueError, match="module:attr"):
        reg.register_lazy("bad", "collections")
    reg.register_lazy("missing", "collections:NoSuchThing")
    with pytest.raises(ImportError, match="cannot be imported"):
        reg.get("missing")
    with pytest.raises(ValueError, match="Did you mean 'ordered'"):
        reg.get("orderd")


def test_builtin_tasks_alignments_and_context_modules_are_registries():
    from msfusion.engine.tasks import TASKS, get_task, list_tasks
    from msfusion.models.align import ALIGNS
    from msfusion.models.heads.context import CONTEXT_MODULES, build_context_module
    from msfusion.registry import Registry

    assert all(isinstance(r, Registry) for r in (TASKS, ALIGNS, CONTEXT_MODULES))
    assert list_tasks() == ["detection", "panoptic", "segmentation"]
    assert get_task("detection").name == "detection"
    with pytest.raises(ValueError, match="Did you mean 'detection'"):
        get_task("detectoin")
    assert ALIGNS.names() == ["fine", "identity"] and ALIGNS.get("fine").__name__ == "FINE"
    assert type(build_context_module("nl", 64)).__name__ == "NonLocal2d"
    with pytest.raises(ValueError, match="Did you mean 'ema'"):
        build_context_module("emaa", 8)
