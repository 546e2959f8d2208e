"""``msfusion eval CONFIG --checkpoint PATH [--tta] [--mode whole|slide]``: the task's metrics and per-class table.

Segmentation: aAcc, mIoU, mAcc and per-class IoU / Acc; detection: COCO AP
and per-class AP (and the COCO result file); panoptic: PQ, SQ, RQ (and the
COCO panoptic result JSON and PNGs). Each evaluation writes its own files,
named by the checkpoint and the test options (``best_eval_whole.json``,
``best_eval_slide_tta.json``, ...), and records the checkpoint, the mode, the
scales and the window it used, so a second evaluation never overwrites the
first.

Before anything is scored, the checkpoint is held against the data: its
model name, its class count and its class names in label order (the sidecar's
``classes``; for COCO JSON the names in category-id order, so categories
renumbered between files are caught) must match ``data.val``, and its weights
must be finite. Names that differ only in case, spaces, ``_`` or ``-`` are
taken as the same with a warning; other names are refused
(``--ignore-class-names`` scores them anyway, for synonyms in the same order).
Test options that mean nothing for the task are refused, not ignored.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from msfusion.commands import add_recipe_options, checkpoint_file, output_folder, recipe_overrides

HELP = "evaluate a checkpoint on a recipe's validation set"

# Options that stand for one --set value each (besides --device and --no-progress).
_SHORTCUTS = {"tta": "eval.tta=true", "mode": "eval.mode={}"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML recipe whose data.val and eval sections are used")
    p.add_argument("--checkpoint", required=True, help="weights (.safetensors of ours, or an official .pth)")
    p.add_argument(
        "--tta", action="store_true", help="segmentation: multi-scale (0.5-1.75) + flip test; detection: flip test"
    )
    p.add_argument(
        "--mode", choices=("whole", "slide"), help="segmentation test mode (default: the recipe's eval.mode)"
    )
    add_recipe_options(p, "override a recipe value, e.g. --set eval.crop_size=[512,512] (repeatable)")
    p.add_argument(
        "--out",
        help="folder for the metrics JSON and per-class CSV (default: beside the checkpoint)",
    )
    p.add_argument(
        "--no-strict",
        action="store_true",
        help="load a checkpoint of another class count anyway: its classifier is dropped and the new one is "
        "untrained, so the scores only measure the rest (fine-tune with train --set model.pretrained=PATH instead)",
    )
    p.add_argument(
        "--ignore-class-names",
        action="store_true",
        help="score a checkpoint whose class names differ from data.val's (synonyms of the same classes in the "
        "same order) with a warning instead of refusing it",
    )
    p.add_argument(
        "--fast",
        action="store_true",
        help="segmentation and detection: evaluate an inference-optimised copy (BatchNorm folding, channels-last; "
        "same outputs within 1e-4, see msfusion.optimize_for_inference)",
    )


def run(args: argparse.Namespace) -> int:
    import msfusion as mf

    checkpoint_file(args.checkpoint)
    out = output_folder(args.out) if args.out else Path(args.checkpoint).parent
    overrides = recipe_overrides(args, _SHORTCUTS)
    result = mf.evaluate(
        args.config,
        args.checkpoint,
        out=out,
        strict=not args.no_strict,
        ignore_class_names=args.ignore_class_names,
        fast=args.fast,
        overrides=overrides,
    )
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 reports
        print(result.text)
        print(f"saved {', '.join(str(p) for p in result.files)}")
    return 0
