"""``msfusion demo [--task detection] [--out DIR]``: train on synthetic shapes on CPU and write a report."""

from __future__ import annotations

import argparse

from msfusion.commands import add_recipe_options, add_threads_option, set_threads

HELP = "the embedded demo: train, evaluate, write a report folder (no download)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--task",
        default="segmentation",
        help="segmentation (SegNeXt-T, default) or detection (FCOS on a ResNet-18, COCO box AP)",
    )
    p.add_argument("--out", help="report folder (default: the task's, msfusion_demo or msfusion_demo_detection)")
    add_recipe_options(p, "change the demo recipe", device=False)
    p.add_argument(
        "--overwrite", action="store_true", help="replace an earlier demo run in the report folder (else an error)"
    )
    add_threads_option(p)


def run(args: argparse.Namespace) -> int:
    from msfusion.engine.tasks import build_task, demo_tasks

    task = build_task(args.task)
    if not task.demo_entry:
        raise ValueError(f"--task {args.task}: no embedded demo for this task; choose one of {demo_tasks()}")
    set_threads(args.threads)
    result = task.run_demo(args.out or task.demo_dir, args.overrides, not args.no_progress, args.overwrite)
    print(task.describe_demo(result))
    return 0
