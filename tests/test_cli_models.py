"""The `models` and `flops` commands, as a user runs them."""

import json
import subprocess
import sys

import msfusion
from msfusion.cli import main


def test_models_table_has_paper_columns(capsys):
    assert main(["models", "segnext_*"]) == 0
    out = capsys.readouterr().out
    assert "segnext_t" in out and "paper" in out and "multiply-adds" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("segnext_b"))
    assert "27.636" in line and "34.89" in line and "34.9" in line


def test_flops_json(capsys):
    assert main(["flops", "segnext_t", "--input", "256x256", "--num-classes", "19", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["input_size"] == [1, 3, 256, 256]
    assert report["unit"] == "multiply-adds"
    assert 4.2e6 < report["params"] < 4.3e6 and report["macs"] > 1e9


def test_flops_unknown_model_is_a_clear_error(capsys):
    assert main(["flops", "segnex_t"]) == 2
    assert "Did you mean" in capsys.readouterr().err


def test_entry_point_runs():
    out = subprocess.run(
        [sys.executable, "-m", "msfusion", "models", "mscan_*", "--no-count"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [line.split() for line in out.splitlines()]
    assert rows == [[name, "classifier"] for name in ("mscan_b", "mscan_l", "mscan_s", "mscan_t")]


def test_models_filters_by_kind(capsys):
    assert main(["models", "--kind", "neck", "--no-count"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["fpn", "neck"] in rows and all(kind == "neck" for _, kind in rows)
    assert main(["models", "*", "--kind", "head"]) == 0
    assert "built on another model's features" in capsys.readouterr().out


def test_models_table_fits_100_columns_with_the_longest_cells():
    from msfusion.commands.models import format_table

    header = ("model", "kind", "input", "params M", "paper", "GMACs", "paper")
    longest = max(msfusion.list_models("*"), key=len)
    rows = [header, (longest, "classifier", "1333x800", "56.175", "55 (code 56.2)", "1000.66", "9.8 (code 9.66)")]
    rows.append(("fpn", "neck"))
    lines = format_table(rows)
    assert max(map(len, lines)) <= 100, lines
    assert lines[-1].split()[:2] == ["fpn", "neck"]
