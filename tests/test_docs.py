"""The documentation site (``docs/``, ``mkdocs.yml``) and the README are never wrong: their examples run here.

- Every ```` ```python ```` block of every page, and of ``README.md``, runs, in a fresh temporary
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
- ``README.md`` is a front page of at most 300 lines that keeps the test
  command CI runs, and every relative link of it and of the pages points to
  a file (and heading) that exists.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
import warnings
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
README = ROOT / "README.md"
#: The pages whose examples run, recipes are validated and command lines are parsed: the site and the README.
CHECKED = [*PAGES, README]
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


PYTHON_PAGES = [p for p in CHECKED if any(b for b in blocks(p, "python") if "notest" not in b.options)]


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
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
        except ImportError as err:
            missing = _missing_extra(err)
            if missing is None:
                raise AssertionError(f"the example at {block.where} failed: {type(err).__name__}: {err}") from err
            # An example of an optional extra (YOLO: ultralytics) without the extra installed, as the
            # lower-bound check's first stage runs: skipped like the extra's own tests.
            warnings.warn(f"the example at {block.where} was not run: {missing} is not installed", stacklevel=1)
        except Exception as err:
            raise AssertionError(f"the example at {block.where} failed: {type(err).__name__}: {err}") from err


def _missing_extra(err: ImportError) -> str | None:
    """The optional package an ImportError says is missing, when it really is not installed; else None."""
    cause = err.__cause__
    name = getattr(cause, "name", None)
    if not isinstance(cause, ModuleNotFoundError) or not name or "optional extra" not in str(err):
        return None
    return name if importlib.util.find_spec(name.split(".")[0]) is None else None


def _dataset_types(task: str) -> dict[str, type]:
    import msfusion.data  # noqa: F401  (importing it registers every built-in dataset)
    from msfusion.data.registry import datasets

    return dict(datasets(task))


RECIPES = [
    b
    for p in CHECKED
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


BASH = [b for p in CHECKED for b in blocks(p, "bash") if any(True for _ in _command_lines(b.code))]


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

    from msfusion.data.detection_transforms import CopyPaste
    from msfusion.data.registry import get_transform, transform_types
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
    # Every registered detection pipeline (`transforms: {kind: ...}`) with its options, and copy-paste's.
    pipelines = [get_transform(kind, task="detection") for kind in transform_types("detection")]
    missing += [f"transforms kind {kind}" for kind in transform_types("detection") if f"`{kind}`" not in text]
    for factory in (*pipelines, CopyPaste):
        missing += [f"{factory.__name__}: {n}" for n in inspect.signature(factory).parameters if f"`{n}`" not in text]
    missing += [f"data.{key}" for key in DEFAULTS["data"] if f"`{key}`" not in text]
    for section, keys in DEFAULTS.items():
        if isinstance(keys, dict) and section != "data":
            missing += [f"{section}.{key}" for key in keys if f"`{section}.{key}`" not in text]
    assert not missing, f"undocumented on docs/training.md: {missing}"


def test_readme_is_a_front_page() -> None:
    """At most 300 lines; it keeps the test command of ``.ci/run`` and leads into the site."""
    text = README.read_text()
    assert len(text.splitlines()) <= 300, f"README.md has {len(text.splitlines())} lines; move details to docs/"
    assert "## Tests\n\n```bash\npython -m pytest -q\n```" in text
    assert "python -m pytest -q" in (ROOT / ".ci" / "run").read_text()
    assert any(b.lang == "python" and "notest" not in b.options for b in blocks(README)), "README runs no example"
    linked = {target.split("#")[0] for _, target in _relative_links(README)}
    pages = [str(p.relative_to(ROOT)) for p in PAGES if p != DOCS / "index.md"]  # the README is the home page
    missing = [p for p in pages if p not in linked]
    assert not missing, f"README.md does not link to {missing}"


LINK_RE = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """The anchor of a heading, as Python-Markdown's ``toc`` extension (MkDocs) and GitHub both make it."""
    text = re.sub(r"[^\w\s-]", "", heading.strip()).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _relative_links(page: Path) -> list[tuple[int, str]]:
    """(line, target) of every link to a file or anchor in ``page``, outside code blocks and code spans."""
    text = page.read_text()
    text = FENCE_RE.sub(lambda m: "\n" * m.group(0).count("\n"), text)  # no code blocks, same line numbers
    links = []
    for number, line in enumerate(text.splitlines(), 1):
        for match in LINK_RE.finditer(re.sub(r"`[^`]*`", "", line)):
            target = match.group(1)
            if not re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
                links.append((number, target))
    return links


def _broken_links(page: Path, root: Path = ROOT) -> list[str]:
    broken = []
    for number, target in _relative_links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        where = f"{page.relative_to(root)}:{number}: {target}"
        if not dest.exists():
            broken.append(f"{where} (no such file)")
        elif anchor and dest.suffix == ".md":
            headings = {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+?)\s*$", dest.read_text(), re.MULTILINE)}
            if anchor not in headings:
                broken.append(f"{where} (no heading #{anchor} in {dest.relative_to(root)})")
    return broken


def test_link_checker_finds_broken_links(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# A page\n\n[ok](#a-page) [gone](missing.md) [bad anchor](#nowhere) `[code](x.md)`\n")
    broken = _broken_links(page, root=tmp_path)
    assert len(broken) == 2 and "missing.md (no such file)" in broken[0] and "#nowhere" in broken[1]
    assert _slug("FINE's attention strategies (Table 3) on a whole detector") == (
        "fines-attention-strategies-table-3-on-a-whole-detector"
    )


@pytest.mark.parametrize("page", CHECKED, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(page: Path) -> None:
    broken = _broken_links(page)
    assert not broken, "broken links:\n" + "\n".join(broken)
