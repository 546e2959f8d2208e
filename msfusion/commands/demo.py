"""``msfusion demo [--task detection] [--out DIR]``: train on synthetic shapes on CPU and write a report."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help="the embedded demo: train, evaluate, write a report folder (no download)")
    p.add_argument(
        "--task",
        default="segmentation",
        help="segmentation (SegNeXt-T, default) or detection (FCOS on a ResNet-18, COCO box AP)",
    )
    p.add_argument("--out", help="report folder (default: the task's, msfusion_demo or msfusion_demo_detection)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change the demo recipe",
    )
    p.add_argument(
        "--overwrite", action="store_true", help="replace an earlier demo run in the report folder (else an error)"
    )
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs and scripts)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import torch

    from msfusion.engine.tasks import build_task, demo_tasks

    task = build_task(args.task)
    if not task.demo_entry:
        raise ValueError(f"--task {args.task}: no embedded demo for this task; choose one of {demo_tasks()}")
    if args.threads:
        torch.set_num_threads(args.threads)
    result = task.run_demo(args.out or task.demo_dir, args.overrides, not args.no_progress, args.overwrite)
    print(task.describe_demo(result))
    return 0
