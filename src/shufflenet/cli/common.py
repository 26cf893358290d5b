"""Small helpers shared by the subcommands: tables, JSON output, logging and ``--weights`` by name."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shufflenet.fileio import write_text_atomic

# The end of every --weights help text: the publishers' names work wherever a checkpoint file does.
WEIGHTS_BY_NAME = "or torchvision / mmpretrain: --model's published ImageNet weights (downloaded, cached)"


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """Render ``rows`` as an aligned text table; ``columns`` are (key, header) pairs."""

    def cell(value: Any) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:,.2f}"
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,}"
        return str(value)

    cells = [[cell(row.get(key)) for key, _ in columns] for row in rows]
    headers = [header for _, header in columns]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = [
        "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=True)))
    ]
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append(
            "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
        )
    return "\n".join(lines)


def write_json(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON ('-' means standard output); the folder is created, the write atomic."""
    text = json.dumps(data, indent=2, default=str)
    if str(path) == "-":
        print(text)
    else:
        write_text_atomic(path, text + "\n")


def setup_logging(quiet: bool = False) -> None:
    """Send the package's log records to stderr: INFO (WARNING when quiet, or on torchrun ranks other than 0).

    Each call replaces the handler an earlier call installed, so the current ``sys.stderr`` and ``quiet``
    apply when several commands run in one process.
    """
    logger = logging.getLogger("shufflenet")
    for old in [h for h in logger.handlers if getattr(h, "_shufflenet_cli", False)]:
        logger.removeHandler(old)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    other_rank = int(os.environ.get("RANK", "0")) != 0
    handler.setLevel(logging.WARNING if quiet or other_rank else logging.INFO)
    handler._shufflenet_cli = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def add_model_option(parser: argparse.ArgumentParser) -> None:
    """``--model``, for commands that otherwise read the architecture from the checkpoint file."""
    parser.add_argument(
        "--model", metavar="NAME", help="with --weights torchvision|mmpretrain: which model, e.g. shufflenet_v2_x1_0"
    )


def resolve_weights(weights: str | None, model: str | None, default_model: str | None = None) -> str | None:
    """``--weights`` as a file: a publisher's name (torchvision, mmpretrain) becomes its published weights of
    ``model`` as our checkpoint, downloaded, hash-checked and cached; a path (or None) comes back unchanged."""
    from shufflenet.checkpoints import is_weights_name, pretrained_checkpoint

    if not is_weights_name(weights):
        return weights
    model = model or default_model
    if not model:
        raise ValueError(f"--weights {weights} needs --model NAME: which model's published weights to use")
    return str(pretrained_checkpoint(model, weights, progress=sys.stderr.isatty()))
