"""``shufflenet verify-data``: decode every image of a folder in parallel and list those that cannot be read."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    parser = subparsers.add_parser(
        "verify-data",
        help="decode every image of a folder once, in parallel, and list the unreadable ones",
        description="Training lists files only and replaces an unreadable image by the next readable one when "
        "it meets it (up to --max-bad-images). This checks a whole tree before a long run instead. Exit status 1 "
        "when any file is bad.",
    )
    parser.add_argument("data", metavar="DIR", help="image folder (train/ + val/ or one class tree)")
    parser.add_argument("--workers", type=int, metavar="N", help="decoding processes (default: one per core)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Check the tree and print one line per bad file and a summary."""
    from shufflenet.data.verify import verify_tree

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    report = verify_tree(args.data, args.workers)
    if args.json:
        bad = [{"path": str(p), "reason": r} for p, r in report.bad]
        print(json.dumps({"root": str(report.root), "images": report.images, "bad": bad}, indent=1))
    else:
        for path, reason in report.bad:
            print(f"{path}: {reason}")
        rate = report.images / max(report.seconds, 1e-9)
        print(
            f"{report.images} images in {report.root}: {len(report.bad)} unreadable; "
            f"{report.seconds:.1f} s with {report.workers} processes ({rate:.0f} images/s)",
            file=sys.stderr if report.bad else sys.stdout,
        )
    return 1 if report.bad else 0
