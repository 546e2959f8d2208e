"""The documentation site (``docs/``, ``mkdocs.yml``) is never wrong: its examples run here.

- Every ```` ```python ```` block of every page runs, in a fresh temporary
  folder, at the tiny size the page uses. A block marked ```` ```{.python
  continuation} ```` runs in the namespace of the blocks before it on the same
  page; a block marked ```` ```{.python notest} ```` (needs data, a download
  or a GPU) is skipped. These are pytest-markdown-docs' markers in the
  superfences form that MkDocs renders, so ``python -m pytest --markdown-docs
  --markdown-docs-syntax=superfences docs/`` runs the same blocks.
- Every ```` ```yaml ```` block with recipe sections (``model:``, ``data:``,
  ...) is validated as a recipe, and its dataset keys against the dataset
  constructors of its task.
- Every ``msfusion ...`` command line in a ```` ```bash ```` block parses with
  the real command-line parser (command names and flags exist).
- The model pages together list every registered model, the CLI reference
  names every option, and ``mkdocs build --strict`` succeeds.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
FENCE_RE = re.compile(
    r"^(?P<indent>[ ]*)(?P<fence>`{3,})(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)(?P=fence)[ ]*$",
    re.MULTILINE | re.DOTALL,
)
RECIPE_SECTIONS = {"task", "model", "data", "optim", "schedule", "train", "eval"}


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    options: tuple[str, ...]
    code: str

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def _info(text: str) -> list[str]:
    """Language first, then options, of ``python notest`` or the superfences form ``{.python notest}``."""
    text = text.strip()
    if not text.startswith("{"):
        return text.split()
    words = text.strip("{}").split()
    lang = next((w for w in words if w.startswith(".")), None)
    return [lang[1:], *(w for w in words if w != lang)] if lang else words


def blocks(page: Path, lang: str | None = None) -> Iterator[Block]:
    text = page.read_text()
    for match in FENCE_RE.finditer(text):
        info = _info(match.group("info"))
        if not info:
            continue
        indent = len(match.group("indent"))
        body = "\n".join(line[indent:] for line in match.group("body").splitlines())
        block = Block(page, text.count("\n", 0, match.start()) + 1, info[0], tuple(info[1:]), body)
        if lang is None or block.lang == lang:
            yield block


def _load_hooks() -> Any:
    spec = importlib.util.spec_from_file_location("msfusion_docs_hooks", DOCS / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fence_parser_sees_the_markers() -> None:
    """The block reader finds languages and markers (else every example test would pass vacuously)."""
    found = [b for p in PAGES for b in blocks(p, "python")]
    assert len(found) >= 10
    assert any("notest" in b.options for b in found)
    assert any("continuation" in b.options for b in found)
    assert all(b.code.strip() for b in found)


PYTHON_PAGES = [p for p in PAGES if any(b for b in blocks(p, "python") if "notest" not in b.options)]


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_python_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # an example must never download
    namespace: dict[str, Any] = {}
    for block in blocks(page, "python"):
        if "notest" in block.options:
            continue
        if "continuation" not in block.options:
            namespace = {"__name__": "__docs__"}
            torch.manual_seed(0)
        code = compile("\n" * (block.line) + block.code, str(block.page), "exec")
        try:
            exec(code, namespace)
        except Exception as err:
            raise AssertionError(f"the example at {block.where} failed: {type(err).__name__}: {err}") from err


def _dataset_types(task: str) -> dict[str, type]:
    if task == "segmentation":
        from msfusion.data import DATASET_TYPES

        return dict(DATASET_TYPES)
    if task == "detection":
        from msfusion.data.detection_build import _types

        return _types()
    from msfusion.engine.panoptic import _types

    return _types()


RECIPES = [
    b
    for p in PAGES
    for b in blocks(p, "yaml")
    if isinstance(yaml.safe_load(b.code), dict) and set(yaml.safe_load(b.code)) & RECIPE_SECTIONS
]


def test_recipes_found() -> None:
    assert len(RECIPES) >= 8


@pytest.mark.parametrize("block", RECIPES, ids=lambda b: b.where)
def test_yaml_recipes_are_valid(block: Block) -> None:
    import msfusion as mf
    from msfusion.data.build import check_keys
    from msfusion.engine.config import validate_config

    cfg = validate_config(yaml.safe_load(block.code))
    if cfg["model"]["compose"] is None:
        assert cfg["model"]["name"] in mf.list_models(), f"{block.where}: unknown model {cfg['model']['name']}"
    types = _dataset_types(cfg["task"])
    for split in ("train", "val"):
        description = dict(cfg["data"][split])
        if not description:
            continue
        kind = description.pop("type")
        assert kind in types, f"{block.where}: {kind!r} is not a {cfg['task']} dataset type ({sorted(types)})"
        check_keys(f"{block.where} data.{split}", types[kind], description, exclude=("self", "kind"))


def _command_lines(code: str) -> Iterator[list[str]]:
    """The argument lists following ``msfusion`` (or ``-m msfusion``) in a bash block."""
    text = code.replace("\\\n", " ")
    for line in text.splitlines():
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError as err:
            raise AssertionError(f"unparsable shell line {line!r}: {err}") from err
        segment: list[str] = []
        for token in [*tokens, "&&"]:
            if token in ("&&", ";", "|", "||"):
                for i, word in enumerate(segment):
                    if word == "msfusion" and (i == 0 or segment[i - 1] == "-m"):
                        yield segment[i + 1 :]
                        break
                segment = []
            else:
                segment.append(token)


BASH = [b for p in PAGES for b in blocks(p, "bash") if any(True for _ in _command_lines(b.code))]


def test_bash_commands_found() -> None:
    assert sum(len(list(_command_lines(b.code))) for b in BASH) >= 20


@pytest.mark.parametrize("block", BASH, ids=lambda b: b.where)
def test_bash_commands_exist(block: Block, capsys: pytest.CaptureFixture[str]) -> None:
    from msfusion.cli import build_parser

    for args in _command_lines(block.code):
        try:
            build_parser().parse_args(args)
        except SystemExit as exit_:
            if exit_.code not in (0, None):
                raise AssertionError(
                    f"{block.where}: `msfusion {' '.join(args)}` is not a valid command: {capsys.readouterr().err}"
                ) from None


def test_model_pages_list_every_registered_model() -> None:
    import msfusion as mf

    hooks = _load_hooks()
    listed: set[str] = set()
    for page in sorted((DOCS / "models").glob("*.md")):
        for patterns in hooks.model_patterns(page.read_text()):
            names = {n for p in patterns for n in mf.list_models(p)}
            assert names, f"{page.name}: the marker {patterns} lists no registered model"
            table = hooks.models_table(patterns)
            assert all(f"`{n}`" in table for n in names)
            listed |= names
    missing = sorted(set(mf.list_models()) - listed)
    assert not missing, f"registered models on no page of docs/models/: {missing}"


def test_cli_reference_names_every_command_and_option() -> None:
    import argparse

    from msfusion.cli import build_parser

    hooks = _load_hooks()
    text = hooks.render("# CLI\n\n<!-- msfusion:cli -->\n")
    assert (DOCS / "cli.md").read_text().count(hooks.CLI_MARKER) == 1, "the CLI page holds the marker once"
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        assert f"## `msfusion {name}`" in text
        for action in command._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for option in action.option_strings:
                assert f"`{option}" in text, f"msfusion {name} {option} missing from the CLI reference"


def test_mkdocs_build_strict(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]')")
    pytest.importorskip("material", reason="mkdocs-material is not installed (pip install -e '.[docs]')")
    pytest.importorskip("mkdocstrings_handlers.python", reason="mkdocstrings-python is not installed")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "site" / "cli" / "index.html").is_file()
    cli = (tmp_path / "site" / "cli" / "index.html").read_text()
    assert "msfusion train" in cli and "--grad-checkpointing" in cli


def test_training_page_documents_every_dataset_option() -> None:
    """Each constructor argument of every dataset type, and every recipe key, is on the page."""
    import inspect

    from msfusion.data.detection_transforms import CopyPaste, build_detection_transforms
    from msfusion.engine.config import DEFAULTS

    text = (DOCS / "training.md").read_text()
    missing = []
    for task in ("segmentation", "detection", "panoptic"):
        for kind, cls in _dataset_types(task).items():
            if f"`{kind}`" not in text:
                missing.append(f"{task} type {kind}")
            for name in inspect.signature(cls).parameters:
                if name not in ("self", "kind") and f"`{name}`" not in text:
                    missing.append(f"{task} {kind}: {name}")
    for factory in (build_detection_transforms, CopyPaste):
        missing += [f"{factory.__name__}: {n}" for n in inspect.signature(factory).parameters if f"`{n}`" not in text]
    missing += [f"data.{key}" for key in DEFAULTS["data"] if f"`{key}`" not in text]
    for section, keys in DEFAULTS.items():
        if isinstance(keys, dict) and section != "data":
            missing += [f"{section}.{key}" for key in keys if f"`{section}.{key}`" not in text]
    assert not missing, f"undocumented on docs/training.md: {missing}"
