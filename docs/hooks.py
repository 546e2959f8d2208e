"""MkDocs hooks: pages whose content comes from the code, so they cannot go stale.

Three markers, each on a line of its own, are replaced when a page is rendered (``on_page_markdown``):

- ``<!-- msfusion:cli -->``: the reference of every ``msfusion`` sub-command,
  generated from the argparse parsers of ``msfusion.cli.build_parser``
  (usage, description, every option with its default and help).
- ``<!-- msfusion:models PATTERN [PATTERN ...] -->``: a table of the registered
  names matching any fnmatch pattern (``msfusion.list_models``), with their
  kind and the published figures registered beside them.
- ``<!-- msfusion:layout -->``: the package's folders and modules, each with the
  first line of its docstring (read with ``ast``, nothing imported).

``tests/test_docs.py`` imports this file to check that the model pages together
list every registered name.
"""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path
from typing import Any

CLI_MARKER = "<!-- msfusion:cli -->"
LAYOUT_MARKER = "<!-- msfusion:layout -->"
PACKAGE = Path(__file__).resolve().parents[1] / "msfusion"
MODELS_RE = re.compile(r"^<!-- msfusion:models ([^>]*?) -->$", re.MULTILINE)  # a line of its own


def _cell(text: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def _subparsers(parser: argparse.ArgumentParser) -> tuple[dict[str, argparse.ArgumentParser], dict[str, str]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return dict(action.choices), helps
    return {}, {}


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(prog=parser.prog, width=100)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def _option_rows(parser: argparse.ArgumentParser) -> list[str]:
    formatter = parser.formatter_class(prog=parser.prog)
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
            continue
        if action.option_strings:
            metavar = ""
            if action.nargs != 0:
                metavar = " " + formatter._format_args(action, formatter._get_default_metavar_for_optional(action))
            name = ", ".join(f"`{opt}{metavar}`" for opt in action.option_strings)
        else:
            name = f"`{formatter._format_args(action, formatter._get_default_metavar_for_positional(action))}`"
        default = action.default
        shown = "" if default in (None, argparse.SUPPRESS, False) or action.nargs == 0 else f"`{default!r}`"
        choices = f" Choices: {', '.join(f'`{c}`' for c in action.choices)}." if action.choices else ""
        help_text = formatter._expand_help(action).strip() if action.help else ""
        if help_text and choices and not help_text.endswith("."):
            help_text += "."
        rows.append(f"| {name} | {shown} | {_cell(help_text)}{choices} |")
    return rows


def cli_reference() -> str:
    """Markdown reference of every ``msfusion`` sub-command, from the parsers."""
    from msfusion.cli import build_parser

    parser = build_parser()
    commands, helps = _subparsers(parser)
    out = [f"```text\n{_usage(parser)}\n```", ""]
    for name, sub in commands.items():
        out += [f"## `msfusion {name}`", ""]
        summary = helps.get(name) or ""
        if summary:
            out += [summary, ""]
        out += [f"```text\n{_usage(sub)}\n```", ""]
        if sub.description and sub.description.strip() != summary.strip():
            out += [sub.description.strip(), ""]
        rows = _option_rows(sub)
        if rows:
            out += ["| argument | default | meaning |", "|---|---|---|", *rows, ""]
        if sub.epilog:
            out += [sub.epilog.strip(), ""]
    return "\n".join(out)


def models_table(patterns: list[str]) -> str:
    """Markdown table of the registered names matching any of ``patterns``."""
    import msfusion as mf
    from msfusion.registry import paper_figures

    names = sorted({n for p in patterns for n in mf.list_models(p)})
    if not names:
        raise ValueError(f"no registered model matches {patterns}: update the page's msfusion:models marker")
    rows = [
        "| name | kind | published params (M) | published GMACs | input | source | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        fig = paper_figures(name)
        if fig is None:
            rows.append(f"| `{name}` | {mf.model_kind(name)} | | | | | |")
            continue
        params = "" if fig.params_m is None else f"{fig.params_m:g}"
        gmacs = "" if fig.gmacs is None else f"{fig.gmacs:g}"
        size = "x".join(str(s) for s in fig.input_size[1:])
        rows.append(
            f"| `{name}` | {mf.model_kind(name)} | {params} | {gmacs} | {size} | {_cell(fig.source)} "
            f"| {_cell(fig.notes)} |"
        )
    return "\n".join(rows)


def _summary(path: Path) -> str:
    doc = ast.get_docstring(ast.parse(path.read_text()))
    return doc.strip().splitlines()[0] if doc else ""


def package_layout(root: Path = PACKAGE) -> str:
    """Markdown list of the package's folders and modules with their docstrings' first lines."""

    def walk(folder: Path, depth: int) -> list[str]:
        lines = []
        indent = "    " * depth
        for path in sorted(folder.iterdir()):
            if path.is_dir() and (path / "__init__.py").is_file():
                lines.append(f"{indent}- **`{path.name}/`**: {_summary(path / '__init__.py')}")
                lines += walk(path, depth + 1)
            elif path.suffix == ".py" and path.name != "__init__.py":
                lines.append(f"{indent}- `{path.name}`: {_summary(path)}")
        return lines

    return "\n".join([f"- **`{root.name}/`**: {_summary(root / '__init__.py')}", *walk(root, 1)])


def model_patterns(markdown: str) -> list[list[str]]:
    """The pattern lists of every ``msfusion:models`` marker in a page."""
    return [m.group(1).split() for m in MODELS_RE.finditer(markdown)]


def render(markdown: str) -> str:
    """Replace the markers of one page."""
    lines = markdown.splitlines()
    if CLI_MARKER in lines:
        markdown = markdown.replace(f"\n{CLI_MARKER}\n", f"\n{cli_reference()}\n")
    if LAYOUT_MARKER in lines:
        markdown = markdown.replace(f"\n{LAYOUT_MARKER}\n", f"\n{package_layout()}\n")
    return MODELS_RE.sub(lambda m: models_table(m.group(1).split()), markdown)


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """MkDocs event: generate the CLI reference, the model tables and the package layout."""
    return render(markdown)
