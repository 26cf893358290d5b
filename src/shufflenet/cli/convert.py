"""``shufflenet convert``: a megvii or mmpretrain checkpoint -> our self-describing checkpoint."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from shufflenet.checkpoints import SOURCES, convert_checkpoint, save_checkpoint
from shufflenet.fileio import check_output_path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    parser = subparsers.add_parser(
        "convert",
        help="convert a megvii/mmpretrain checkpoint to ours (outputs identical)",
        description="Convert another project's ShuffleNet checkpoint into a shufflenet checkpoint that records "
        "the architecture, class names and the source's preprocessing (load it with shufflenet.load_model).",
    )
    parser.add_argument("--from", dest="source", required=True, choices=SOURCES, help="the file's project")
    parser.add_argument(
        "--model", metavar="NAME", help="our model name, e.g. shufflenet_v1_g3_x1_0 (default: inferred from shapes)"
    )
    parser.add_argument("input", metavar="IN", help="the foreign checkpoint (.pth, .pth.tar, .safetensors)")
    parser.add_argument("output", metavar="OUT", help="where to write ours (.pt or .safetensors)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    # The old name, kept working for users' scripts; off the help page, and it says so when used.
    parser.add_argument("--force", action="store_true", help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Convert IN and write OUT."""
    output = Path(args.output)
    if args.force:
        print("shufflenet convert: warning: --force is deprecated; use --overwrite", file=sys.stderr)
    if output.suffix not in (".pt", ".pth", ".safetensors"):
        raise ValueError(f"output {output} must end in .pt, .pth or .safetensors")
    check_output_path(output, overwrite=args.overwrite or args.force)
    checkpoint = convert_checkpoint(args.input, arch=args.model, source=args.source)
    save_checkpoint(output, checkpoint)
    prep = checkpoint["preprocessing"]
    print(f"{args.input}: {checkpoint['converted_from']['format']} -> {output}")
    print(f"  model         {checkpoint['arch']} ({checkpoint['num_classes']} classes)")
    if checkpoint["model_kwargs"]:
        options = ", ".join(f"{k}={v!r}" for k, v in checkpoint["model_kwargs"].items())
        print(f"  model options {options} (recorded; load_model applies it)")
    print(
        f"  preprocessing {prep['channel_order']}, pixels 0-{prep['pixel_scale']:g}, mean {prep['mean']}, "
        f"std {prep['std']}, resize {prep['resize_size']} crop {prep['crop_size']}"
    )
    print(f"  load with     shufflenet.checkpoints.load_model({str(output)!r})")
    return 0
