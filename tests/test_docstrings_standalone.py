"""Docstrings, comments, recipes and CLI text stand alone: no pointer to a document outside the repository.

A user of the package has the repository, not the notes it was written from, so
a reference such as "see the facts file" or a relative path that leaves the
repository is a dead end. Facts are stated inline; longer provenance notes live
in ``docs/`` (``docs/provenance.md``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("msfusion", "configs", "benchmarks", "docs", "README.md")
TEXT_SUFFIXES = {".py", ".md", ".txt", ".rst", ".yaml", ".yml", ".toml", ".json", ".cfg", ".ini", ".sh"}
# Matched case-insensitively. The first two are notes outside the repository; the last leaves it.
FORBIDDEN = ("official_facts", "next_wave_facts", "../shared")


def _scanned_files() -> list[Path]:
    files = []
    for name in SCANNED:
        path = ROOT / name
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += [
                p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES and "__pycache__" not in p.parts
            ]
    return sorted(files)


def _hits(text: str) -> list[tuple[int, str]]:
    hits = []
    for number, line in enumerate(text.splitlines(), start=1):
        lowered = line.lower()
        if any(word in lowered for word in FORBIDDEN):
            hits.append((number, line.strip()))
    return hits


def test_scan_covers_the_package_and_recipes():
    files = {p.relative_to(ROOT).as_posix() for p in _scanned_files()}
    assert "msfusion/__init__.py" in files
    assert "README.md" in files
    assert any(f.startswith("configs/") and f.endswith(".yaml") for f in files)


@pytest.mark.parametrize(
    "line",
    [
        "Recipe (Official_Facts §2): AdamW",
        "# see ../shared/reference/next_wave_facts.md",
        "    # Source: next_wave_facts.md section 3",
    ],
)
def test_detector_catches_outside_references(line):
    assert _hits(f"ok line\n{line}\n") == [(2, line.strip())]


def test_detector_leaves_inside_references_alone():
    assert _hits("see docs/provenance.md and the official SegNeXt configs (local_configs/segnext/t/)") == []


def test_no_reference_to_documents_outside_the_repository():
    offenders = []
    for path in _scanned_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        offenders += [f"{path.relative_to(ROOT).as_posix()}:{n}: {line}" for n, line in _hits(text)]
    assert not offenders, (
        "these lines refer to a document users do not have; state the fact inline and name its real source "
        "(e.g. 'the official SegNeXt configs, local_configs/segnext/t/...'), or put a longer note in docs/:\n"
        + "\n".join(offenders)
    )
