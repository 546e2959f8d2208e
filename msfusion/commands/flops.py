"""``msfusion flops MODEL --input HxW --num-classes N [--json]``: params and multiply-adds."""

from __future__ import annotations

import argparse
import json

from msfusion.analysis.report import model_report

__all__ = ["HELP", "DESCRIPTION", "add_arguments", "run", "parse_size"]


def parse_size(text: str) -> tuple[int, int]:
    """'512x512' or '512' -> (512, 512)."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        size = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"input size must look like 512x512, got {text!r}") from None
    if len(size) == 1:
        size = (size[0], size[0])
    if len(size) != 2 or min(size) <= 0:
        raise argparse.ArgumentTypeError(f"input size must be HxW with positive numbers, got {text!r}")
    return size  # type: ignore[return-value]


HELP = "count params and multiply-adds of a model"
DESCRIPTION = "Count parameters and multiply-adds (MACs, the papers' 'GFLOPs') on the meta device."


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="registered model name (msfusion models)")
    p.add_argument(
        "--input", type=parse_size, default=None, help="input HxW, or N for NxN (default: the paper's input size)"
    )
    p.add_argument("--num-classes", type=int, default=None, help="classes of the head (default: the variant's)")
    p.add_argument(
        "--rules", choices=("torchprofile", "mmcv"), default=None, help="counting convention (default: the paper's)"
    )
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    report = model_report(args.model, input_size=args.input, num_classes=args.num_classes, rules=args.rules)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    h, w = report["input_size"][2:]
    print(f"model:   {report['model']}")
    print(f"input:   1x{report['input_size'][1]}x{h}x{w}")
    paper_p = f"  (paper: {report['paper_params_m']:g} M)" if report["paper_params_m"] else ""
    paper_m = f"  (paper: {report['paper_gmacs']:g} G)" if report["paper_gmacs"] else ""
    print(f"params:  {report['params']:,} = {report['params_m']:.3f} M{paper_p}")
    print(f"MACs:    {report['macs']:,} = {report['gmacs']:.3f} G multiply-adds ({report['rules']} rules){paper_m}")
    return 0
