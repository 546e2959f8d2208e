"""``msfusion models [PATTERN]``: registered models with measured and published size."""

from __future__ import annotations

import argparse
import json

from msfusion.analysis.report import model_report
from msfusion.registry import KINDS

# Necks, add-ons and heads are parts built on another model's features: no size of their own.
_PART_KINDS = ("neck", "addon", "head")

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction, name: str) -> None:
    p = subparsers.add_parser(
        name,
        help="list models with params and MACs (measured on the meta device) beside the paper's",
        description="List registered models. Params and MACs are counted on the meta device at each "
        "variant's paper input size; MACs are multiply-adds (the papers' 'GFLOPs').",
    )
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'segnext_*'")
    p.add_argument("--kind", choices=KINDS, help="only models of this kind")
    p.add_argument("--no-count", action="store_true", help="names and kinds only (fast)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import msfusion as mf

    names = mf.list_models(args.pattern, kind=args.kind)
    if not names:
        print(f"no model matches {args.pattern!r}" + (f" of kind {args.kind!r}" if args.kind else ""))
        return 1
    kinds = {name: mf.model_kind(name) for name in names}
    if args.no_count:
        width = max(len(n) for n in names)
        print("\n".join(f"{n.ljust(width)}  {kinds[n]}" for n in names))
        return 0
    rows = [
        {"model": n, "kind": kinds[n]} if kinds[n] in _PART_KINDS else {**model_report(n), "kind": kinds[n]}
        for n in names
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("model", "kind", "input", "params (M)", "paper", "GMACs", "paper", "rules", "source")
    table = [header]
    for r in rows:
        if r["kind"] in _PART_KINDS:
            table.append((r["model"], r["kind"], *("-" * 6), "built on another model's features"))
            continue
        table.append(
            (
                r["model"],
                r["kind"],
                "x".join(map(str, r["input_size"][1:])),
                f"{r['params_m']:.3f}",
                _fmt(r["paper_params_m"]),
                f"{r['gmacs']:.2f}",
                _fmt(r["paper_gmacs"]),
                r["rules"],
                r["source"],
            )
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for i, row in enumerate(table):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print("\nMACs are multiply-adds counted on the meta device with the rules named per row.")
    return 0


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"
