"""``shufflenet shards``: an image folder as WebDataset tar shards (train/ + val/) with an index, for streaming."""

from __future__ import annotations

import argparse
import sys


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    parser = subparsers.add_parser(
        "shards",
        help="write an image folder as WebDataset tar shards (train/ + val/, index.json) for train --data SHARDS",
        description="Writes OUT/train/shard-NNNNNN.tar, OUT/val/shard-NNNNNN.tar (KEY.jpg + KEY.cls, WebDataset's "
        "layout, readable by webdataset, timm and OpenCLIP) and OUT/index.json. The split is the one train --data "
        "DIR makes with the same --val-split and --seed (or --split RUN/split.json). Every image is decoded once: "
        "unreadable ones are left out and listed.",
    )
    parser.add_argument("--data", required=True, metavar="DIR", help="image folder (train/ + val/ or one class tree)")
    parser.add_argument("--out", required=True, metavar="SHARDS", help="the shard folder to write")
    parser.add_argument(
        "--shard-size", default="1000", metavar="N|NMB", help="images per shard (1000), or megabytes (256MB)"
    )
    parser.add_argument(
        "--max-size", type=int, metavar="S", help="re-encode images whose shorter side is over S px (JPEG, q=90)"
    )
    parser.add_argument("--val-split", type=float, default=0.2, help="validation fraction of a one-tree folder")
    parser.add_argument("--seed", type=int, default=0, help="the split's seed (train's --seed)")
    parser.add_argument("--split", metavar="FILE", help="a run's split.json: its file lists, exactly")
    parser.add_argument("--workers", type=int, metavar="N", help="encoding processes (default: one per core)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing SHARDS folder")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the shards and print what went where."""
    from shufflenet.cli.common import setup_logging
    from shufflenet.data.shards import parse_shard_size, write_shards

    setup_logging()
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    images, size = parse_shard_size(args.shard_size)
    index = write_shards(
        args.data,
        args.out,
        shard_images=images,
        shard_bytes=size,
        max_size=args.max_size,
        val_split=args.val_split,
        seed=args.seed,
        split_file=args.split,
        overwrite=args.overwrite,
        workers=args.workers,
    )
    for path, reason in index.skipped:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    for split in ("train", "val"):
        print(f"{split}: {index.count(split)} images in {len(index.shards[split])} shards under {index.root / split}")
    print(f"{len(index.class_names)} classes; index {index.root / 'index.json'}; {len(index.skipped)} skipped")
    return 0
