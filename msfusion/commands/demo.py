"""``msfusion demo [--out DIR]``: train SegNeXt-T on synthetic shapes on CPU and write a report."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help="the embedded demo: train, evaluate, write a report folder (no download)")
    p.add_argument("--out", default="msfusion_demo", help="report folder (default: msfusion_demo)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change the demo recipe",
    )
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from msfusion.engine.demo import run_demo

    if args.threads:
        torch.set_num_threads(args.threads)
    result = run_demo(args.out, args.overrides, progress=not args.no_progress)
    print(result["table"])
    print(
        f"mIoU {100 * result['metrics']['mIoU']:.2f} % on {result['metrics']['num_images']} held-out images; "
        f"training {result['train_time_s']:.0f} s, total {result['wall_time_s']:.0f} s"
    )
    print(f"report: {result['out_dir']} (start with README.txt)")
    return 0
