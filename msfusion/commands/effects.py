"""``msfusion effects [--quick] [--only fine,mscsa,cednet,segnext] --out DIR``: do the papers' effects show?

Trains matched pairs (with and without each paper's module, same recipe, data,
steps and seeds) on the hard shapes data and reports the paired differences
with 95 % intervals and a verdict in words (``msfusion.analysis.effects``).
An interrupted run resumes from the models already trained in ``DIR/runs``.
"""

from __future__ import annotations

import argparse

from msfusion.commands import add_progress_option, add_threads_option, output_folder, set_threads

HELP = "train matched pairs per paper (FINE, MSCSA, CEDNet, SegNeXt) and report whether each effect shows"
DESCRIPTION = __doc__.split("\n\n")[1].replace("\n", " ")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="msfusion_effects", help="report folder (default: msfusion_effects)")
    p.add_argument("--quick", action="store_true", help="one seed, fewer steps (minutes; no interval, no verdict)")
    p.add_argument("--only", default=None, metavar="NAMES", help="comma-separated effects: fine,mscsa,cednet,segnext")
    p.add_argument(
        "--device",
        default="cpu",
        choices=("cpu", "cuda"),
        help="cpu or cuda (cuda trains more steps and seeds by default)",
    )
    p.add_argument("--seeds", type=int, default=None, help="seeds per arm (default: 3 on CPU, 5 on CUDA, 1 quick)")
    p.add_argument("--steps", type=int, default=None, help="training steps per model (default: the mode's)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in an --out holding other results (results of the same options are always resumed)",
    )
    add_threads_option(p)
    add_progress_option(p)


def run(args: argparse.Namespace) -> int:
    from msfusion.analysis.effects import budget_for, format_report, parse_effects, run_effects

    out = output_folder(args.out)
    effects = parse_effects(args.only)
    budget = budget_for(args.device, quick=args.quick, steps=args.steps, seeds=args.seeds)
    set_threads(args.threads)
    report = run_effects(out, effects, budget, overwrite=args.overwrite, progress=not args.no_progress)
    print(format_report(report))
    print(
        f"{report['trained_now']} models trained, {report['reused']} reused, {report['wall_time_s']:.0f} s; "
        f"report: {out / 'effects.json'}, picture: {out / 'effects.png'}"
    )
    return 0
