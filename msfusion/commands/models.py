"""``msfusion models [PATTERN]``: registered models with measured and published size."""

from __future__ import annotations

import argparse
import json

from msfusion.analysis.report import model_report
from msfusion.registry import KINDS

# Necks, add-ons and heads are parts built on another model's features: no size of their own.
_PART_KINDS = ("neck", "addon", "head")

__all__ = ["HELP", "DESCRIPTION", "add_arguments", "format_table", "run"]

HELP = "list models with params and MACs (measured on the meta device) beside the paper's"
DESCRIPTION = (
    "List registered models. Params and MACs are counted on the meta device at each "
    "variant's paper input size; MACs are multiply-adds (the papers' 'GFLOPs')."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern, e.g. 'segnext_*'")
    p.add_argument("--kind", choices=KINDS, help="only models of this kind")
    p.add_argument("--no-count", action="store_true", help="names and kinds only (fast)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--wide", action="store_true", help="add the counting rules and the source of each figure")
    p.add_argument(
        "--weights",
        action="store_true",
        help="list the published weights (name, dataset, licence, URL) instead of sizes; pretrained=NAME loads one",
    )


def format_table(table: list[tuple[str, ...]], wide: bool = False, max_width: int = 100) -> list[str]:
    """Lines of the table; columns are two spaces apart, one if that keeps a line within ``max_width``.

    A two-cell row (a part without a size) is printed across the size columns.
    """
    header = table[0]
    widths = [max(len(row[i]) for row in table if len(row) > i) for i in range(len(header))]
    gap = "  " if wide or sum(widths) + 2 * (len(widths) - 1) <= max_width else " "
    lines = []
    for i, row in enumerate(table):
        if len(row) == 2:
            row = (*row, "built on another model's features")
        lines.append(gap.join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip())
        if i == 0:
            lines.append(gap.join("-" * w for w in widths))
    return lines


def run(args: argparse.Namespace) -> int:
    import msfusion as mf

    if args.weights:
        return _weights(args.pattern, args.json)
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
    header = ("model", "kind", "input", "params M", "paper", "GMACs", "paper")
    if args.wide:
        header += ("rules", "source")
    table = [header]
    for r in rows:
        if r["kind"] in _PART_KINDS:
            table.append((r["model"], r["kind"]))  # printed across the size columns, below
            continue
        row = (
            r["model"],
            r["kind"],
            "x".join(map(str, r["input_size"][2:])),
            f"{r['params_m']:.3f}",
            _paper(r["paper_params_m"], r.get("printed_params_m")),
            f"{r['gmacs']:.2f}",
            _paper(r["paper_gmacs"], r.get("printed_gmacs")),
        )
        table.append(row + ((r["rules"], r["source"]) if args.wide else ()))
    print("\n".join(format_table(table, wide=args.wide)))
    print(
        "\nMACs: multiply-adds (the papers' 'GFLOPs'), counted on the meta device. 'paper': published;"
        "\n'55 (code 56.2)': the paper prints 55, its released code gives 56.2. --wide: rules and sources."
    )
    return 0


def _weights(pattern: str, as_json: bool) -> int:
    from msfusion.weights import get_weights, list_weights

    entries = [get_weights(n).describe() for n in list_weights(pattern)]
    if as_json:
        print(json.dumps(entries, indent=2))
        return 0
    if not entries:
        print(f"no published weights match {pattern!r}; timm backbones take pretrained=True (timm's hub weights)")
        return 1
    for e in entries:
        print(f"{e['name']}  ({e['dataset']}, {e['num_classes']} classes)")
        print(f"    {e['url']}")
        print(f"    sha256: {e['sha256']}; licence: {e['licence']}")
        print(f"    source: {e['source']}")
    print("\nLoad with msfusion.create_model(MODEL, pretrained=NAME) (or pretrained=True for the first of a model).")
    return 0


def _paper(published: float | None, printed: float | None) -> str:
    if published is None:
        return "-"
    if printed is not None and printed != published:
        return f"{printed:g} (code {published:g})"
    return f"{published:g}"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"
