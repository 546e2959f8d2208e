"""``msfusion bench MODEL``: inference latency per execution mode (min / median / IQR, FPS), ratios to fp32 eager."""

from __future__ import annotations

import argparse
import json
from typing import Any

from msfusion.analysis.benchmark import MODES, benchmark_modes
from msfusion.commands import add_device_option, add_threads_option, set_threads
from msfusion.commands.flops import parse_size

__all__ = ["HELP", "DESCRIPTION", "add_arguments", "run"]

HELP = "time inference (fp32, channels_last, bf16, torch.compile): min / median / IQR, FPS, ratio to fp32"
DESCRIPTION = (
    "Latency per execution mode on one random input: --warmup untimed calls, then --runs timed "
    "calls (torch.utils.benchmark's clock, which waits for CUDA kernels). Prints the torch version, the "
    "device model and the thread count with the numbers; --json prints all of it as JSON."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="registered model name")
    p.add_argument("--input", type=parse_size, default=(512, 512), help="input HxW, or N for NxN (default 512x512)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1); FPS counts images")
    p.add_argument("--num-classes", type=int, default=None, help="classes of the head (default: the variant's)")
    p.add_argument(
        "--modes", nargs="+", default=list(MODES), choices=MODES, help="execution modes to time (default: all)"
    )
    p.add_argument("--runs", type=int, default=10, help="timed calls per mode (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    add_threads_option(p)
    add_device_option(p)
    p.add_argument("--json", action="store_true", help="print the environment, settings and results as JSON")
    p.add_argument(
        "--fast",
        action="store_true",
        help="also time msfusion.optimize_for_inference: 'fast' (BatchNorm folding, channels-last, freed "
        "memory kept) and 'fast_compile' (the same + torch.compile)",
    )


def _fast_modes(
    model: Any, input_size: tuple[int, ...], runs: int, warmup: int, device: str, results: list[dict]
) -> list[dict]:
    """Latency of the inference-optimised copies, on the input ``benchmark_modes`` used (seed 0)."""
    import torch

    from msfusion.analysis.benchmark import latency_stats, time_call
    from msfusion.engine.fast_inference import optimize_for_inference

    dev = torch.device(device)
    x = torch.randn(input_size, generator=torch.Generator().manual_seed(0)).to(dev)
    with torch.no_grad():
        reference = model.to(dev).eval()(x).float()
    base_ms = results[0]["median_ms"] if results else None
    rows = []
    for mode, kwargs in (("fast", {}), ("fast_compile", {"compile": True})):
        fast = optimize_for_inference(model, **kwargs)
        stats = latency_stats(time_call(lambda fast=fast: fast(x), runs, max(warmup, 1), dev), input_size[0], mode)
        rows.append(
            dict(
                mode=mode,
                dtype="float32",
                **stats,
                speedup=base_ms / stats["median_ms"] if base_ms else 1.0,
                max_abs_diff=float((fast(x).float() - reference).abs().max()),
            )
        )
    return rows


def format_results(header: dict[str, Any], results: list[dict[str, Any]]) -> list[str]:
    """The lines ``msfusion bench`` prints: what was measured, on what, then one row per mode."""
    env = header["environment"]
    lines = [
        f"{header['model']} at {header['input']} on {env['device']}, {env['threads']} "
        f"thread{'' if env['threads'] == 1 else 's'}, torch {env['torch']}",
        f"{header['warmup']} warm-up call{'' if header['warmup'] == 1 else 's'}, then {header['runs']} timed "
        f"call{'' if header['runs'] == 1 else 's'} per mode (ms; FPS at the median)",
        f"  {'mode':<22}{'min':>8}{'median':>9}{'IQR':>8}{'FPS':>8}{'vs fp32':>9}{'max |diff|':>12}",
    ]
    for r in results:
        lines.append(
            f"  {r['mode']:<22}{r['min_ms']:>8.1f}{r['median_ms']:>9.1f}{r['iqr_ms']:>8.1f}{r['fps']:>8.1f}"
            f"{r['speedup']:>8.2f}x{r['max_abs_diff']:>12.2e}" + ("  noisy: IQR > 10% of median" if r["noisy"] else "")
        )
    return lines


def run(args: argparse.Namespace) -> int:
    import msfusion as mf
    from msfusion.analysis.benchmark import environment

    if args.runs < 1 or args.warmup < 0 or args.batch < 1:
        raise ValueError(
            f"--runs and --batch must be >= 1 and --warmup >= 0 (got {args.runs}, {args.batch}, {args.warmup})"
        )
    set_threads(args.threads)
    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    model = mf.create_model(args.model, **kwargs)
    h, w = args.input
    size = (args.batch, 3, h, w)
    results = benchmark_modes(model, size, args.modes, args.runs, args.warmup, args.device)
    if args.fast:
        results += _fast_modes(model, size, args.runs, args.warmup, args.device, results)
    header = {
        "model": args.model,
        "input": "x".join(str(s) for s in size),
        "warmup": args.warmup,
        "runs": args.runs,
        "environment": environment(args.device),
    }
    if args.json:
        print(json.dumps({**header, "results": results}, indent=2))
    else:
        print("\n".join(format_results(header, results)))
    return 0
