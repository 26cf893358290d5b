"""``shufflenet train``: train or fine-tune on an image folder (also under ``torchrun -m shufflenet train``)."""

from __future__ import annotations

import argparse
import os
import sys

from shufflenet.cli.common import WEIGHTS_BY_NAME, resolve_weights, setup_logging
from shufflenet.training import AMP_MODES, OPTIMIZERS, SCHEDULES, TrainConfig
from shufflenet.training.config import AUTO_AUGMENTS, INPUT_PIPELINES
from shufflenet.training.recipes import RECIPES

DEFAULTS = TrainConfig()


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    parser = subparsers.add_parser(
        "train",
        help="train or fine-tune a model on an image folder",
        description="Train or fine-tune on DIR (train/ + val/ class folders, or one class tree split by "
        "--val-split). Writes RUN/config.json, class_indices.json, metrics.csv, best.pt, last.pt, result.png, "
        "confusion_matrix.png, train.log. Under torchrun, runs DistributedDataParallel.",
    )
    d = DEFAULTS
    # Defaults are None here so that a resumed run can tell what was given on the command line.
    parser.add_argument("--data", metavar="DIR", help="image folder (optional with --resume)")
    parser.add_argument("--out", metavar="RUN", required=True, help="run folder")
    parser.add_argument("--model", metavar="NAME", help=f"architecture (default {d.model}; `shufflenet models`)")
    parser.add_argument(
        "--weights", metavar="FILE", help=f"pretrained .pth/.safetensors to start from, {WEIGHTS_BY_NAME}"
    )
    parser.add_argument(
        "--recipe",
        choices=list(RECIPES),
        help="preset of the options below (default: finetune with --weights, scratch without; docs/training.md); "
        "options given explicitly override it",
    )
    parser.add_argument("--freeze-backbone", action="store_true", default=None, help="train the classifier only")
    parser.add_argument(
        "--small-input",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="tiny-image stem for 32-64 px images: conv1 without the max-pool (stride 16, not the paper's 32; "
        "docs/training.md)",
    )
    _add_optimization_options(parser.add_argument_group("optimization"))
    _add_augmentation_options(parser.add_argument_group("images and augmentation"))
    _add_machine_options(parser.add_argument_group("machine"))
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        choices=["auto"],
        default=None,
        help="continue RUN from RUN/last.pt; `--resume auto`: continue when RUN/last.pt holds this run's options, "
        "else start (under torchrun a restarted worker does this by itself)",
    )
    parser.add_argument("--overwrite", action="store_true", default=None, help="replace the files of an existing RUN")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, warnings and errors only")
    parser.set_defaults(func=run)


