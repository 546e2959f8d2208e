"""Inference latency of one model in several execution modes, side by side.

Each mode runs the same eval-mode model on the same input; the result gives the
minimum, median and interquartile range of the latency over ``runs`` timed
calls (after ``warmup`` untimed ones), images per second at the median, the
ratio to the first mode (the baseline, fp32 eager) and the largest absolute
difference of the output from the baseline's. The clock, the thread setting
and the statistics are ``torch.utils.benchmark``'s (its ``timer`` waits for
CUDA kernels; its ``Measurement`` gives median and IQR and flags a noisy
measurement); :func:`environment` records what the numbers were measured on.

Modes:
- ``fp32``: eager float32;
- ``channels_last``: eager float32 with NHWC memory format for model and input;
- ``bf16``: ``torch.autocast`` with bfloat16 (CPU) / float16 (CUDA default: bf16);
- ``compile``: ``torch.compile`` (inductor) of the float32 model;
- ``compile_channels_last``: both of the above.
"""

from __future__ import annotations

import copy
import os
import platform
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["MODES", "benchmark_modes", "time_call", "latency_stats", "environment", "cpu_model"]

MODES = ("fp32", "channels_last", "bf16", "compile", "compile_channels_last")


def time_call(fn: Callable[[], Any], runs: int, warmup: int, device: torch.device) -> list[float]:
    """Wall-clock seconds of each of ``runs`` calls of ``fn`` after ``warmup`` untimed calls.

    Timed with ``torch.utils.benchmark.timer``, which waits for the GPU's
    kernels when CUDA is available, so a call's time includes its work.
    """
    # Imported here: torch.utils.benchmark loads cpp_extension, which logs a CUDA notice on CPU-only machines
    # with a CUDA build of torch; environment() (used by every training run) must not print it.
    from torch.utils import benchmark

    del device  # benchmark.timer synchronises CUDA itself
    for _ in range(warmup):
        fn()
    times = []
    start = benchmark.timer()
    for _ in range(runs):
        fn()
        end = benchmark.timer()
        times.append(end - start)
        start = end
    return times


def latency_stats(times: Sequence[float], batch: int = 1, label: str = "") -> dict[str, Any]:
    """``min_ms``, ``median_ms``, ``iqr_ms``, ``fps`` (images per second at the median) and ``noisy``.

    Median and IQR are those of ``torch.utils.benchmark.Measurement``;
    ``noisy`` is its warning that the IQR exceeds 10 % of the median (a busy
    machine, frequency scaling, too few runs).
    """
    from torch.utils import benchmark

    task = benchmark.TaskSpec(stmt=label or "model(x)", setup="", num_threads=torch.get_num_threads())
    measurement = benchmark.Measurement(number_per_run=1, raw_times=list(times), task_spec=task)
    return dict(
        min_ms=1e3 * min(times),
        median_ms=1e3 * measurement.median,
        iqr_ms=1e3 * measurement.iqr,
        fps=batch / measurement.median,
        noisy=bool(measurement.has_warnings),
    )


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` reports)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def environment(device: str | torch.device = "cpu") -> dict[str, Any]:
    """What a timing or a training run ran on: library versions, device model, threads."""
    import numpy
    import torchvision

    device = torch.device(device)
    gpu = device.type == "cuda"
    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(device) if gpu else f"cpu ({cpu_model()})",
        "cpu": cpu_model(),
        "gpu": torch.cuda.get_device_name(device) if gpu else None,
        "cuda": torch.version.cuda if gpu else None,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }


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
    """Latency per mode (min, median, IQR, FPS), its ratio to the first mode, and the output difference.

    Args:
        model: the model (put in eval mode; each mode times a copy).
        input_size: (B, 3, H, W) of the random input.
        modes: from :data:`MODES`; the first is the baseline.
        runs: timed calls per mode (at least 1).
        warmup: untimed calls before them (compilation, allocator, caches).
        device: where to run.
        seed: of the random input.

    Returns:
        One dict per mode: ``mode``, ``dtype``, ``min_ms``, ``median_ms``,
        ``iqr_ms``, ``fps``, ``noisy`` (see :func:`latency_stats`),
        ``speedup`` (baseline median / this median), ``max_abs_diff`` (vs the
        baseline's output, in float32) and ``max_rel_diff`` (the same over the
        baseline's largest absolute output).
    """
    if runs < 1 or warmup < 0:
        raise ValueError(f"runs must be >= 1 and warmup >= 0, got runs={runs}, warmup={warmup}")
    device = torch.device(device)
    model = model.to(device).eval()
    x = torch.randn(tuple(input_size), generator=torch.Generator().manual_seed(seed)).to(device)
    results: list[dict[str, Any]] = []
    reference: Tensor | None = None
    for mode in modes:
        run, dtype = _prepare(model, x, mode)
        stats = latency_stats(time_call(run, runs, warmup, device), x.shape[0], mode)
        out = run().float()
        if reference is None:
            reference = out
        results.append(
            dict(
                mode=mode,
                dtype=dtype,
                **stats,
                speedup=results[0]["median_ms"] / stats["median_ms"] if results else 1.0,
                max_abs_diff=float((out - reference).abs().max()),
                max_rel_diff=float((out - reference).abs().max() / reference.abs().max().clamp_min(1e-12)),
            )
        )
    return results
