"""``shufflenet export``: a checkpoint to ONNX or TorchScript, with preprocessing and class names inside."""

from __future__ import annotations

import argparse

import torch

from shufflenet import deploy
from shufflenet.cli.evaluate import add_eval_crop_option, apply_eval_crop
from shufflenet.weights import load_model


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    parser = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX or TorchScript",
        description="Export one of our checkpoints (BatchNorm folded) with its class names and preprocessing "
        "in the file's metadata. ONNX files are checked against PyTorch with onnxruntime when it is installed.",
    )
    parser.add_argument("--weights", required=True, metavar="FILE", help="checkpoint written by shufflenet (.pt)")
    parser.add_argument("--format", required=True, choices=["onnx", "torchscript"], help="output format")
    parser.add_argument("--out", required=True, metavar="FILE", help="output file (.onnx / .pt)")
    parser.add_argument("--dynamic-batch", action="store_true", help="ONNX: symbolic batch dimension")
    parser.add_argument("--img-size", type=int, help="input size (default: the checkpoint's crop size)")
    parser.add_argument(
        "--transpose-shuffle",
        action="store_true",
        help="ONNX, v2: export each unit's concat + shuffle as the paper writes it (Concat, Reshape -> Transpose "
        "-> Reshape) instead of one interleaving Concat (same values; the default runs faster in OpenVINO)",
    )
    add_eval_crop_option(parser)
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime-vs-PyTorch check")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export, verify and print a one-paragraph summary."""
    model = load_model(args.weights)
    apply_eval_crop(model, args.eval_crop)
    if args.img_size is not None and args.img_size < 32:
        raise ValueError(f"--img-size must be at least 32, got {args.img_size}")
    if args.format == "onnx":
        path = deploy.export_onnx(
            model,
            args.out,
            img_size=args.img_size,
            dynamic_batch=args.dynamic_batch,
            overwrite=args.overwrite,
            fuse_shuffle=not args.transpose_shuffle,
        )
    else:
        path = deploy.export_torchscript(model, args.out, img_size=args.img_size, overwrite=args.overwrite)
    size = args.img_size or model.preprocessing.crop_size
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB): {model.arch}, {len(model.class_names)} classes")
    print(f"input: float32 (N, 3, {size}, {size}), normalised as the metadata's preprocessing says")
    if args.format == "onnx" and not args.no_verify and deploy.backend_available("onnxruntime"):
        x = torch.randn(2 if args.dynamic_batch else 1, 3, size, size)
        with torch.inference_mode():
            expected = model(x)
        got = deploy.load_onnx(path, "onnxruntime")(x)
        check = deploy.agreement(expected, got)
        print(
            f"onnxruntime vs PyTorch: max abs diff {check['max_abs_diff']:.2e}, "
            f"top-1 agreement {check['top1_agreement']:.0%}"
        )
    return 0
