"""``shufflenet bench``: every inference backend/precision side by side with torchvision eager."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from torch import nn

from shufflenet import bench, deploy
from shufflenet.checkpoints import CHECKPOINT_FORMAT, load_model, read_file
from shufflenet.cli.common import WEIGHTS_BY_NAME, format_table, resolve_weights, write_json
from shufflenet.cli.evaluate import is_exported_file
from shufflenet.models import create_model, list_models


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,8,32, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {text!r}")
    return values


def _str_list(valid: tuple[str, ...]) -> object:
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in valid]
        if bad or not values:
            raise argparse.ArgumentTypeError(f"unknown value(s) {bad or text!r}; valid: {','.join(valid)}")
        return values

    return parse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    parser = subparsers.add_parser(
        "bench",
        help="latency/throughput/memory of every inference backend vs torchvision",
        description="Time every available backend and precision in this process, interleaved, beside "
        "torchvision's eager ShuffleNetV2 (v2) or our eager model (v1). Prints a table; JSON and PNG optional.",
    )
    parser.add_argument(
        "--model",
        help="registered model name (see `shufflenet models`); with --weights naming its architecture (our "
        "checkpoint, an .onnx/.xml file) it may be left out, and must match",
    )
    parser.add_argument(
        "--weights",
        metavar="FILE",
        help="checkpoint to load (default: random weights), or an int8/exported .onnx or OpenVINO .xml to time "
        f"beside the fp32 runtimes of its checkpoint, {WEIGHTS_BY_NAME}",
    )
    parser.add_argument(
        "--reference",
        metavar="CHECKPOINT",
        help="with an .onnx/.xml --weights: the fp32 checkpoint it was made from (default: the one its metadata names)",
    )
    parser.add_argument("--batch-sizes", type=_int_list, default=[1, 8, 32], help="e.g. 1,8,32 (default)")
    parser.add_argument(
        "--img-size", type=int, help="input height and width (default 224; an .onnx/.xml file: its input size)"
    )
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for every backend (default 2)")
    parser.add_argument("--backends", type=_str_list(deploy.BACKENDS), help="subset, e.g. torch,onnxruntime")
    parser.add_argument("--precisions", type=_str_list(deploy.PRECISIONS), help="subset, e.g. fp32,int8")
    parser.add_argument("--time", type=float, default=2.0, help="seconds of timing per candidate and batch size")
    parser.add_argument("--torch-compile", action="store_true", help="also time torch.compile (slow to build)")
    parser.add_argument("--json", metavar="FILE", help="write rows and machine info as JSON ('-' for stdout)")
    parser.add_argument("--plot", metavar="FILE.png", help="write a bar chart of throughput")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.set_defaults(func=run)


def _load_file(args: argparse.Namespace, meta: dict) -> tuple[nn.Module, dict[str, deploy.CompiledModel]]:
    """An exported / int8 file's runner, and the fp32 checkpoint it was made from as the model to compare."""
    reference = args.reference or meta.get("source_checkpoint")
    if reference is None:
        raise ValueError(
            f"{args.weights} does not name the checkpoint it was made from; give it with --reference CHECKPOINT"
        )
    if not Path(reference).is_file():
        raise FileNotFoundError(
            f"{reference} (the fp32 checkpoint of {args.weights}) does not exist; give it with --reference CHECKPOINT"
        )
    model = load_model(reference)
    if meta.get("arch") not in (None, model.arch):
        raise ValueError(f"{args.weights} holds a {meta['arch']} but {reference} a {model.arch}; fix --reference")
    runner = deploy.load_onnx(args.weights, "auto", threads=args.threads)
    return model, {f"{runner.backend} {runner.precision} ({Path(args.weights).name})": runner}


def _print_file_accuracy(meta: dict) -> None:
    accuracy = meta.get("int8_accuracy")
    print(
        f"note: max|diff| and top-1 agree compare logits on random pixels; an int8 file calibrated on real images "
        f"clips such noise, so its agreement there says little{'' if accuracy else '.'}"
        + (
            f": on {accuracy['val_images']} validation images (its metadata) top-1 was int8 "
            f"{accuracy['int8_top1']:.4f} vs fp32 {accuracy['fp32_top1']:.4f}"
            if accuracy
            else ""
        )
    )


