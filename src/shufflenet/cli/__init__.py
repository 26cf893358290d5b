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
    "verify-data",
    "shards",
    "evaluate",
    "predict",
    "export",
    "quantize",
    "bench",
    "serve",
    "demo",
]

# What bad input raises: the project's errors are ValueErrors (CheckpointError, DeployError, BadImageError), a
# path the user named fails with an OSError below, a missing optional package with an ImportError naming its
# pip extra. Anything else, a TypeError above all, is a bug in shufflenet and keeps its traceback; so does an
# ImportError of shufflenet's own modules.
USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    FileExistsError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    ImportError,
)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="shufflenet", description="ShuffleNet v1/v2: models, training, evaluation and deployment."
    )
    parser.add_argument("--version", action="version", version=f"shufflenet {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"shufflenet.cli.{name.replace('-', '_')}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors (:data:`USER_ERRORS`) print one line (``SHUFFLENET_DEBUG=1`` shows the traceback)."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("shufflenet: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as err:
        own_import = isinstance(err, ImportError) and (err.name or "").split(".")[0] == "shufflenet"
        if own_import or os.environ.get("SHUFFLENET_DEBUG"):
            raise
        print(f"shufflenet {args.command}: error: {err}", file=sys.stderr)
        return 2
