"""``shufflenet eval``: accuracy, per-class precision/recall and confusion matrix of a checkpoint on a folder."""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import Tensor, nn

from shufflenet import deploy
from shufflenet.cli.common import WEIGHTS_BY_NAME, add_model_option, format_table, resolve_weights, write_json

BACKENDS = (*deploy.BACKENDS, "auto")
PRECISIONS = ("fp32", "bf16", "int8")


def add_inference_options(parser: argparse.ArgumentParser) -> None:
    """The options eval and predict share: device, batch size, inference backend and precision."""
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (default: cuda, mps, cpu), cpu, cuda, cuda:N, mps; plain PyTorch only: --backend, --precision and "
        "exported files run on the CPU",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        help="run through shufflenet.deploy.compile_for_inference with this backend (default: plain PyTorch)",
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="fp32 (default), bf16 or int8, through shufflenet.deploy (--backend, default auto); int8 of a checkpoint "
        "calibrates on its run's training split",
    )
    add_eval_crop_option(parser)


def add_eval_crop_option(parser: argparse.ArgumentParser) -> None:
    """``--eval-crop``: override the checkpoint's eval crop (crop_pct) for eval, predict and export."""
    parser.add_argument(
        "--eval-crop",
        type=float,
        metavar="PCT",
        help="fraction of the resized image the centre crop keeps (default: the checkpoint's; 1.0 = whole "
        "shorter side, 0.875 = ImageNet's 224 of 256)",
    )


def apply_eval_crop(model: nn.Module | Callable, eval_crop: float | None) -> None:
    """Give ``model.preprocessing`` the eval crop asked for on the command line (None: keep the checkpoint's)."""
    if eval_crop is None:
        return
    if getattr(model, "preprocessing", None) is None:
        raise ValueError("--eval-crop: these weights carry no preprocessing to change; pass a checkpoint instead")
    model.preprocessing = model.preprocessing.with_crop_pct(eval_crop)


def inference_function(
    model: nn.Module,
    backend: str | None,
    precision: str | None,
    batches: Iterable[Tensor],
    weights: str | Path | None = None,
) -> Callable[[Tensor], Tensor]:
    """``model`` itself, or (when a backend or precision is asked for) its compiled form from shufflenet.deploy.

    ``batches`` gives an example input. Int8 calibrates on a seeded, stratified sample of the training
    split of the run that wrote ``weights`` (never on the images being evaluated); without a run folder,
    make an int8 file with ``shufflenet quantize`` and pass it as ``--weights``.
    """
    if not isinstance(model, nn.Module) or (backend is None and precision is None):
        return model  # an exported file's runner, or plain PyTorch
    from shufflenet.deploy import compile_for_inference

    samples = list(itertools.islice(batches, 1))
    if not samples:
        raise ValueError("no images to compile the model with")
    calibration = None
    if precision == "int8":
        from shufflenet.deploy.calibration import CALIBRATION_SIZE, load_batches, run_split, stratified_sample

        if weights is None:
            raise ValueError(
                "int8 needs the checkpoint's run folder (split.json) or an int8 file from `shufflenet quantize`"
            )
        calibration = load_batches(stratified_sample(run_split(weights)[1], CALIBRATION_SIZE), model.preprocessing)
    return compile_for_inference(
        model.cpu(),
        backend=backend or "auto",
        precision=precision or "fp32",
        example_input=samples[0],
        calibration_data=calibration,
    )


def inference_device(device: str, weights: str | Path, backend: str | None, precision: str | None) -> torch.device:
    """``--device`` for plain PyTorch; the CPU through shufflenet.deploy, whose backends and exported files run there.

    A device other than the CPU asked for alongside them is an error rather than silently ignored.
    """
    from shufflenet.devices import resolve_device

    if backend is None and precision is None and not is_exported_file(weights):
        return resolve_device(device)
    if device.split(":")[0] not in ("auto", "cpu"):
        asked = [f"--backend {backend}" if backend else "", f"--precision {precision}" if precision else ""]
        what = " ".join(filter(None, asked)) or f"the exported file {weights}"
        raise ValueError(
            f"--device {device}: {what} runs on the CPU (shufflenet.deploy); leave out --device, or run plain "
            f"PyTorch on {device} with a checkpoint and without --backend/--precision"
        )
    return torch.device("cpu")


