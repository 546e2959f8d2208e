"""msfusion bench: what it measured on, min / median / IQR / FPS per mode, --json."""

from __future__ import annotations

import json

import pytest
import torch

from msfusion.analysis.benchmark import latency_stats
from msfusion.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny tensors, one thread

ARGS = ["bench", "test_segnext", "--input", "32", "--modes", "fp32", "channels_last", "--runs", "3", "--warmup", "1"]


def test_latency_stats_are_torch_benchmark_median_and_iqr():
    stats = latency_stats([0.001, 0.002, 0.003, 0.004, 0.005], batch=2)
    assert stats["min_ms"] == pytest.approx(1.0) and stats["median_ms"] == pytest.approx(3.0)
    assert stats["iqr_ms"] == pytest.approx(2.0) and stats["fps"] == pytest.approx(2 / 0.003)
    assert stats["noisy"]  # an IQR of 67% of the median
    assert not latency_stats([0.01] * 5)["noisy"]


def test_bench_prints_the_setup_and_min_median_iqr_fps(capsys):
    assert main([*ARGS, "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("test_segnext at 1x3x32x32 on cpu (") and ", 1 thread, torch " in lines[0]
    assert lines[0].endswith(torch.__version__)
    assert lines[1].startswith("1 warm-up call, then 3 timed calls per mode")
    assert lines[2].split() == ["mode", "min", "median", "IQR", "FPS", "vs", "fp32", "max", "|diff|"]
    assert [line.split()[0] for line in lines[3:]] == ["fp32", "channels_last"]


def test_bench_json(capsys):
    assert main([*ARGS, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["environment"]["torch"] == torch.__version__ and report["environment"]["threads"] >= 1
    assert report["warmup"] == 1 and report["runs"] == 3 and report["input"] == "1x3x32x32"
    assert [r["mode"] for r in report["results"]] == ["fp32", "channels_last"]
    for row in report["results"]:
        assert 0 < row["min_ms"] <= row["median_ms"] and row["iqr_ms"] >= 0
        assert row["fps"] == pytest.approx(1e3 / row["median_ms"])
