"""``msfusion bench MODEL``: inference latency per execution mode, as ratios to fp32 eager."""

from __future__ import annotations

import argparse

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
    p.add_argument("--input", type=parse_size, default=(512, 512), help="HxW (default 512x512)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import msfusion as mf

    kwargs = {} if args.num_classes is None else {"num_classes": args.num_classes}
    model = mf.create_model(args.model, **kwargs)
    h, w = args.input
    results = benchmark_modes(model, (args.batch, 3, h, w), args.modes, args.runs, args.warmup, args.device)
    print(f"{args.model} at {args.batch}x3x{h}x{w} on {args.device} (median of {args.runs} runs)")
    print(f"  {'mode':<22}{'median ms':>10}{'vs fp32':>9}{'max |diff|':>12}")
    for r in results:
        print(f"  {r['mode']:<22}{r['median_ms']:>10.1f}{r['speedup']:>8.2f}x{r['max_abs_diff']:>12.2e}")
    return 0
