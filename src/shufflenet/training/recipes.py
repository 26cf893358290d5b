"""Training recipes: named sets of :class:`TrainConfig` values, chosen with ``--recipe NAME``.

``finetune`` is the seed's (Adam 1e-4, batch 32, 5 epochs), right for ImageNet weights; ``scratch`` trains
from random initialisation on a few hundred to a few thousand images in minutes on a CPU (found by measuring:
docs/training.md), with its batch size and epochs fitted to the training-set size (:func:`fit_recipe_to_data`);
``megvii`` and ``torchvision`` are the ImageNet recipes of the ShuffleNet V2 paper's code and of torchvision's
classification reference, for GPUs. Without ``--recipe``: ``finetune`` when ``--weights`` is given,
``scratch`` otherwise. Every option given explicitly wins over its recipe value.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Set
from functools import partial
from typing import Any

import torch

from shufflenet.training import budget
from shufflenet.training.config import TrainConfig

__all__ = [
    "BUDGET_RULES",
    "RECIPES",
    "RECIPE_KEYS",
    "SCRATCH_MIN_STEPS",
    "budget_regularisation",
    "epochs_for_minutes",
    "fit_recipe_to_data",
    "fit_run",
    "plan_run",
    "recipe_record",
    "recipe_values",
    "resolve_recipe",
    "size_for_images",
]

# (options, the listed training files, classes, world size) -> the options fitted to them, log lines
FitRun = Callable[[TrainConfig, budget.ImageProbe, int], tuple[TrainConfig, list[str]]]

# The options every recipe sets (so that switching recipes leaves nothing of another behind).
RECIPE_KEYS = (
    "epochs",
    "batch_size",
    "optimizer",
    "lr",
    "weight_decay",
    "schedule",
    "warmup_epochs",
    "label_smoothing",
    "crop_scale",
    "eval_size",
    "eval_crop",
    "auto_augment",
    "random_erase",
    "mixup_alpha",
    "cutmix_alpha",
    "ema_epochs",
)

# scratch on a small training set: a batch of at most 1/8 of it (at least 8 steps per epoch, batch >= 8) and
# at least this many optimizer steps (more epochs); measured on 245 images in docs/training.md.
SCRATCH_MIN_STEPS = 300
SCRATCH_MIN_BATCH = 8
# The only options a recipe fits to the training set (fit_recipe_to_data leaves every other one as resolved).
DATA_KEYS = ("batch_size", "epochs")

_PLAIN = {"auto_augment": None, "random_erase": 0.0, "mixup_alpha": 0.0, "cutmix_alpha": 0.0, "ema_epochs": 0.0}

# Tiny images, up to this crop size: scratch crops them less, and training suggests --small-input (measured at
# 32 px, docs/training.md). The stem stays a choice: by default every recipe builds the papers' network.
TINY_IMAGE_SIZE = 64

RECIPES: dict[str, dict[str, Any]] = {
    # The seed's experiment: fine-tuning ImageNet weights.
    "finetune": {
        **_PLAIN,
        "epochs": 5,
        "batch_size": 32,
        "optimizer": "adam",
        "lr": 1e-4,
        "weight_decay": 0.0,
        "schedule": "constant",
        "warmup_epochs": 0.0,
        "label_smoothing": 0.0,
        "crop_scale": 0.08,
        "eval_size": None,
        "eval_crop": 0.875,
    },
    # Random init, a few thousand images, minutes on a CPU; crop_scale follows img_size
    # (see recipe_values). Measured with benchmarks/recipes.py (docs/training.md).
    "scratch": {
        **_PLAIN,
        "epochs": 15,
        "batch_size": 64,
        "optimizer": "adamw",
        "lr": 4e-3,
        "weight_decay": 0.05,
        "schedule": "cosine",
        "warmup_epochs": 1.0,
        "label_smoothing": 0.1,
        "eval_size": None,
        "eval_crop": 0.875,
    },
    # ShuffleNet V2's ImageNet recipe (megvii/ShuffleNet-Series): SGD lr 0.5 at batch 1024 (scale it as
    # 0.5 x batch/1024), linear decay to 0, weight decay 4e-5 (not on BN or biases), label smoothing 0.1.
    "megvii": {
        **_PLAIN,
        "epochs": 240,
        "batch_size": 1024,
        "optimizer": "sgd",
        "lr": 0.5,
        "weight_decay": 4e-5,
        "schedule": "linear",
        "warmup_epochs": 0.0,
        "label_smoothing": 0.1,
        "crop_scale": 0.08,
        "eval_size": None,
        "eval_crop": 0.875,
    },
    # torchvision's classification reference for shufflenet_v2_x1_5/x2_0 (8 GPUs x batch 128): SGD lr 0.5,
    # cosine after 5 warm-up epochs, 600 epochs, wd 2e-5 (none on norms), label smoothing 0.1,
    # TrivialAugmentWide, random erasing 0.1, mixup 0.2 / cutmix 1.0, EMA, train at 176, evaluate 224 of 232.
    # Not taken: --ra-sampler (repeated augmentation, see docs/training.md).
    "torchvision": {
        "epochs": 600,
        "batch_size": 1024,
        "optimizer": "sgd",
        "lr": 0.5,
        "weight_decay": 2e-5,
        "schedule": "cosine",
        "warmup_epochs": 5.0,
        "label_smoothing": 0.1,
        "crop_scale": 0.08,
        "img_size": 176,
        "eval_size": 224,
        "eval_crop": 224 / 232,
        "auto_augment": "trivialaugment",
        "random_erase": 0.1,
        "mixup_alpha": 0.2,
        "cutmix_alpha": 1.0,
        # torchvision: decay 0.99998 applied every 32 steps, scaled by batch x 32 / epochs -> time constant
        # 1 / (2e-5 x 1024 x 32 / 600) / 32 steps of 1024 images, about 23 epochs of ImageNet.
        "ema_epochs": 23.0,
    },
}

# Size from the images (scratch without --img-size): their median short side to a multiple of IMG_SIZE_STEP,
# within IMG_SIZE_RANGE. Training above the images' own size upsamples them: more pixels, no more detail.
IMG_SIZE_STEP = 32
IMG_SIZE_RANGE = (32, 224)
# Fine-tuning keeps ImageNet's 224 (the weights' scale) and says what it costs when the images' short side is
# below 224 / UPSAMPLE_NOTE.
UPSAMPLE_NOTE = 2.0

# Regularisation from the budget actually given (scratch): the passes over the training set (epochs, whether
# the user fixed them or the recipe did) pick a row; crop_scale is (crops <= TINY_IMAGE_SIZE, larger crops);
# ema_share is the EMA's time constant as a share of the epochs (0: no EMA). "medium" is the scratch recipe as
# measured at 15-19 epochs (docs/training.md); a short budget cannot afford the strong crops, smoothing and decay
# that keep a long one from memorising (issue 23: 6 passes over 6,000 images left training accuracy at 0.75).
# "long" adds only the EMA (it changes no training step); mixup measured no gain at 40 passes. The short row
# reaches to 12 passes: on the digits at 10 passes it beat the medium row by 3.6 points (1 seed). Crops of at
# most 64 px keep 0.6 of the area in every row: 0.35 (or 0.08) cuts the strokes out of a 32-px digit, and
# measured lower at 3, 10 and 40 passes on both digit sets, whatever the smoothing and decay (docs/training.md).
# Larger crops keep 0.35 in the long row: on hymenoptera at 40 passes 0.25 was 3.6 points under 0.35 (both of two
# seeds; 0.08 and 0.6 lower still), the same direction as on the digits (this small model underfits before it
# memorises); the medium row keeps the 0.25 it was measured with at 19 passes. The short row crops 0.6 at every
# size: on hymenoptera at 10 passes 0.6 beat its earlier 0.5 on each of five seeds (0.702 vs 0.664 on average).
BUDGET_RULES: tuple[dict[str, Any], ...] = (
    {
        "budget": "short",
        "up_to_passes": 12,
        "crop_scale": (0.6, 0.6),
        "label_smoothing": 0.0,
        "weight_decay": 0.01,
        "mixup_alpha": 0.0,
        "cutmix_alpha": 0.0,
        "ema_share": 0.0,
    },
    {
        "budget": "medium",
        "up_to_passes": 25,
        "crop_scale": (0.6, 0.25),
        "label_smoothing": 0.1,
        "weight_decay": 0.05,
        "mixup_alpha": 0.0,
        "cutmix_alpha": 0.0,
        "ema_share": 0.0,
    },
    {
        "budget": "long",
        "up_to_passes": math.inf,
        "crop_scale": (0.6, 0.35),
        "label_smoothing": 0.1,
        "weight_decay": 0.05,
        "mixup_alpha": 0.0,
        "cutmix_alpha": 0.0,
        "ema_share": 0.1,
    },
)
# Images per class move the row: a small set is memorised sooner (one row stronger), a large one regularises
# itself (one row lighter).
FEW_IMAGES_PER_CLASS = 100
MANY_IMAGES_PER_CLASS = 1000
# Flips at <= TINY_IMAGE_SIZE px. The only small real images here are digits (sklearn's, MNIST), where a mirrored
# 2 or 5 is another symbol or none, and flips cost 9-27 points (docs/training.md); whether a user's small
# images are symbols or photos cannot be told from them, and the loss on symbols is far larger than what flips
# add on small photos, so they are off (--hflip turns them on). Larger images (photos) keep them.
TINY_IMAGE_FLIP = False
# Why scratch keeps RandomResizedCrop at <= TINY_IMAGE_SIZE px rather than the small-image practice (--pad-crop
# with whole-image evaluation): measured below it at every budget on both digit sets (docs/training.md).
TINY_IMAGE_CROP = (
    "RandomResizedCrop: the small-image practice (--pad-crop, evaluated whole) measured lower on both digit "
    "sets, by 15-17 points at 3 passes, 3-5 at 10 and 0.3 at 40"
)
# --time-budget: the model steps' measured time times this is an epoch (validation, data loading, checkpoints),
# and the epochs fill at most this share of the minutes given.
EPOCH_OVERHEAD = 1.3
TIME_BUDGET_SHARE = 0.9


def recipe_values(
    name: str,
    img_size: int,
    train_images: int | None = None,
    world_size: int = 1,
    batch_size: int | None = None,
    epochs: int | None = None,
    num_classes: int | None = None,
) -> dict[str, Any]:
    """The options recipe ``name`` sets, for ``img_size``-pixel crops and (when known) ``train_images`` training
    images of ``num_classes`` classes split over ``world_size`` processes, trained at ``batch_size`` (default:
    the recipe's) for ``epochs`` (default: the recipe's)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    values = dict(RECIPES[name])
    if name == "scratch":
        values.update(_scratch_for_size(img_size))
        if train_images:
            values.update(_scratch_for_data(train_images, world_size, batch_size))
        if train_images and num_classes:
            passes = epochs or values["epochs"]
            values.update(budget_regularisation(passes, train_images / num_classes, img_size)[0])
    return values