def _check_model_option(args: argparse.Namespace, held: str | None) -> None:
    # A checkpoint of ours or an exported file names its architecture: a --model that disagrees is a mistake
    # (the wrong file, or the wrong name), never a request to time another model.
    if args.model and held and args.model != held:
        raise ValueError(f"--model {args.model} but {args.weights} holds a {held}; drop --model or fix it")


def _load(args: argparse.Namespace) -> tuple[nn.Module, str]:
    if args.weights is None:
        if not args.model:
            raise ValueError("give --model NAME (and optionally --weights FILE)")
        return create_model(args.model).eval(), args.model
    raw = read_file(args.weights)
    if raw.get("format") == CHECKPOINT_FORMAT:
        model = load_model(args.weights)
        _check_model_option(args, model.arch)
        return model, model.arch
    if not args.model:
        raise ValueError(f"{args.weights} is a plain state_dict; say which architecture with --model NAME")
    return create_model(args.model, weights=args.weights).eval(), args.model


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print the table."""
    if args.model and args.model not in list_models():
        create_model(args.model)  # raises the registry's "unknown model" error with suggestions
    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    args.weights = resolve_weights(args.weights, args.model)
    files, meta = {}, {}
    if args.weights is not None and is_exported_file(args.weights):
        meta = deploy.read_onnx_metadata(args.weights)
        _check_model_option(args, meta.get("arch"))  # the file fixes the architecture; say so before loading
        model, files = _load_file(args, meta)
        _check_model_option(args, model.arch)
        # The file's own input size: it may have been exported at another size than its checkpoint's crop.
        size = meta.get("input_size")
        name, args.img_size = model.arch, args.img_size or (size[-1] if size else model.preprocessing.crop_size)
    else:
        model, name = _load(args)
    args.img_size = args.img_size or 224
    progress = None if args.quiet else (lambda text: print(f"[bench] {text}", file=sys.stderr, flush=True))
    result = bench.benchmark(
        model,
        model_name=name,
        batch_sizes=args.batch_sizes,
        img_size=args.img_size,
        threads=args.threads,
        backends=args.backends,
        precisions=args.precisions,
        torch_compile=args.torch_compile,
        min_time_s=args.time,
        progress=progress,
        files=files,
    )
    if args.json:
        write_json(args.json, result.to_dict())
    if args.plot:
        bench.plot(result, args.plot)
    if args.json == "-":  # standard output holds the JSON alone
        if args.plot:
            print(f"wrote {args.plot}", file=sys.stderr)
        return 0
    machine = result.machine
    print(
        f"{name} at {args.img_size}x{args.img_size}, {machine['threads']} threads, {machine['cpu']} "
        f"({machine['logical_cpus']} logical CPUs), load average {machine['load_avg_1_5_15']}"
    )
    features = deploy.cpu_features()
    print(f"CPU features: {deploy.describe_cpu(features)}")
    if not deploy.has_vnni(features):
        print(
            "  no VNNI: int8 uses 7-bit weights and 16-bit pair sums here; expect it little or no faster than fp32 "
            "(notes below the table say what it measured)"
        )
    if not deploy.has_bf16(features):
        print("  no native bf16: bf16 would be emulated, slower than fp32, so it is not benchmarked")
    print(format_table(bench.table_rows(result), bench.TABLE_COLUMNS))
    for note in bench.not_faster_notes(result.rows):
        print(f"note: {note}")
    if files:
        _print_file_accuracy(meta)
    print(f"\nbaseline: {result.settings['baseline']}; median latency over interleaved rounds; p10-p90 is the spread.")
    print("peak +MiB: resident-memory growth during the first run at that batch size (a lower bound).")
    print(
        "others CPU: share of the machine other processes used while a candidate was timed; blocks above 10% "
        "are left out when enough quiet ones remain, else every sample counts and the row is marked (!)."
    )
    for label, why in result.skipped.items():
        print(f"skipped {label}: {why}")
    if args.plot:
        print(f"wrote {args.plot}")
    return 0
