"""The ``shufflenet`` command line: argparse subcommands, each a thin call into the library.

Each subcommand lives in its own module here with ``add_parser(subparsers)``, which sets
``func=run`` on its parser; ``run(args) -> int`` calls the library and prints the result.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from shufflenet import __version__

# Subcommand modules, in the order `shufflenet --help` lists them.
SUBCOMMANDS = [
    "models",
    "guidelines",
    "convert",
    "train",
    "evaluate",
    "predict",
    "export",
    "quantize",
    "bench",
    "serve",
    "demo",
]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="shufflenet", description="ShuffleNet v1/v2: models, training, evaluation and deployment."
    )
    parser.add_argument("--version", action="version", version=f"shufflenet {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"shufflenet.cli.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors print one line (``SHUFFLENET_DEBUG=1`` shows the traceback)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("shufflenet: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, NotADirectoryError, ImportError) as err:
        if os.environ.get("SHUFFLENET_DEBUG"):
            raise
        print(f"shufflenet {args.command}: error: {err}", file=sys.stderr)
        return 2
