"""benchmarks/bench_vs_mmseg.py without the reference environment, at a tiny size, and its report.

The benchmark must say how to build the mmseg environment and still time msfusion's own modes; a mode this
machine cannot run is reported, not timed; the GPU report prints FPS beside the paper's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_vs_mmseg.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_vs_mmseg", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_reference_environment_times_own_modes(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MSFUSION_REFENV"}
    out = tmp_path / "result.json"
    args = ["--models", "segnext_t", "--tasks", "infer", "train", "--infer-modes", "fp32", "fast", "fp16"]
    args += ["--train-modes", "fp32", "--size", "64", "--train-size", "64", "--num-classes", "4"]
    args += ["--runs", "2", "--warmup", "0", "--threads", "1", "--json", str(out)]
    proc = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no mmsegmentation reference environment" in proc.stdout
    assert "mmsegmentation==1.2.2" in proc.stdout  # how to build it
    assert "msfusion fp16           not run: fp16 autocast is a CUDA mode" in proc.stdout

    result = json.loads(out.read_text())
    infer = {row["subject"]: row for row in result["segnext_t/infer"]}
    assert set(infer) == {"msfusion fp32", "msfusion fast", "msfusion fp16"}
    assert infer["msfusion fp32"]["speedup_median"] == 1.0  # ratios are to msfusion fp32 without mmseg
    assert infer["msfusion fast"]["min_ms"] > 0
    assert infer["msfusion fast"]["max_diff_vs_fp32_logits"] < 1e-4  # the fast mode is float32-exact
    train = result["segnext_t/train"]
    assert [row["subject"] for row in train] == ["msfusion fp32"]
    assert train[0]["max_diff_vs_fp32_loss"] == 0.0


def test_mode_without_hardware_support_is_reported(bench, monkeypatch):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert "no bf16 support" in bench.mode_unsupported("bf16", "cpu")
    assert bench.mode_unsupported("fp16", "cpu") == "fp16 autocast is a CUDA mode"
    assert bench.mode_unsupported("fast", "cpu") is None


def test_cuda_without_a_gpu_is_a_clear_error(bench, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["bench_vs_mmseg.py", "--device", "cuda"])
    with pytest.raises(SystemExit):
        bench.main()
    assert "no CUDA device is visible" in capsys.readouterr().err


def test_gpu_report_prints_fps_beside_the_paper(bench, capsys):
    rows = [
        {"subject": "msfusion fp32", "min_ms": 50.0, "median_ms": 50.0, "speedup_median": 1.0, "speedup_min": 1.0},
        {"subject": "msfusion fp16", "min_ms": 10.0, "median_ms": 10.0, "speedup_median": 5.0, "speedup_min": 5.0},
        {"subject": "msfusion fast", "min_ms": 25.0, "median_ms": 25.0, "speedup_median": 2.0, "speedup_min": 2.0},
    ]
    bench.print_rows("segnext_t", rows, "msfusion fp32", (768, 1536), "segnext_t", "infer")
    report = capsys.readouterr().out
    # fp16 is faster but not float32-exact: the best exact mode is "fast", 25 ms = 40 FPS.
    assert "best float32 mode: msfusion fast, 2.00x" in report
    assert "40.0 FPS at 768x1536 vs the paper's 25 FPS" in report
