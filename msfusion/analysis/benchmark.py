"""Inference latency of one model in several execution modes, side by side.

Each mode runs the same eval-mode model on the same input; the result gives the
median latency over ``runs`` timed calls (after ``warmup`` untimed ones), the
ratio to the first mode (the baseline, fp32 eager) and the largest absolute
difference of the output from the baseline's.

Modes:
- ``fp32``: eager float32;
- ``channels_last``: eager float32 with NHWC memory format for model and input;
- ``bf16``: ``torch.autocast`` with bfloat16 (CPU) / float16 (CUDA default: bf16);
- ``compile``: ``torch.compile`` (inductor) of the float32 model;
- ``compile_channels_last``: both of the above.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["MODES", "benchmark_modes", "time_call"]

MODES = ("fp32", "channels_last", "bf16", "compile", "compile_channels_last")


def time_call(fn: Callable[[], Any], runs: int, warmup: int, device: torch.device) -> list[float]:
    """Wall-clock seconds of ``runs`` calls of ``fn`` after ``warmup`` calls."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def _prepare(model: nn.Module, x: Tensor, mode: str) -> tuple[Callable[[], Tensor], str]:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")
    m = copy.deepcopy(model).eval()
    inp = x
    if "channels_last" in mode:
        m = m.to(memory_format=torch.channels_last)
        inp = x.contiguous(memory_format=torch.channels_last)
    if mode.startswith("compile"):
        m = torch.compile(m)
    if mode == "bf16":

        def run() -> Tensor:
            with torch.no_grad(), torch.autocast(x.device.type, dtype=torch.bfloat16):
                return m(inp)

        return run, "bfloat16 autocast"

    def run_fp32() -> Tensor:
        with torch.no_grad():
            return m(inp)

    return run_fp32, "float32"


def benchmark_modes(
    model: nn.Module,
    input_size: Sequence[int] = (1, 3, 512, 512),
    modes: Sequence[str] = MODES,
    runs: int = 10,
    warmup: int = 3,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Median latency per mode, its ratio to the first mode, and the output difference.

    Returns:
        One dict per mode: ``mode``, ``dtype``, ``median_ms``, ``min_ms``,
        ``speedup`` (baseline median / this median), ``max_abs_diff`` (vs the
        baseline's output, in float32) and ``max_rel_diff`` (the same over the
        baseline's largest absolute output).
    """
    device = torch.device(device)
    model = model.to(device).eval()
    x = torch.randn(tuple(input_size), generator=torch.Generator().manual_seed(seed)).to(device)
    results: list[dict[str, Any]] = []
    reference: Tensor | None = None
    for mode in modes:
        run, dtype = _prepare(model, x, mode)
        times = time_call(run, runs, warmup, device)
        out = run().float()
        if reference is None:
            reference = out
        median = statistics.median(times)
        results.append(
            dict(
                mode=mode,
                dtype=dtype,
                median_ms=1e3 * median,
                min_ms=1e3 * min(times),
                speedup=results[0]["median_ms"] / (1e3 * median) if results else 1.0,
                max_abs_diff=float((out - reference).abs().max()),
                max_rel_diff=float((out - reference).abs().max() / reference.abs().max().clamp_min(1e-12)),
            )
        )
    return results
