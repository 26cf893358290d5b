"""Recipes fitted to the user's images and budget: the size from the images, regularisation from the passes and
images per class, and --time-budget's epochs from the measured speed (issue 23)."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2 as T

import shufflenet
from shufflenet.data import scan_image_folder
from shufflenet.training import TrainConfig, budget
from shufflenet.training.distributed import Distributed
from shufflenet.training.loaders import build_data
from shufflenet.training.recipes import (
    budget_regularisation,
    choose_image_size,
    fit_recipe_to_data,
    plan_run,
    resolve_recipe,
)
from shufflenet.training.state import read_last_checkpoint, resumed_config

RUN = {"model": "shufflenet_v2_x0_5", "workers": 0, "threads": 1, "device": "cpu"}


def probe(root: Path) -> budget.ImageProbe:
    """The size probe on a tree as training lists it."""
    samples, class_names = scan_image_folder(root)
    return budget.probe_samples(samples, len(class_names))


def write_sized(root: Path, sizes: list[tuple[int, int]], classes: int = 2) -> Path:
    """PNG class folders whose images have the given (width, height) sizes, cycled over the classes."""
    for i, size in enumerate(sizes):
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", size, (i * 7 % 255, 90, 40)).save(folder / f"{i}.png")
    return root


@pytest.mark.parametrize(
    ("sizes", "expected"),
    [
        ([(40, 36)] * 6, 32),  # short side 36 -> 32
        ([(60, 80)] * 3, 64),  # 60 -> 64: rounded, not floored
        ([(130, 100)] * 5 + [(20, 20)] * 2, 96),  # the median, not the mean: 100 -> 96
        ([(500, 375)] * 4, 224),  # photos: capped at 224
        ([(12, 10)] * 4, 32),  # never below 32
    ],
)
def test_scratch_size_is_the_images_median_short_side(tmp_path: Path, sizes: list, expected: int) -> None:
    probed = probe(write_sized(tmp_path / "data", sizes))
    assert probed.sampled == len(sizes) and probed.num_classes == 2
    cfg, notes = choose_image_size(TrainConfig(out="run"), set(), probed)
    assert cfg.img_size == expected and f"img_size={expected}" in notes[0]
    assert f"median short side {probed.median_short_side:.0f} px" in cfg.chosen["img_size"]
    given, notes = choose_image_size(TrainConfig(out="run", img_size=64), {"img_size"}, probed)
    assert given.img_size == 64 and notes == [] and given.chosen is None


def test_finetuning_keeps_224_and_prices_small_images(tmp_path: Path) -> None:
    small = probe(write_sized(tmp_path / "data", [(32, 32)] * 4))
    cfg, notes = choose_image_size(TrainConfig(out="run", weights="w.pth"), set(), small)
    assert cfg.img_size == 224 and "upsamples them 7.0x" in notes[0] and "about 49x one at --img-size 32" in notes[0]
    photos = probe(write_sized(tmp_path / "photos", [(500, 375)] * 4))
    assert choose_image_size(TrainConfig(out="run", weights="w.pth"), set(), photos) == (
        TrainConfig(out="run", weights="w.pth"),
        [],
    )


def test_training_without_img_size_records_the_size_from_the_images(image_tree: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shufflenet.train(data=str(image_tree), out=str(run), epochs=1, batch_size=8, **RUN)
    config = json.loads((run / "config.json").read_text())
    assert config["options"]["img_size"] == 32  # the tree's images are 40 x 36
    assert "median short side 36 px" in config["recipe"]["chosen"]["img_size"]
    log = (run / "train.log").read_text()
    assert "img_size=32: median short side 36 px" in log
    # Small images: no flips, RandomResizedCrop rather than the small-image practice, each with its reason.
    assert (config["options"]["hflip"], config["options"]["pad_crop"], config["options"]["crop_scale"]) == (
        False,
        0,
        0.6,
    )
    assert "flips off" in config["recipe"]["chosen"]["hflip"] and "hflip=False" in log
    assert "small-image practice (--pad-crop" in config["recipe"]["chosen"]["crop_scale"]


def test_the_small_image_practice_when_asked(tmp_path: Path) -> None:
    # --pad-crop given: the loader pads and crops the whole image, RandomResizedCrop's scale is not chosen, and
    # validation sees the whole image when --eval-crop 1.0 comes with it.
    data_dir = write_sized(tmp_path / "data", [(32, 32)] * 2 * 20)
    cfg = TrainConfig(data=str(data_dir), out=str(tmp_path / "run"), epochs=6, pad_crop=4, eval_crop=1.0, **RUN)
    fit = plan_run(cfg, {"data", "out", "epochs", "pad_crop", "eval_crop", *RUN})
    data = build_data(cfg, Distributed(device=torch.device("cpu")), tmp_path / "run", False, fit)
    steps = [type(t).__name__ for t in data.bundle.train.transform.transforms]
    assert steps == ["ToImage", "Resize", "CenterCrop", "RandomCrop"]  # flips off at 32 px
    assert data.bundle.train.transform.transforms[-1].padding == [4, 4, 4, 4]
    assert "crop_scale" not in data.config.chosen and "hflip" in data.config.chosen
    assert data.preprocessing.resize_size == data.preprocessing.crop_size == 32


def test_training_lists_each_class_folder_once(
    image_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The size comes from the files the data module listed: a second walk of a 100,000-file tree would double
    # start-up. os.walk reads every folder through os.scandir.
    scanned: Counter[str] = Counter()
    real_scandir = os.scandir

    def counting_scandir(path: str | Path = ".") -> Iterator[os.DirEntry]:
        scanned[os.path.realpath(path)] += 1
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", counting_scandir)
    run = tmp_path / "run"
    shufflenet.train(data=str(image_tree), out=str(run), epochs=1, batch_size=8, **RUN)
    train_folders = [str((image_tree / "train" / name).resolve()) for name in ("cat", "dog")]
    assert [scanned[folder] for folder in train_folders] == [1, 1], dict(scanned)
    assert json.loads((run / "config.json").read_text())["options"]["img_size"] == 32  # the size still chosen


def test_size_probe_reads_a_bounded_sample_spread_over_the_classes(tmp_path: Path) -> None:
    # 3 classes of 40 images; class 2's are 96 px, the others 32: a probe of 12 headers reads 4 of each class.
    write_sized(tmp_path / "data", [(32, 32), (32, 32), (96, 96)] * 40, classes=3)
    samples, class_names = scan_image_folder(tmp_path / "data")
    opened: list[str] = []
    real_open = Image.open

    def counting_open(path: Path, *args: object) -> Image.Image:
        opened.append(Path(path).parent.name)
        return real_open(path, *args)

    monkey = pytest.MonkeyPatch()
    with monkey.context() as patch:
        patch.setattr(Image, "open", counting_open)
        probed = budget.probe_samples(samples, len(class_names), sample=12)
    assert probed.sampled == 12 and Counter(opened) == {"class0": 4, "class1": 4, "class2": 4}
    assert probed.median_short_side == 32 and probed.train_images == 120


def test_the_transforms_follow_the_options_fitted_to_the_data(tmp_path: Path) -> None:
    # The crop scale the budget chose (6 passes over 101 images per class: short row, 0.6 at <= 64 px) is the
    # one the loader applies, not the recipe's unfitted 0.35 (the transforms were once built before the fit,
    # and config.json recorded a 0.6 that training never used).
    data_dir = write_sized(tmp_path / "data", [(40, 36)] * 2 * 126)  # 101 per class train after the 0.2 split
    cfg = TrainConfig(data=str(data_dir), out=str(tmp_path / "run"), epochs=6, **RUN)
    fit = plan_run(cfg, {"data", "out", "epochs", *RUN})
    data = build_data(cfg, Distributed(device=torch.device("cpu")), tmp_path / "run", False, fit)
    (crop,) = [t for t in data.bundle.train.transform.transforms if isinstance(t, T.RandomResizedCrop)]
    assert data.config.crop_scale == 0.6 and crop.scale == (0.6, 1.0) and crop.size == (32, 32)
    image, _ = data.bundle.val[0]
    assert data.preprocessing.crop_size == 32 and tuple(image.shape) == (3, 32, 32)


# The rule's definition (BUDGET_RULES): up to 12 passes "short", up to 25 "medium", beyond "long"; fewer than 100
# images per class one row stronger, more than 1000 one row lighter; crop_scale's first value is for <= 64 px,
# where every row keeps 0.6 and flips are off.
SHORT = {"crop_scale": 0.6, "label_smoothing": 0.0, "weight_decay": 0.01, "mixup_alpha": 0.0, "cutmix_alpha": 0.0}
MEDIUM = {"crop_scale": 0.6, "label_smoothing": 0.1, "weight_decay": 0.05, "mixup_alpha": 0.0, "cutmix_alpha": 0.0}
TINY = {"hflip": False}


@pytest.mark.parametrize(
    ("passes", "per_class", "img_size", "expected"),
    [
        (6, 600, 64, {**SHORT, **TINY, "ema_epochs": 0.0}),  # the run: 6 passes over 600 images per class
        (15, 600, 64, {**MEDIUM, **TINY, "ema_epochs": 0.0}),  # the scratch recipe as measured
        (40, 600, 64, {**MEDIUM, **TINY, "ema_epochs": 4.0}),  # long: the EMA, a tenth of the epochs
        (6, 50, 64, {**MEDIUM, **TINY, "ema_epochs": 0.0}),  # few images per class: one row stronger
        (15, 2000, 64, {**SHORT, **TINY, "ema_epochs": 0.0}),  # many: one row lighter
        (6, 600, 96, {**SHORT, "crop_scale": 0.6, "ema_epochs": 0.0}),  # larger crops: photos, flips stay
        (15, 600, 96, {**MEDIUM, "crop_scale": 0.25, "ema_epochs": 0.0}),
        (40, 600, 96, {**MEDIUM, "crop_scale": 0.35, "ema_epochs": 4.0}),
    ],
)
def test_regularisation_follows_passes_and_images_per_class(
    passes: int, per_class: int, img_size: int, expected: dict
) -> None:
    values, reasons = budget_regularisation(passes, per_class, img_size)
    assert values == expected and set(reasons) == set(values)
    assert f"{passes} passes over {per_class} images per class" in reasons["label_smoothing"]


def test_fixed_short_epochs_get_lighter_regularisation_than_a_long_run() -> None:
    def fitted(epochs: int, img_size: int = 96, **given: object) -> TrainConfig:
        explicit = {"epochs", "img_size", *given}
        cfg, _ = resolve_recipe(TrainConfig(out="run", epochs=epochs, img_size=img_size, **given), explicit)
        return fit_recipe_to_data(cfg, 6000, explicit=explicit, num_classes=10)[0]

    short, long = fitted(6), fitted(40)
    assert (short.crop_scale, short.label_smoothing, short.weight_decay, short.ema_epochs) == (0.6, 0.0, 0.01, 0.0)
    assert (long.crop_scale, long.label_smoothing, long.weight_decay, long.ema_epochs) == (0.35, 0.1, 0.05, 4.0)
    assert "6 passes over 600 images per class: short budget" in short.chosen["crop_scale"]
    # At <= 64 px both keep RandomResizedCrop 0.6 without flips, and the smoothing and decay still differ.
    small_short, small_long = fitted(6, img_size=64), fitted(40, img_size=64)
    assert (small_short.label_smoothing, small_long.label_smoothing) == (0.0, 0.1)
    assert small_short.crop_scale == small_long.crop_scale == 0.6 and not small_short.hflip and not small_long.hflip
    # Options given stay as given; another optimizer keeps its own weight decay.
    assert fitted(6, crop_scale=0.2).crop_scale == 0.2
    assert fitted(6, optimizer="sgd").weight_decay is None


def test_time_budget_fits_the_epochs_to_the_measured_speed(
    image_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def steps_take(seconds: float) -> None:
        ticks = iter(range(10**6))
        monkeypatch.setattr(budget, "clock", lambda: next(ticks) * seconds)  # a step's end is one read after its start

    with pytest.raises(ValueError, match=r"--time-budget 0.001 fits the epochs.*--epochs 3 fixes them"):
        shufflenet.train(data=str(image_tree), out=str(tmp_path / "both"), time_budget=0.001, epochs=3, **RUN)
    # 26 readable training images -> batch 8, 4 steps per epoch; an epoch is 4 steps x 1.3 (EPOCH_OVERHEAD),
    # and 90% of the budget is spent: 1.2 s -> 1.08 s. At 50 ms per step an epoch is 0.26 s: 4 epochs.
    steps_take(0.05)
    run = tmp_path / "run"
    result = shufflenet.train(data=str(image_tree), out=str(run), time_budget=0.02, **RUN)
    config = json.loads((run / "config.json").read_text())
    assert len(result.history) == 4 and config["options"]["epochs"] == 4 and config["options"]["batch_size"] == 8
    assert "50 ms per step measured here, 4 steps per epoch" in config["recipe"]["chosen"]["epochs"]
    # Twice as slow: 0.52 s an epoch, 2 epochs.
    steps_take(0.1)
    slow = shufflenet.train(data=str(image_tree), out=str(tmp_path / "slow"), time_budget=0.02, **RUN)
    assert len(slow.history) == 2
    # A resume reads the epochs the run chose from last.pt (it does not measure again).
    resumed, _ = resumed_config(read_last_checkpoint(run), TrainConfig(out=str(run), resume=True), {"resume"})
    assert (resumed.epochs, resumed.time_budget) == (4, 0.02)
