"""``shufflenet demo``: offline, no arguments. Train, evaluate and predict on scikit-learn's real digits."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from shufflenet.cli.common import write_json

# A small ShuffleNetV2 on 32x32 digit scans: measured in docs/training.md (accuracy and time on 2 CPU cores).
DEMO_OPTIONS = {
    "model": "shufflenet_v2_x0_5",
    "img_size": 32,
    "epochs": 12,
    "batch_size": 64,
    "lr": 3e-3,
    "schedule": "cosine",
    "warmup_epochs": 1.0,
    "crop_scale": 0.6,
    "hflip": False,  # a mirrored 2 or 5 is another symbol
    # At 32 px the ops are too small to gain much from a second thread, and two threads slow down many
    # times over when the machine is busy with anything else (docs/training.md); one keeps the time bounded.
    "threads": 1,
}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    parser = subparsers.add_parser(
        "demo",
        help="train, evaluate and predict on the digits scikit-learn ships (offline)",
        description="Writes the 1,797 handwritten digit scans of scikit-learn as PNG class folders under "
        "OUT/data, trains a small ShuffleNetV2 on them into OUT (the files of any run), evaluates best.pt and "
        "predicts a few validation images (OUT/eval.json, OUT/predictions.png).",
    )
    parser.add_argument(
        "--out",
        default="runs/demo",
        help="demo folder (default runs/demo); an earlier demo there is replaced, any other files need --overwrite",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the run files in --out even when it is not a demo run"
    )
    parser.add_argument("--epochs", type=int, default=DEMO_OPTIONS["epochs"], help="default %(default)s")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo and print what it reached and where the files are."""
    from shufflenet.checkpoints import load_model
    from shufflenet.cli.common import setup_logging
    from shufflenet.data import load_image, make_digits_dataset
    from shufflenet.evaluation import evaluate, load_eval_dataset, predict
    from shufflenet.plots import plot_predictions
    from shufflenet.training import train

    setup_logging(args.quiet)
    started = time.perf_counter()
    out = Path(args.out)
    check_demo_folder(out, args.overwrite)
    data = make_digits_dataset(out / "data", image_size=DEMO_OPTIONS["img_size"], layout="train/val")
    options = {**DEMO_OPTIONS, "epochs": args.epochs}
    # The absolute data path in config.json is how a later demo recognises this run as its own.
    result = train(
        data=str(data.resolve()),
        out=str(out),
        overwrite=True,
        progress=not args.quiet and sys.stderr.isatty(),
        **options,
    )
    if result.stopped:
        print(f"shufflenet demo: {result.message}", file=sys.stderr)
        return 1
    model = load_model(out / "best.pt")
    val_set, _ = load_eval_dataset(data / "val", model.class_names, model.preprocessing)
    evaluation = evaluate(model, val_set, batch_size=256)
    write_json(out / "eval.json", evaluation.to_dict())
    # One validation image per digit, predicted from the files as `shufflenet predict` would.
    firsts: dict[int, Path] = {}
    for path, label in val_set.samples:
        firsts.setdefault(label, path)
    predictions = predict(model, [firsts[label] for label in sorted(firsts)], topk=3).predictions
    plot_predictions(
        [load_image(p.path) for p in predictions],
        [f"{p.path.parent.name} -> {p.label} ({p.probability:.2f})" for p in predictions],
        out / "predictions.png",
        ncols=5,
    )
    seconds = time.perf_counter() - started
    print(
        f"digits demo: validation accuracy {evaluation.top1:.4f} (top-{evaluation.topk} {evaluation.top5:.4f}) on "
        f"{evaluation.num_images} images after {len(result.history)} epochs of {DEMO_OPTIONS['model']}, "
        f"{seconds:.0f} s in all"
    )
    right = sum(p.label == p.path.parent.name for p in predictions)
    print(f"predicted {right}/{len(predictions)} sample digits right: {out / 'predictions.png'}")
    print(f"run folder {out}: metrics.csv, result.png, confusion_matrix.png, best.pt, last.pt, eval.json")
    return 0


def is_demo_run(out: Path) -> bool:
    """Whether ``out`` holds a run the demo trained: config.json records the demo's data (``out/data``) and options."""
    try:
        options = json.loads((out / "config.json").read_text())["options"]
        same_data = Path(options["data"]).resolve() == (out / "data").resolve()
        return same_data and all(options[key] == value for key, value in DEMO_OPTIONS.items() if key != "epochs")
    except (OSError, ValueError, KeyError, TypeError):
        return False  # no config.json, or not one a run wrote


def check_demo_folder(out: Path, overwrite: bool) -> None:
    """Refuse ``out`` when it holds anything but an earlier demo (whose best.pt/last.pt the demo replaces)."""
    if overwrite or not out.exists() or is_demo_run(out):
        return
    if not out.is_dir():
        raise FileExistsError(f"--out {out} exists and is not a folder; pass another --out")
    others = sorted(p.name for p in out.iterdir() if p.name != "data")  # data/ alone: a demo stopped early
    if others:
        raise FileExistsError(
            f"--out {out} is not a demo run folder (it holds {', '.join(others[:5])}{', ...' if others[5:] else ''})"
            f"; the demo would replace the run files there: pass another --out, or --overwrite to replace them"
        )
