"""``msfusion train CONFIG [--set key=value ...] [--resume | --overwrite]``: train from a YAML recipe.

A work_dir that already holds checkpoints is never overwritten silently:
``--resume`` continues that run, ``--overwrite`` deletes it and starts over,
and without either the command stops and says so.

Under ``torchrun --nproc_per_node N -m msfusion train CONFIG`` the same
command runs data-parallel (gloo on CPU, NCCL on GPUs).
"""

from __future__ import annotations

import argparse
import os
import sys


def add_parser(subparsers: argparse._SubParsersAction, name: str) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help="train a model from a YAML recipe (configs/*.yaml)")
    p.add_argument("config", help="YAML recipe, e.g. configs/segnext_t_ade20k.yaml")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe value, e.g. --set optim.lr=1e-4 --set data.batch_size=8 (repeatable)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in the work_dir (from latest.json, else the newest complete iter_* checkpoint)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the checkpoints of an earlier run in the work_dir and start over (refused without it)",
    )
    p.add_argument("--work-dir", help="shortcut for --set train.work_dir=DIR")
    p.add_argument("--seed", type=int, help="shortcut for --set train.seed=N")
    p.add_argument("--deterministic", action="store_true", help="deterministic kernels (slower)")
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        help="auto, cpu or cuda (default: the recipe's train.device); under torchrun each rank takes its GPU",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar (for logs and scripts)")
    p.add_argument(
        "--grad-checkpointing",
        action="store_true",
        help="recompute backbone activations in the backward pass: less memory, slower steps",
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import msfusion as mf
    from msfusion.checkpoint import CheckpointError
    from msfusion.engine.trainer import NonFiniteLossError

    overrides = list(args.overrides)
    if args.work_dir:
        overrides.append(f"train.work_dir={args.work_dir}")
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    if args.deterministic:
        overrides.append("train.deterministic=true")
    if args.device:
        overrides.append(f"train.device={args.device}")
    if args.no_progress:
        overrides.append("train.progress=false")
    if args.grad_checkpointing:
        overrides.append("train.grad_checkpointing=true")
    try:
        summary = mf.train(args.config, resume=args.resume, overwrite=args.overwrite, overrides=overrides)
    except (NonFiniteLossError, CheckpointError) as err:
        print(f"msfusion train: error: {err}", file=sys.stderr)
        return 1
    if os.environ.get("RANK", "0") != "0":
        return 0  # under torchrun, rank 0 reports
    best = summary["best"]
    if best:
        print(f"best {best['metric']} {100 * best['value']:.2f} at step {best['step']}")
    print(f"finished at step {summary['step']}; outputs in {summary['work_dir']}")
    return 0
