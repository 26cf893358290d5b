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
from collections.abc import Set
from typing import Any

from shufflenet.training.config import TrainConfig

__all__ = [
    "RECIPES",
    "RECIPE_KEYS",
    "SCRATCH_MIN_STEPS",
    "fit_recipe_to_data",
    "recipe_record",
    "recipe_values",
    "resolve_recipe",
]

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


def recipe_values(
    name: str, img_size: int, train_images: int | None = None, world_size: int = 1, batch_size: int | None = None
) -> dict[str, Any]:
    """The options recipe ``name`` sets, for ``img_size``-pixel crops and (when known) ``train_images`` training
    images split over ``world_size`` processes, trained at ``batch_size`` (default: the recipe's)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose one of {', '.join(RECIPES)}")
    values = dict(RECIPES[name])
    if name == "scratch":
        values.update(_scratch_for_size(img_size))
        if train_images:
            values.update(_scratch_for_data(train_images, world_size, batch_size))
    return values


def _scratch_for_size(img_size: int) -> dict[str, Any]:
    """Random-crop strength for the image size (measured, docs/training.md): a 32-px image is mostly object,
    and a crop of 8% of it leaves a few pixels of stroke."""
    return {"crop_scale": 0.35 if img_size <= TINY_IMAGE_SIZE else 0.25}


def _scratch_for_data(train_images: int, world_size: int, batch_size: int | None) -> dict[str, Any]:
    """Batch size and epochs for a small training set: at least 8 steps per epoch and SCRATCH_MIN_STEPS in all
    (245 images at batch 64 are 4 steps per epoch, 60 in 15 epochs: too few to leave the majority class)."""
    per_rank = -(-train_images // world_size)
    batch = RECIPES["scratch"]["batch_size"]
    while batch > SCRATCH_MIN_BATCH and batch * 8 > per_rank:
        batch //= 2
    used = batch_size or batch
    steps = max(per_rank // used + (per_rank % used > 1), 1)  # the loader drops a last batch of one image
    return {"batch_size": batch, "epochs": max(RECIPES["scratch"]["epochs"], -(-SCRATCH_MIN_STEPS // steps))}


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
    cfg: TrainConfig, train_images: int, world_size: int = 1, explicit: Set[str] = frozenset()
) -> tuple[TrainConfig, list[str]]:
    """``cfg`` with its recipe's values for ``train_images`` training images (scratch: batch size, epochs)."""
    if cfg.recipe is None:
        return cfg, []
    batch = cfg.batch_size if "batch_size" in explicit else None
    values = recipe_values(cfg.recipe, cfg.img_size, train_images, world_size, batch)
    changed = {k: values[k] for k in DATA_KEYS if k not in explicit and getattr(cfg, k) != values[k]}
    if not changed:
        return cfg, []
    given = ", ".join(f"{k}={v!r}" for k, v in changed.items())
    why = f"a batch of at most 1/8 of the images and at least {SCRATCH_MIN_STEPS} optimizer steps"
    return dataclasses.replace(cfg, **changed), [
        f"recipe {cfg.recipe} for {train_images} training images: {given} ({why})"
    ]


def recipe_record(cfg: TrainConfig, train_images: int | None = None, world_size: int = 1) -> dict[str, Any] | None:
    """config.json's ``recipe`` entry: the name, every value the recipe sets (for ``train_images`` training
    images), and those the run overrode."""
    if cfg.recipe is None:
        return None
    values = recipe_values(cfg.recipe, cfg.img_size, train_images, world_size, cfg.batch_size)
    overridden = {k: getattr(cfg, k) for k, v in values.items() if getattr(cfg, k) != v}
    return {"name": cfg.recipe, "values": values, "overridden": overridden, "train_images": train_images}
