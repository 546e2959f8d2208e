"""The ``msfusion`` command line. Each sub-command is one module in ``msfusion.commands``.

A command module defines ``HELP`` (its one-line summary), optionally
``DESCRIPTION`` (the paragraph of ``msfusion COMMAND --help``),
``add_arguments(parser)`` and ``run(args) -> int``; this file makes one
sub-parser per command and dispatches to its ``run``, and commands call the
public API. Errors a user can fix (bad input, a checkpoint that does not fit,
a full disk) end in one ``msfusion <command>: error: ...`` paragraph and a
non-zero exit status, never in a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from msfusion.checkpoint import CheckpointError

__all__ = ["main", "COMMANDS"]

# Sub-command name -> module in msfusion.commands.
COMMANDS = {
    "models": "models",
    "flops": "flops",
    "bench": "bench",
    "train": "train",
    "eval": "evaluate",
    "predict": "predict",
    "export": "export",
    "demo": "demo",
    "gradmap": "gradmap",
    "erf": "erf",
    "heatmap": "heatmap",
    "effects": "effects",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="msfusion", description="Multi-scale feature fusion models: build, count, train, evaluate, export."
    )
    from msfusion.version import __version__

    parser.add_argument("--version", action="version", version=f"msfusion {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module in COMMANDS.items():
        try:
            mod = importlib.import_module(f"msfusion.commands.{module}")
        except ModuleNotFoundError as err:
            if err.name == f"msfusion.commands.{module}":
                continue  # a command not part of this build
            raise
        p = sub.add_parser(name, help=mod.HELP, description=getattr(mod, "DESCRIPTION", None))
        mod.add_arguments(p)
        p.set_defaults(func=mod.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (CheckpointError, FloatingPointError) as err:
        print(f"msfusion {args.command}: error: {err}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as err:
        print(f"msfusion {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        # Permissions, a full disk, a path that is a file: the system's reason names the path.
        print(f"msfusion {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
