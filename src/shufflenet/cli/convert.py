"""``shufflenet convert``: a megvii or mmpretrain checkpoint -> our self-describing checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from shufflenet.checkpoints import SOURCES, convert_checkpoint, save_checkpoint


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
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Convert IN and write OUT."""
    output = Path(args.output)
    if output.exists() and not args.force:
        raise FileExistsError(f"{output} exists; pass --force to overwrite it")
    if output.suffix not in (".pt", ".pth", ".safetensors"):
        raise ValueError(f"output {output} must end in .pt, .pth or .safetensors")
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