def _add_optimization_options(parser: argparse._ArgumentGroup) -> None:
    d = DEFAULTS
    parser.add_argument("--epochs", type=int, help="total epochs (recipe's)")
    parser.add_argument(
        "--time-budget",
        type=float,
        metavar="MINUTES",
        help="fit the epochs to this wall-clock budget from the measured speed of a few steps (instead of --epochs)",
    )
    parser.add_argument("--batch-size", type=int, help="images per step and process (recipe's)")
    parser.add_argument("--lr", type=float, help="learning rate (recipe's)")
    parser.add_argument("--optimizer", choices=OPTIMIZERS, help="recipe's")
    parser.add_argument("--weight-decay", type=float, help="recipe's; never on BatchNorm or biases")
    parser.add_argument("--momentum", type=float, help=f"SGD momentum (default {d.momentum})")
    parser.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule (recipe's)")
    parser.add_argument("--warmup-epochs", type=float, help="linear warm-up length (recipe's)")
    parser.add_argument("--label-smoothing", type=float, help="recipe's")
    parser.add_argument(
        "--ema-epochs", type=float, help="EMA of the weights with this time constant (recipe's; 0 off): best_ema.pt"
    )
    parser.add_argument("--seed", type=int, help=f"random seed (default {d.seed})")


def _add_augmentation_options(parser: argparse._ArgumentGroup) -> None:
    d = DEFAULTS
    parser.add_argument(
        "--img-size", type=int, help=f"training crop size S (default: scratch fits it to the images, else {d.img_size})"
    )
    parser.add_argument("--eval-size", type=int, help="validation crop size (default: S)")
    parser.add_argument(
        "--eval-crop", type=float, metavar="PCT", help="validation keeps PCT of the resized image (crop_pct; recipe's)"
    )
    parser.add_argument("--crop-scale", type=float, help="smallest RandomResizedCrop area (recipe's)")
    parser.add_argument(
        "--pad-crop",
        type=int,
        metavar="PX",
        help="pad the whole image by PX pixels and crop it back at random, instead of RandomResizedCrop "
        "(recipe's: the small-image practice where measured better; 0 off)",
    )
    parser.add_argument(
        "--auto-augment", choices=[*AUTO_AUGMENTS, "none"], help="TrivialAugmentWide, RandAugment or none (recipe's)"
    )
    parser.add_argument("--random-erase", type=float, metavar="P", help="RandomErasing probability (recipe's)")
    parser.add_argument("--mixup-alpha", type=float, help="MixUp on batches (recipe's; 0 off)")
    parser.add_argument("--cutmix-alpha", type=float, help="CutMix on batches (recipe's; 0 off)")
    parser.add_argument(
        "--hflip", action=argparse.BooleanOptionalAction, default=None, help="random horizontal flips (recipe's)"
    )
    parser.add_argument(
        "--val-split", type=float, help=f"validation fraction for one-tree data (default {d.val_split})"
    )


def _add_machine_options(parser: argparse._ArgumentGroup) -> None:
    parser.add_argument("--device", help="auto (default: cuda, mps, cpu), cpu, cuda, cuda:N, mps")
    parser.add_argument(
        "--amp", choices=AMP_MODES, help="autocast dtype (default auto: bf16 on CUDA GPUs, off elsewhere)"
    )
    parser.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="NHWC memory format (default: on for CPU and CUDA)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="DataLoader processes per training process (under torchrun: per rank). Default on CPU: none when the "
        "images are cached in memory (--cache-images), else a quarter of the cores, rounded down; on a GPU: "
        "cores-1, at least 1 and at most 8. May change on --resume",
    )
    parser.add_argument(
        "--threads", type=int, help="PyTorch CPU threads (default: one per core; 1 is faster on a busy machine)"
    )
    parser.add_argument(
        "--sync-bn", action="store_true", default=None, help="under torchrun on GPUs: BatchNorm over the global batch"
    )
    parser.add_argument(
        "--check-every",
        type=int,
        metavar="N",
        help="steps between the processes' stop/NaN checks, one host sync each (default: 1 on CPU, 16 on GPUs)",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=int,
        metavar="STEPS",
        help="also save RUN/last.pt every STEPS steps mid-epoch, bounding the work a killed process loses "
        "(default: at epoch ends only)",
    )
    parser.add_argument(
        "--max-bad-images",
        type=float,
        metavar="FRACTION",
        help=f"images are not decoded before training; an unreadable one is replaced by the next readable file "
        f"and listed in RUN/bad_images.txt; stop when more than FRACTION of them are bad (default "
        f"{DEFAULTS.max_bad_images}; `shufflenet verify-data DIR` checks a tree beforehand)",
    )
    parser.add_argument(
        "--cache-images",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep decoded, resized images in memory (default: when they fit in 2 GiB)",
    )
    parser.add_argument(
        "--input-pipeline",
        choices=INPUT_PIPELINES,
        help="where images are prepared: workers (default: decode, crop, flip in the loader workers), device "
        "(workers decode and crop, the device flips and normalises), gpu-decode (CUDA: workers read bytes, "
        "the GPU decodes JPEGs with nvJPEG, crops, resizes, flips)",
    )
    parser.add_argument(
        "--compile", action="store_true", default=None, help="torch.compile the model for the training steps"
    )


def options_from_args(args: argparse.Namespace) -> dict[str, object]:
    """The TrainConfig options given on the command line (omitted ones keep defaults or the resumed run's)."""
    names = [f for f in TrainConfig.__dataclass_fields__ if f != "progress"]
    options = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    if options.get("auto_augment") == "none":
        options["auto_augment"] = None  # given, so it overrides the recipe's
    options["progress"] = not args.quiet and sys.stderr.isatty()
    return options


def run(args: argparse.Namespace) -> int:
    """Train, then print where the results are."""
    from shufflenet.training import train

    setup_logging(args.quiet)
    args.weights = resolve_weights(args.weights, args.model, DEFAULTS.model)
    result = train(**options_from_args(args))
    if int(os.environ.get("RANK", "0")) != 0:
        return 0 if result.stopped is None else 1
    if result.stopped:
        print(f"shufflenet train: {result.message}", file=sys.stderr)
        return 130 if result.stopped == "interrupted" else 1
    last = result.last
    print(
        f"{len(result.history)} epochs: val acc {last.get('val_acc', 0):.4f} (best {result.best_val_acc:.4f} at "
        f"epoch {result.best_epoch}); run folder {result.run_dir}"
    )
    return 0
