"""``shufflenet predict``: top-k classes with probabilities for images or folders, optionally as a figure."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor, nn

from shufflenet.cli.common import WEIGHTS_BY_NAME, add_model_option, resolve_weights, write_json
from shufflenet.cli.evaluate import (
    add_inference_options,
    apply_eval_crop,
    inference_device,
    inference_function,
    load_weights,
)

MAX_FIGURE_IMAGES = 64


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    parser = subparsers.add_parser(
        "predict",
        help="classify images with a checkpoint",
        description="Print the top-k classes with probabilities for each image (folders are searched).",
    )
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders")
    parser.add_argument(
        "--weights",
        metavar="FILE",
        required=True,
        help=f"checkpoint (RUN/best.pt), exported/int8 .onnx file or int8 OpenVINO .xml, {WEIGHTS_BY_NAME}",
    )
    add_model_option(parser)
    parser.add_argument("--topk", type=int, default=5, help="classes per image (default 5)")
    parser.add_argument("--json", metavar="FILE", help="write the predictions as JSON ('-' for stdout)")
    parser.add_argument(
        "--save-figure",
        metavar="FILE",
        help=f"picture(s) titled with class and probability (first {MAX_FIGURE_IMAGES})",
    )
    add_inference_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Predict and print one line per image."""
    from shufflenet.cli.common import setup_logging
    from shufflenet.data import list_image_paths, load_image
    from shufflenet.evaluation import predict

    setup_logging()
    weights = resolve_weights(args.weights, args.model)
    device = inference_device(args.device, weights, args.backend, args.precision)
    model = load_weights(weights, args.backend, args.precision, device)
    apply_eval_crop(model, args.eval_crop)
    paths = list_image_paths(args.paths)
    batches = _batches(paths, model, args.batch_size)
    function = inference_function(model, args.backend, args.precision, batches, weights=weights)
    result = predict(
        function,
        paths,
        class_names=model.class_names,
        preprocessing=model.preprocessing,
        topk=args.topk,
        batch_size=args.batch_size,
        device=device,
    )
    if args.json:
        write_json(
            args.json,
            {
                "weights": str(weights),
                "predictions": [p.to_dict() for p in result.predictions],
                "skipped": [[str(p), r] for p, r in result.skipped],
            },
        )
    if args.json != "-":
        for prediction in result.predictions:
            classes = "  ".join(f"{name} {prob:.3f}" for name, prob in prediction.topk)
            print(f"{prediction.path}  {classes}")
    if args.save_figure and result.predictions:
        from shufflenet.plots import plot_predictions

        shown = result.predictions[:MAX_FIGURE_IMAGES]
        images = [load_image(p.path) for p in shown]
        titles = [f"{p.label} {p.probability:.2f}" for p in shown]
        plot_predictions(images, titles, args.save_figure)
        if args.json != "-":
            print(
                f"figure: {args.save_figure}", file=sys.stderr if len(shown) < len(result.predictions) else sys.stdout
            )
    if not result.predictions:
        raise ValueError(f"none of the {len(paths)} image file(s) could be read (the skipped list above says why)")
    return 0


def _batches(paths: list[Path], model: nn.Module, batch_size: int) -> Iterator[Tensor]:
    """Batches of the images to predict, for compiling (example input, int8 calibration)."""
    from shufflenet.data import BadImageError, load_image

    transform = model.preprocessing.eval_transform()
    batch = []
    for path in paths:
        try:
            batch.append(transform(load_image(path)))
        except BadImageError:
            continue
        if len(batch) == min(batch_size, 8):
            yield torch.stack(batch)
            batch = []
    if batch:
        yield torch.stack(batch)