def is_exported_file(path: str | Path) -> bool:
    """Whether ``path`` names an exported .onnx file or OpenVINO .xml (int8 too) rather than a checkpoint."""
    return Path(path).suffix in (".onnx", ".xml")


def load_weights(
    path: str | Path, backend: str | None, precision: str | None, device: torch.device
) -> nn.Module | Callable:
    """A checkpoint as a model on ``device``, or an exported .onnx file / OpenVINO .xml (int8 too) as its CPU runner.

    An exported file runs in ``precision`` where its runtime can (bf16); int8 needs a file made by
    ``shufflenet quantize`` (calibrated on the run's training images, which an exported file does not name).
    """
    if is_exported_file(path):
        from shufflenet.deploy import compile_for_inference, read_onnx_metadata

        if precision == "int8" and not read_onnx_metadata(path).get("int8"):
            raise ValueError(
                f"--precision int8: {path} is an fp32 file; make an int8 one with `shufflenet quantize --weights "
                f"RUN/best.pt` and pass it as --weights, or pass the checkpoint itself"
            )
        return compile_for_inference(path, backend or "auto", precision or "fp32")
    from shufflenet.checkpoints import load_model

    return load_model(path, device=device)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint on a class-per-folder tree",
        description="Top-1, top-5, per-class precision/recall and the confusion matrix (PNG + JSON) of a "
        "checkpoint on DIR, whose class folders must match the checkpoint's (a train/ + val/ root means val/).",
    )
    parser.add_argument(
        "--weights",
        metavar="FILE",
        required=True,
        help=f"checkpoint (RUN/best.pt), exported/int8 .onnx file or int8 OpenVINO .xml, {WEIGHTS_BY_NAME}",
    )
    add_model_option(parser)
    parser.add_argument("--data", metavar="DIR", required=True, help="class-per-folder image tree")
    parser.add_argument("--json", metavar="FILE", help="write all results as JSON ('-' for stdout)")
    parser.add_argument(
        "--out", metavar="DIR", help="write confusion_matrix.png and .json into DIR (default: no files written)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes that read and decode the images beside this one (default 0: this process does)",
    )
    add_inference_options(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate and print the summary and per-class table."""
    import sys

    from shufflenet.cli.common import setup_logging
    from shufflenet.evaluation import evaluate, load_eval_dataset, write_confusion

    setup_logging(args.quiet)
    weights = resolve_weights(args.weights, args.model)
    device = inference_device(args.device, weights, args.backend, args.precision)
    model = load_weights(weights, args.backend, args.precision, device)
    apply_eval_crop(model, args.eval_crop)
    dataset, skipped = load_eval_dataset(args.data, model.class_names, model.preprocessing)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, num_workers=args.workers)
    function = inference_function(
        model, args.backend, args.precision, (images for images, _ in loader), weights=weights
    )
    result = evaluate(
        function, loader, model.class_names, device=device, progress=not args.quiet and sys.stderr.isatty()
    )
    # Evaluating is a question about the weights: files only go where the user asked (never beside the weights).
    written = write_confusion(result, args.out) if args.out else None
    data = result.to_dict()
    data.update(weights=str(weights), data=str(args.data), skipped=[[str(p), r] for p, r in skipped])
    data.update(
        backend=getattr(function, "backend", args.backend or "torch"),
        precision=getattr(function, "precision", args.precision or "fp32"),
    )
    if args.json:
        write_json(args.json, data)
        if args.json == "-":
            return 0
    print(
        format_table(
            result.per_class,
            [("class", "class"), ("precision", "precision"), ("recall", "recall"), ("support", "images")],
        )
    )
    print(
        f"\ntop-1 {result.top1:.4f}  top-{result.topk} {result.top5:.4f}  loss {result.loss:.4f}  "
        f"on {result.num_images} images" + (f" ({len(skipped)} unreadable skipped)" if skipped else "")
    )
    if written:
        print(f"confusion matrix: {written[0]} and {written[1]}")
    return 0
