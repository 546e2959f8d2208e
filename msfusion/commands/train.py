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

from msfusion.commands import add_recipe_options, recipe_overrides

HELP = "train a model from a YAML recipe (configs/*.yaml)"

# Options that stand for one --set value each (besides --device and --no-progress).
_SHORTCUTS = {
    "work_dir": "train.work_dir={}",
    "seed": "train.seed={}",
    "deterministic": "train.deterministic=true",
    "grad_checkpointing": "train.grad_checkpointing=true",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML recipe, e.g. configs/segnext_t_ade20k.yaml")
    add_recipe_options(p, "override a recipe value, e.g. --set optim.lr=1e-4 --set data.batch_size=8 (repeatable)")
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
        "--grad-checkpointing",
        action="store_true",
        help="recompute backbone activations in the backward pass: less memory, slower steps",
    )


def run(args: argparse.Namespace) -> int:
    import msfusion as mf
    from msfusion.checkpoint import CheckpointError
    from msfusion.engine.trainer import NonFiniteLossError

    overrides = recipe_overrides(args, _SHORTCUTS)
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
