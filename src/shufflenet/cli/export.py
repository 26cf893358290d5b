"""``shufflenet export``: a checkpoint to ONNX, TorchScript, ncnn, TFLite or Core ML, with preprocessing inside."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from shufflenet import deploy
from shufflenet.checkpoints import load_model
from shufflenet.cli.common import WEIGHTS_BY_NAME, add_model_option, resolve_weights
from shufflenet.cli.evaluate import add_eval_crop_option, apply_eval_crop
from shufflenet.deploy.calibration import CALIBRATION_SIZE


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    parser = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX, TorchScript, ncnn, TFLite or Core ML",
        description="Export one of our checkpoints (BatchNorm folded) with its class names and preprocessing "
        "in the file's metadata. ONNX, ncnn and TFLite exports are checked against PyTorch in their runtime "
        "(onnxruntime, ncnn, LiteRT) when it is installed; Core ML runs only on Apple platforms.",
    )
    parser.add_argument(
        "--weights", required=True, metavar="FILE", help=f"checkpoint written by shufflenet (.pt), {WEIGHTS_BY_NAME}"
    )
    add_model_option(parser)
    parser.add_argument("--format", required=True, choices=FORMATS, help="output format")
    parser.add_argument(
        "--out", required=True, metavar="PATH", help="output file (.onnx, .pt, .tflite), folder (ncnn) or .mlpackage"
    )
    parser.add_argument("--dynamic-batch", action="store_true", help="ONNX: symbolic batch dimension")
    parser.add_argument("--img-size", type=int, help="input size (default: the checkpoint's crop size)")
    parser.add_argument(
        "--transpose-shuffle",
        action="store_true",
        help="ONNX, v2: export each unit's concat + shuffle as the paper writes it (Concat, Reshape -> Transpose "
        "-> Reshape) instead of one interleaving Concat (same values; the default runs faster in OpenVINO)",
    )
    add_eval_crop_option(parser)
    parser.add_argument(
        "--precision", choices=["fp32", "int8"], default="fp32", help="tflite: int8 = static int8 (needs --calibration)"
    )
    parser.add_argument(
        "--calibration",
        metavar="DIR",
        help=f"int8: folder of your training images (a stratified sample of {CALIBRATION_SIZE}, as quantize takes)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="skip the check against PyTorch (onnxruntime, TorchScript, ncnn or LiteRT; without it a file that "
        "disagrees beyond the tolerance is not written and the command fails)",
    )
    parser.set_defaults(func=run)


FORMATS = ["onnx", "torchscript", "ncnn", "tflite", "coreml"]


def run(args: argparse.Namespace) -> int:
    """Export, verify and print a one-paragraph summary."""
    model = load_model(resolve_weights(args.weights, args.model))
    apply_eval_crop(model, args.eval_crop)
    if args.img_size is not None and args.img_size < 32:
        raise ValueError(f"--img-size must be at least 32, got {args.img_size}")
    if args.precision == "int8" and args.format != "tflite":
        raise ValueError(
            f"--precision int8 is written for --format tflite; {args.format} exports fp32 "
            "(ncnn int8 needs ncnn2table/ncnn2int8, which PyPI's ncnn does not ship)"
        )
    if args.format in ("ncnn", "tflite", "coreml"):
        return _run_mobile(args, model)
    if args.format == "onnx":
        path = deploy.export_onnx(
            model,
            args.out,
            img_size=args.img_size,
            dynamic_batch=args.dynamic_batch,
            overwrite=args.overwrite,
            fuse_shuffle=not args.transpose_shuffle,
            verify_export=not args.no_verify,
        )
        verification = deploy.read_onnx_metadata(path).get("verification")
    else:
        path = deploy.export_torchscript(
            model, args.out, img_size=args.img_size, overwrite=args.overwrite, verify_export=not args.no_verify
        )
        verification = deploy.load_torchscript(path)[1].get("verification")
    size = args.img_size or model.preprocessing.crop_size
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB): {model.arch}, {len(model.class_names)} classes")
    print(f"input: float32 (N, 3, {size}, {size}), normalised as the metadata's preprocessing says")
    if verification is not None:
        _print_verification(verification["runtime"], verification)
    elif not args.no_verify:
        print("not verified: install onnxruntime (pip install 'shufflenet[onnx]') to compare the file with PyTorch")
    return 0


def _print_verification(runtime: str, check: dict[str, float]) -> None:
    print(
        f"{runtime} vs PyTorch: max abs diff {check['max_abs_diff']:.2e} "
        f"({check['relative_diff']:.1e} of the largest logit), top-1 agreement {check['top1_agreement']:.0%} "
        f"on {check['images']:g} images"
    )


def _run_mobile(args: argparse.Namespace, model: torch.nn.Module) -> int:
    options: dict[str, Any] = {"img_size": args.img_size, "overwrite": args.overwrite}
    if args.format == "ncnn":
        from shufflenet.deploy.formats.ncnn import export_ncnn

        result = export_ncnn(model, args.out, verify_export=not args.no_verify, **options)
    elif args.format == "tflite":
        from shufflenet.deploy.formats.litert import export_tflite

        calibration = _calibration_batches(args.calibration, model) if args.precision == "int8" else None
        result = export_tflite(
            model,
            args.out,
            precision=args.precision,
            calibration_data=calibration,
            verify_export=not args.no_verify,
            **options,
        )
    else:
        from shufflenet.deploy.formats.coreml import export_coreml

        result = export_coreml(model, args.out, **options)
    size = sum(f.stat().st_size for f in result.path.rglob("*") if f.is_file()) if result.path.is_dir() else 0
    size = size or result.path.stat().st_size
    print(f"wrote {result.path} ({size / 2**20:.1f} MiB): {model.arch}, {len(model.class_names)} classes")
    if result.verification is not None:
        _print_verification(result.runtime, result.verification)
    if result.note:
        print(result.note)
    return 0


def _calibration_batches(folder: str | None, model: torch.nn.Module) -> list[torch.Tensor]:
    """A seeded, stratified sample of up to ``CALIBRATION_SIZE`` images of ``folder`` (as quantize), preprocessed."""
    from shufflenet.deploy.calibration import folder_samples, load_batches, stratified_sample

    if folder is None:
        raise ValueError("--precision int8 needs --calibration DIR: a folder of your training images")
    return load_batches(stratified_sample(folder_samples(folder), CALIBRATION_SIZE), model.preprocessing)
