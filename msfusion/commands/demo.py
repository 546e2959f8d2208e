"""``msfusion demo [--task detection] [--out DIR]``: train on synthetic shapes on CPU and write a report."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help="the embedded demo: train, evaluate, write a report folder (no download)")
    p.add_argument(
        "--task",
        choices=("segmentation", "detection"),
        default="segmentation",
        help="segmentation (SegNeXt-T, default) or detection (FCOS on a ResNet-18, COCO box AP)",
    )
    p.add_argument("--out", help="report folder (default: msfusion_demo, or msfusion_demo_detection)")
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

    from msfusion.engine.demo import run_demo

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.task == "detection":
        from msfusion.engine.detection_demo import run_detection_demo

        result = run_detection_demo(
            args.out or "msfusion_demo_detection", args.overrides, not args.no_progress, overwrite=args.overwrite
        )
        print(result["table"])
        metrics = result["metrics"]
        print(
            f"box AP {100 * metrics['bbox_AP']:.1f}, AP50 {100 * metrics['bbox_AP50']:.1f} on "
            f"{metrics['num_images']} held-out images; training {result['train_time_s']:.0f} s, "
            f"total {result['wall_time_s']:.0f} s"
        )
        print(f"report: {result['out_dir']} (start with README.txt)")
        return 0
    result = run_demo(
        args.out or "msfusion_demo", args.overrides, progress=not args.no_progress, overwrite=args.overwrite
    )
    print(result["table"])
    print(
        f"mIoU {100 * result['metrics']['mIoU']:.2f} % on {result['metrics']['num_images']} held-out images; "
        f"training {result['train_time_s']:.0f} s, total {result['wall_time_s']:.0f} s"
    )
    print(f"report: {result['out_dir']} (start with README.txt)")
    return 0