def size_for_images(short_side: float) -> int:
    """The crop size for images of this (median) short side: a multiple of IMG_SIZE_STEP within IMG_SIZE_RANGE."""
    rounded = IMG_SIZE_STEP * round(short_side / IMG_SIZE_STEP)
    return min(max(rounded, IMG_SIZE_RANGE[0]), IMG_SIZE_RANGE[1])


def budget_regularisation(passes: int, images_per_class: float, img_size: int) -> tuple[dict[str, Any], dict[str, str]]:
    """RandomResizedCrop's scale, flips at small sizes, label smoothing, weight decay, mixup/cutmix and EMA for
    ``passes`` epochs over ``images_per_class`` images per class (BUDGET_RULES), and the reason for each."""
    row = next(i for i, rule in enumerate(BUDGET_RULES) if passes <= rule["up_to_passes"])
    why = f"{passes} passes over {images_per_class:.0f} images per class: {BUDGET_RULES[row]['budget']} budget"
    if images_per_class < FEW_IMAGES_PER_CLASS and row + 1 < len(BUDGET_RULES):
        row += 1
        why += f", one step stronger for fewer than {FEW_IMAGES_PER_CLASS} images per class"
    elif images_per_class > MANY_IMAGES_PER_CLASS and row > 0:
        row -= 1
        why += f", one step lighter for more than {MANY_IMAGES_PER_CLASS} images per class"
    rule = BUDGET_RULES[row]
    why = f"{why} (regularisation of the {rule['budget']} row)"
    values = {k: rule[k] for k in ("label_smoothing", "weight_decay", "mixup_alpha", "cutmix_alpha")}
    values["ema_epochs"] = round(rule["ema_share"] * passes, 2)
    reasons = dict.fromkeys(values, why)
    tiny = img_size <= TINY_IMAGE_SIZE
    values["crop_scale"] = rule["crop_scale"][0 if tiny else 1]
    reasons["crop_scale"] = f"{why}; {TINY_IMAGE_CROP}" if tiny else why
    if tiny:
        values["hflip"] = TINY_IMAGE_FLIP
        reasons["hflip"] = (
            f"{img_size}-px images: flips off (on the digit sets they cost 9-27 points: a mirrored digit is "
            "another symbol; --hflip for small photos)"
        )
    return values, reasons


