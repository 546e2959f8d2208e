"""Layering you can see: no import cycle in the package, and no upward import.

Layers, lowest first: ``version``; ``layers``, ``registry``, ``checkpoint``,
``convert``, ``structured_files`` (shared blocks and plumbing); ``models`` and ``data``; ``engine``,
``analysis``, ``export``; ``commands`` and ``cli``. A module may import its own
layer and the layers below; imports inside functions count. The package face
(``msfusion/__init__.py``, ``__main__``) sits on top; the command line, and only
it, calls the public API through the face.

Inside ``models`` the floors are, lowest first: the parts (``align``,
``addons``, ``heads``; then ``necks``, which call the alignment hook, and
``backbones``, some of which hold an add-on); ``chain``, which assembles
parts by registered name; ``meta_arch``, the task models holding a chain;
``presets``, the papers' registered variants. Alignment sits below the necks:
the hook and FINE know no neck, a neck knows the hook. ``models/__init__.py``
is the face that imports every family.
"""

import ast
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "msfusion"
RANKS = {
    "version": 0,
    "layers": 1,
    "registry": 1,
    "structured_files": 1,
    "checkpoint": 1,
    "weights": 1,
    "convert": 1,
    "models": 2,
    "data": 2,
    "engine": 3,
    "analysis": 3,
    "export": 3,
    "commands": 4,
    "cli": 4,
}

MODEL_FLOORS = {
    "align": 0,
    "addons": 0,
    "heads": 0,
    "necks": 1,
    "backbones": 1,
    "chain": 2,
    "meta_arch": 3,
    "presets": 4,
}


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    name = ".".join(parts)
    return name.removesuffix(".__init__")


def _graph() -> dict[str, set[str]]:
    files = {_module_name(f): f for f in ROOT.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                while target and target not in files:
                    target = target.rsplit(".", 1)[0] if "." in target else ""
                if target and target != module:
                    edges[module].add(target)
    return edges


def _rank(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) == 1 or parts[1] == "__main__":
        return None  # the package face imports everything
    return RANKS[parts[1]]


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    sys.setrecursionlimit(10_000)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_every_subpackage_has_a_layer():
    tops = {_module_name(f).split(".")[1] for f in ROOT.rglob("*.py") if _module_name(f) != "msfusion"}
    assert tops - {"__main__"} <= set(RANKS), f"give these a layer in RANKS: {tops - set(RANKS) - {'__main__'}}"


def test_no_import_cycle():
    edges = _graph()
    # The package face imports everything by design; cycles through it are Python's normal
    # parent-package import, not a layering problem.
    edges = {m: {t for t in ts if t != "msfusion"} for m, ts in edges.items() if m != "msfusion"}
    assert _cycles(edges) == []


def test_no_upward_import():
    upward = []
    for module, targets in _graph().items():
        rank = _rank(module)
        if rank is None:
            continue
        for target in targets:
            target_rank = _rank(target)
            if target == "msfusion" and rank == RANKS["commands"]:
                continue
            if target_rank is None or target_rank > rank:
                upward.append(f"{module} -> {target}")
    assert upward == [], "lower layers import higher ones:\n" + "\n".join(sorted(upward))


@pytest.mark.parametrize("family", ["msfusion.models.presets.segnext", "msfusion.models.backbones.cednet"])
def test_registry_imports_no_model_family(family):
    assert family not in _graph()["msfusion.registry"]


def _model_floor(module: str) -> int | None:
    parts = module.split(".")
    if parts[:2] != ["msfusion", "models"] or len(parts) == 2:
        return None  # outside models, or the models face
    return MODEL_FLOORS[parts[2]]


def test_every_models_subpackage_has_a_floor():
    subs = {
        _module_name(f).split(".")[2]
        for f in (ROOT / "models").rglob("*.py")
        if f.name != "__init__.py" or f.parent != ROOT / "models"
    }
    assert subs <= set(MODEL_FLOORS), f"give these a floor in MODEL_FLOORS: {subs - set(MODEL_FLOORS)}"


def test_models_top_level_is_the_face_only():
    assert sorted(f.name for f in (ROOT / "models").glob("*.py")) == ["__init__.py", "chain.py"]


def test_no_upward_import_inside_models():
    upward = []
    for module, targets in _graph().items():
        floor = _model_floor(module)
        if floor is None:
            continue
        for target in targets:
            target_floor = _model_floor(target)
            if target_floor is not None and target_floor > floor:
                upward.append(f"{module} -> {target}")
    assert upward == [], "lower model floors import higher ones:\n" + "\n".join(sorted(upward))
