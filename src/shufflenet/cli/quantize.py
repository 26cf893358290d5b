"""``shufflenet quantize``: a checkpoint to an int8 file, calibrated on its training images, accuracy-checked."""

from __future__ import annotations

import argparse

from shufflenet.cli.common import WEIGHTS_BY_NAME, add_model_option
from shufflenet.deploy.calibration import CALIBRATION_SIZE


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    parser = subparsers.add_parser(
        "quantize",
        help="quantize a checkpoint to an int8 file for onnxruntime or openvino",
        description="Post-training static int8 with settings chosen for this CPU (7-bit weights where VNNI is "
        "missing). Calibrates on a seeded, stratified sample of the run's training split (RUN/split.json) and "
        "checks top-1 fp32 vs int8 on the run's validation split; fails when int8 loses more than --max-drop "
        "points. The file loads wherever a checkpoint does (eval, predict, bench --weights).",
    )
    parser.add_argument(
        "--weights",
        required=True,
        metavar="FILE",
        help=f"checkpoint, e.g. RUN/best.pt, {WEIGHTS_BY_NAME} (give --calibration and --val then)",
    )
    add_model_option(parser)
    parser.add_argument("--backend", required=True, choices=["onnxruntime", "openvino"], help="runtime to run it on")
    parser.add_argument(
        "--out",
        required=True,
        metavar="FILE",
        help="int8 file to write: FILE.xml (+ FILE.bin) = OpenVINO IR by NNCF (--backend openvino); FILE.onnx = "
        "ONNX Runtime's quantizer (QOperator for onnxruntime, QDQ for openvino)",
    )
    parser.add_argument("--calibration", metavar="DIR", help="calibrate on these images instead of the train split")
    parser.add_argument(
        "--calibration-size",
        type=int,
        default=CALIBRATION_SIZE,
        help=f"images to calibrate on (default {CALIBRATION_SIZE})",
    )
    parser.add_argument("--val", metavar="DIR", help="class folders for the accuracy check (default: the val split)")
    parser.add_argument("--max-drop", type=float, default=1.0, help="top-1 points int8 may lose (default 1.0)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration sample (default 0)")
    parser.add_argument(
        "--accuracy-control",
        action="store_true",
        help="NNCF returns the layers that cost most accuracy to fp32 until int8 is within --max-drop (.xml only)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Quantize, print the settings and the accuracy check."""
    from shufflenet.cli.common import resolve_weights, setup_logging
    from shufflenet.deploy import quantize_run

    setup_logging()
    result = quantize_run(
        resolve_weights(args.weights, args.model),
        args.backend,
        args.out,
        calibration_dir=args.calibration,
        calibration_size=args.calibration_size,
        val_dir=args.val,
        max_drop=args.max_drop,
        seed=args.seed,
        overwrite=args.overwrite,
        accuracy_control=args.accuracy_control,
    )
    settings = result.settings
    print(f"wrote {result.path}: int8 for {result.backend} ({settings['tool']}, {settings['quant_format']})")
    print(f"settings: {settings['reason']}")
    print(f"calibration: {result.calibration['images']} images, {result.calibration['source']}")
    print(
        f"top-1 on {result.val_images} validation images: fp32 {result.fp32_top1:.4f}, int8 {result.int8_top1:.4f} "
        f"({-result.drop:+.1f} points)" + (f"; {len(result.skipped)} unreadable skipped" if result.skipped else "")
    )
    return 0