def epochs_for_minutes(minutes: float, step_seconds: float, steps_per_epoch: int) -> int:
    """Epochs that fit in ``minutes`` at ``step_seconds`` per optimizer step (at least one)."""
    epoch_seconds = step_seconds * steps_per_epoch * EPOCH_OVERHEAD
    return max(1, math.floor(minutes * 60 * TIME_BUDGET_SHARE / epoch_seconds))


def _scratch_for_size(img_size: int) -> dict[str, Any]:
    """Random-crop strength for the image size, the medium row's (the recipe's own 15 epochs): a 32-px image is
    mostly object, and a small crop of it leaves a few pixels of stroke (measured, docs/training.md)."""
    return {"crop_scale": BUDGET_RULES[1]["crop_scale"][0 if img_size <= TINY_IMAGE_SIZE else 1]}


def _scratch_for_data(train_images: int, world_size: int, batch_size: int | None) -> dict[str, Any]:
    """Batch size and epochs for a small training set: at least 8 steps per epoch and SCRATCH_MIN_STEPS in all
    (245 images at batch 64 are 4 steps per epoch, 60 in 15 epochs: too few to leave the majority class)."""
    per_rank = -(-train_images // world_size)
    batch = RECIPES["scratch"]["batch_size"]
    while batch > SCRATCH_MIN_BATCH and batch * 8 > per_rank:
        batch //= 2
    steps = _steps_per_epoch(train_images, world_size, batch_size or batch)
    return {"batch_size": batch, "epochs": max(RECIPES["scratch"]["epochs"], -(-SCRATCH_MIN_STEPS // steps))}


def _steps_per_epoch(train_images: int, world_size: int, batch_size: int) -> int:
    per_rank = -(-train_images // world_size)
    return max(per_rank // batch_size + (per_rank % batch_size > 1), 1)  # the loader drops a last batch of one


def _recipe_name(cfg: TrainConfig) -> str:
    return cfg.recipe or ("finetune" if cfg.weights else "scratch")


def plan_run(cfg: TrainConfig, explicit: set[str], device: torch.device | None = None) -> FitRun:
    """A new run's checks before its data is listed, and the function that fits its options to the listing:
    :func:`fit_run` with ``explicit`` and ``device`` bound."""
    if cfg.time_budget and "epochs" in explicit:
        raise ValueError(
            f"--time-budget {cfg.time_budget:g} fits the epochs to the minutes, --epochs {cfg.epochs} fixes them: "
            "pass one of them"
        )
    recipe_values(_recipe_name(cfg), cfg.img_size)  # an unknown recipe fails before the run folder is written
    return partial(fit_run, explicit=frozenset(explicit), device=device)


def fit_run(
    cfg: TrainConfig,
    probe: budget.ImageProbe,
    world_size: int = 1,
    explicit: Set[str] = frozenset(),
    device: torch.device | None = None,
) -> tuple[TrainConfig, list[str]]:
    """A new run's options from what the data module measured of the training files it listed (``probe``:
    :func:`~shufflenet.training.budget.probe_samples` of a folder, or a shard index's record): the image size
    (:func:`choose_image_size`), the recipe at that size (:func:`resolve_recipe`), then batch, epochs and
    regularisation for the training set and the budget (:func:`fit_recipe_to_data`)."""
    num_classes = probe.num_classes
    cfg, size_notes = choose_image_size(cfg, explicit, probe)
    cfg, recipe_notes = resolve_recipe(cfg, set(explicit))
    step_seconds = None
    if cfg.time_budget:
        step_seconds = partial(budget.measure_step_seconds, num_classes=num_classes, device=device)
    cfg, fit_notes = fit_recipe_to_data(cfg, probe.train_images, world_size, explicit, num_classes, step_seconds)
    return cfg, size_notes + recipe_notes + fit_notes


def choose_image_size(
    cfg: TrainConfig, explicit: Set[str], probe: budget.ImageProbe | None
) -> tuple[TrainConfig, list[str]]:
    """Without --img-size: scratch trains at the images' own size (:func:`size_for_images`); fine-tuning keeps
    the ImageNet weights' 224 and says what that costs when the images are much smaller."""
    if "img_size" in explicit or probe is None:
        return cfg, []
    name, side = _recipe_name(cfg), probe.median_short_side
    fitted = size_for_images(side)
    seen = f"median short side {side:.0f} px of {probe.sampled} training images"
    if name == "scratch":
        low, high = IMG_SIZE_RANGE
        why = f"{seen}, to a multiple of {IMG_SIZE_STEP} within {low}-{high}"
        chosen = {**(cfg.chosen or {}), "img_size": why}
        return dataclasses.replace(cfg, img_size=fitted, chosen=chosen), [
            f"img_size={fitted}: {why} (--img-size to choose another)"
        ]
    if name != "finetune" or side * UPSAMPLE_NOTE >= cfg.img_size:
        return cfg, []
    why = (
        f"{seen}: fine-tuning keeps {cfg.img_size} px, the scale the ImageNet weights learnt, which upsamples "
        f"them {cfg.img_size / side:.1f}x and makes each step cost about {(cfg.img_size / fitted) ** 2:.0f}x one "
        f"at --img-size {fitted}"
    )
    chosen = {**(cfg.chosen or {}), "img_size": why}
    return dataclasses.replace(cfg, chosen=chosen), [f"img_size={cfg.img_size}: {why}; measure both if time matters"]


def resolve_recipe(cfg: TrainConfig, explicit: set[str]) -> tuple[TrainConfig, list[str]]:
    """``cfg`` with its recipe's values for every option not in ``explicit``, and log lines saying so."""
    name = cfg.recipe or ("finetune" if cfg.weights else "scratch")
    why = "" if cfg.recipe else (" (auto: --weights given)" if cfg.weights else " (auto: no --weights)")
    img_size = cfg.img_size
    values = recipe_values(name, img_size)
    if "img_size" in values and "img_size" not in explicit:
        img_size = values["img_size"]
        values = recipe_values(name, img_size)
    chosen = {k: v for k, v in values.items() if k not in explicit}
    if "optimizer" in explicit and "weight_decay" in chosen and cfg.optimizer != values.get("optimizer"):
        # A recipe's weight decay belongs to its optimizer (AdamW's decoupled 0.05 would be a huge L2 penalty
        # for SGD): another optimizer given on its own gets its own default (DEFAULT_WEIGHT_DECAY).
        chosen["weight_decay"] = None
    resolved = dataclasses.replace(cfg, recipe=name, **chosen).validate()
    overridden = {k: getattr(cfg, k) for k, v in values.items() if k in explicit and getattr(cfg, k) != v}
    notes = [f"recipe {name}{why}: " + ", ".join(f"{k}={v!r}" for k, v in chosen.items())]
    if overridden:
        given = ", ".join(f"{k}={v!r}" for k, v in overridden.items())
        notes.append(f"options given that override recipe {name}: {given}")
    if resolved.img_size <= TINY_IMAGE_SIZE and not resolved.small_input and "small_input" not in explicit:
        notes.append(
            f"{resolved.img_size}-px images: consider --small-input (the stem without its max-pool, output "
            "stride 16), which helped on other tiny-image datasets (docs/training.md); off unless asked, so the "
            "model stays the paper's"
        )
    return resolved, notes


def fit_recipe_to_data(
    cfg: TrainConfig,
    train_images: int,
    world_size: int = 1,
    explicit: Set[str] = frozenset(),
    num_classes: int | None = None,
    step_seconds: Callable[[TrainConfig], float] | None = None,
) -> tuple[TrainConfig, list[str]]:
    """``cfg`` fitted to ``train_images`` training images of ``num_classes`` classes (scratch: batch size and
    epochs), to ``cfg.time_budget`` minutes at ``step_seconds(cfg)`` per step, and (scratch) its regularisation
    to the passes and images per class that leaves; every choice is logged and kept in ``cfg.chosen``."""
    if cfg.recipe is None:
        return cfg, []
    batch = cfg.batch_size if "batch_size" in explicit else None
    values = recipe_values(cfg.recipe, cfg.img_size, train_images, world_size, batch)
    changed = {k: values[k] for k in DATA_KEYS if k not in explicit and getattr(cfg, k) != values[k]}
    notes = []
    if changed:
        given = ", ".join(f"{k}={v!r}" for k, v in changed.items())
        why = f"a batch of at most 1/8 of the images and at least {SCRATCH_MIN_STEPS} optimizer steps"
        notes.append(f"recipe {cfg.recipe} for {train_images} training images: {given} ({why})")
        cfg = dataclasses.replace(cfg, **changed)
    if cfg.time_budget and step_seconds is not None:
        cfg, note = _fit_to_minutes(cfg, train_images, world_size, step_seconds(cfg))
        notes.append(note)
    if cfg.recipe == "scratch" and num_classes:
        cfg, note = _fit_to_budget(cfg, train_images / num_classes, explicit)
        notes += note
    return cfg, notes


def _fit_to_minutes(
    cfg: TrainConfig, train_images: int, world_size: int, step_seconds: float
) -> tuple[TrainConfig, str]:
    """The epochs that fit ``cfg.time_budget`` minutes at the measured ``step_seconds`` per step."""
    steps = _steps_per_epoch(train_images, world_size, cfg.batch_size)
    epochs = epochs_for_minutes(cfg.time_budget, step_seconds, steps)
    why = (
        f"--time-budget {cfg.time_budget:g} min: {step_seconds * 1000:.0f} ms per step measured here, {steps} steps "
        f"per epoch x {EPOCH_OVERHEAD} for validation and loading, {TIME_BUDGET_SHARE:.0%} of the budget"
    )
    chosen = {**(cfg.chosen or {}), "epochs": why}
    return dataclasses.replace(cfg, epochs=epochs, chosen=chosen), f"epochs={epochs}: {why}"


def _fit_to_budget(cfg: TrainConfig, images_per_class: float, explicit: Set[str]) -> tuple[TrainConfig, list[str]]:
    """Scratch's regularisation for the epochs the run has (BUDGET_RULES); options given explicitly stay."""
    values, reasons = budget_regularisation(cfg.epochs, images_per_class, cfg.img_size)
    keep = set(explicit)
    if "optimizer" in explicit and cfg.optimizer != RECIPES["scratch"]["optimizer"]:
        keep.add("weight_decay")  # another optimizer's decay is its own (resolve_recipe)
    if "pad_crop" in explicit:
        keep.add("crop_scale")  # the small-image practice asked for: RandomResizedCrop's scale does not apply
    values = {k: v for k, v in values.items() if k not in keep}
    if not values:
        return cfg, []
    chosen = {**(cfg.chosen or {}), **{k: reasons[k] for k in values}}
    notes = []
    for reason in dict.fromkeys(reasons[k] for k in values):
        given = ", ".join(f"{k}={v!r}" for k, v in values.items() if reasons[k] == reason)
        notes.append(f"recipe {cfg.recipe}: {given} ({reason})")
    return dataclasses.replace(cfg, **values, chosen=chosen), notes


def recipe_record(
    cfg: TrainConfig, train_images: int | None = None, world_size: int = 1, num_classes: int | None = None
) -> dict[str, Any] | None:
    """config.json's ``recipe`` entry: the name, every value the recipe sets (for ``train_images`` training
    images of ``num_classes`` classes, over the run's epochs), those the run overrode and why each value fitted
    to the images, the data or the budget was chosen."""
    if cfg.recipe is None:
        return None
    values = recipe_values(cfg.recipe, cfg.img_size, train_images, world_size, cfg.batch_size, cfg.epochs, num_classes)
    chosen = cfg.chosen or {}
    overridden = {k: getattr(cfg, k) for k, v in values.items() if getattr(cfg, k) != v and k not in chosen}
    return {
        "name": cfg.recipe,
        "values": values,
        "overridden": overridden,
        "train_images": train_images,
        "chosen": chosen,
    }
