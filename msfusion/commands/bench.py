"""``msfusion bench MODEL``: inference latency per execution mode, as ratios to fp32 eager."""

from __future__ import annotations

import argparse
from typing import Any

from msfusion.analysis.benchmark import MODES, benchmark_modes
from msfusion.commands.flops import parse_size

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction, name: str) -> None:
    p = subparsers.add_parser(
        name,
        help="time inference (fp32, channels_last, bf16, torch.compile) with ratios to fp32 eager",
        description="Median latency over --runs calls after --warmup calls, per mode, on one input.",
    )
    p.add_argument("model", help="registered model name")
    p.add_argument("--input", type=parse_size, default=(512, 512), help="input HxW, or N for NxN (default 512x512)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--num-classes", type=int, default=None, help="classes of the head (default: the variant's)")
    p.add_argument(
        "--modes", nargs="+", default=list(MODES), choices=MODES, help="execution modes to time (default: all)"
    )
    p.add_argument("--runs", type=int, default=10, help="timed calls per mode (default 10)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls first (default 3)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda or cuda:N (default cpu)")
    p.add_argument(
        "--fast",
        action="store_true",
        help="also time msfusion.optimize_for_inference: 'fast' (BatchNorm folding, channels-last, freed "
        "memory kept) and 'fast_compile' (the same + torch.compile)",
    )
    p.set_defaults(func=run)


def _fast_modes(
    model: Any, input_size: tuple[int, ...], runs: int, warmup: int, device: str, results: list[dict]
) -> list[dict]:
    """Latency of the inference-optimised copies, on the input ``benchmark_modes`` used (seed 0)."""
    import statistics

    import torch

    from msfusion.analysis.benchmark import time_call
    from msfusion.engine.fast_inference import optimize_for_inference

    dev = torch.device(device)
    x = torch.randn(input_size, generator=torch.Generator().manual_seed(0)).to(dev)
    with torch.no_grad():
        reference = model.to(dev).eval()(x).float()
    base_ms = results[0]["median_ms"] if results else None
    rows = []
    for mode, kwargs in (("fast", {}), ("fast_compile", {"compile": True})):
        fast = optimize_for_inference(model, **kwargs)
        median_ms = 1e3 * statistics.median(time_call(lambda fast=fast: fast(x), runs, max(warmup, 1), dev))
        rows.append(
            dict(
                mode=mode,
                dtype="float32",
                median_ms=median_ms,
                speedup=base_ms / median_ms if base_ms else 1.0,
                max_abs_diff=float((fast(x).float() - reference).abs().max()),
            )
        )
    return rows


def run(args: argparse.Namespace) -> int:
    import msfusion as mf

    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    model = mf.create_model(args.model, **kwargs)
    h, w = args.input
    results = benchmark_modes(model, (args.batch, 3, h, w), args.modes, args.runs, args.warmup, args.device)
    if args.fast:
        results += _fast_modes(model, (args.batch, 3, h, w), args.runs, args.warmup, args.device, results)
    print(f"{args.model} at {args.batch}x3x{h}x{w} on {args.device} (median of {args.runs} runs)")
    print(f"  {'mode':<22}{'median ms':>10}{'vs fp32':>9}{'max |diff|':>12}")
    for r in results:
        print(f"  {r['mode']:<22}{r['median_ms']:>10.1f}{r['speedup']:>8.2f}x{r['max_abs_diff']:>12.2e}")
    return 0
