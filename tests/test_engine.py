"""Training engine: run folder, checkpoints, resume, stops, evaluation and prediction on small real images."""

from __future__ import annotations

import csv
import json
import math
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import shufflenet
from conftest import rerun_in_fresh_interpreter, signal_during_training
from shufflenet import engine
from shufflenet.engine import TrainConfig, build_optimizer, evaluate, lr_factor, predict
from shufflenet.models import create_model
from shufflenet.transforms import Preprocessing

TINY = {"model": "shufflenet_v2_x0_5", "img_size": 32, "batch_size": 8, "lr": 1e-3, "workers": 0}
COLORS = {"cat": (200, 40, 40), "dog": (40, 40, 200)}


def write_images(root: Path, per_class: int, seed: int = 0) -> None:
    """JPEGs whose colour tells the class (learnable), with noise (not trivially so)."""
    rng = np.random.default_rng(seed)
    for name, color in COLORS.items():
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = (rng.random((36, 40, 3)) * 80 + np.array(color) - 40).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    """train/ + val/ class folders (the seed's layout), with a few files that are not usable images."""
    root = tmp_path / "data"
    write_images(root / "train", 12)
    write_images(root / "val", 4, seed=1)
    (root / "train" / "cat" / "empty.jpg").write_bytes(b"")
    (root / "train" / "dog" / "notes.png").write_text("not a picture")
    (root / "train" / "dog" / "readme.txt").write_text("ignored")
    Image.new("L", (40, 36), 90).save(root / "train" / "cat" / "gray.png")
    Image.new("RGBA", (40, 36), (200, 40, 40, 128)).save(root / "train" / "cat" / "alpha.png")
    return root


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_run_folder_holds_every_file(image_tree: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = shufflenet.train(data=str(image_tree), out=str(run), epochs=1, **TINY)
    for name in ("config.json", "class_indices.json", "metrics.csv", "best.pt", "last.pt", "result.png"):
        assert (run / name).is_file(), name
    assert (run / "confusion_matrix.png").is_file() and (run / "confusion_matrix.json").is_file()
    rows = read_rows(run / "metrics.csv")
    assert list(rows[0]) == list(engine.METRIC_COLUMNS)
    assert len(rows) == 1 and float(rows[0]["val_acc"]) == pytest.approx(result.history[0]["val_acc"], abs=1e-5)
    assert json.loads((run / "class_indices.json").read_text()) == {"0": "cat", "1": "dog"}
    config = json.loads((run / "config.json").read_text())
    assert config["options"]["model"] == "shufflenet_v2_x0_5" and config["options"]["optimizer"] == "adam"
    assert config["versions"]["torch"] == torch.__version__
    assert config["resolved"]["train_images"] == 26  # 24 JPEGs + grayscale + RGBA, converted to RGB
    # The two unreadable files are named in the run's log, with a count; the .txt is not an image at all.
    log_text = (run / "train.log").read_text()
    assert "skipped 2 unreadable" in log_text and "empty.jpg" in log_text and "notes.png" in log_text
    assert "readme.txt" not in log_text


def test_tensorboard_events_hold_the_metrics_csv(image_tree: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    shufflenet.train(data=str(image_tree), out=str(run), epochs=2, **TINY)
    (events,) = run.glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    rows = read_rows(run / "metrics.csv")
    assert set(accumulator.Tags()["scalars"]) == set(engine.METRIC_COLUMNS[1:])
    for key in engine.METRIC_COLUMNS[1:]:
        scalars = accumulator.Scalars(key)
        assert [s.step for s in scalars] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx([float(row[key]) for row in rows], rel=1e-5, abs=1e-6)


def test_checkpoints_are_self_describing_and_safe(image_tree: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shufflenet.train(data=str(image_tree), out=str(run), epochs=1, **TINY)
    last = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert last["arch"] == "shufflenet_v2_x0_5" and last["class_names"] == ["cat", "dog"]
    assert last["epoch"] == 1 and last["step"] == 0
    assert {"optimizer", "scheduler", "rng", "config", "history"} <= set(last)
    assert isinstance(last["rng"]["torch"], torch.Tensor)
    model = shufflenet.load_model(run / "best.pt")
    assert not model.training and model.class_names == ["cat", "dog"]
    assert model.preprocessing == Preprocessing.for_size(32)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 2)


def test_resume_matches_an_uninterrupted_run(image_tree: Path, tmp_path: Path) -> None:
    straight = shufflenet.train(data=str(image_tree), out=str(tmp_path / "a"), epochs=2, **TINY)
    shufflenet.train(data=str(image_tree), out=str(tmp_path / "b"), epochs=1, **TINY)
    # A resumed run keeps its own options: lr=0.5 is ignored (with a warning), so the weights still match.
    resumed = shufflenet.train(out=str(tmp_path / "b"), resume=True, epochs=2, workers=0, lr=0.5)
    assert "ignoring lr=0.5" in (tmp_path / "b" / "train.log").read_text()
    assert [row["epoch"] for row in resumed.history] == [1, 2]
    assert len(read_rows(tmp_path / "b" / "metrics.csv")) == 2
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.history[1]["train_loss"] == pytest.approx(straight.history[1]["train_loss"])


@pytest.mark.signals
def test_signal_mid_epoch_leaves_a_last_pt_that_resume_finishes(
    image_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    if not rerun_in_fresh_interpreter(request):
        return
    real = signal_during_training(monkeypatch, 12, signal.SIGTERM)  # in the second batch of 8
    run = tmp_path / "run"
    result = shufflenet.train(data=str(image_tree), out=str(run), epochs=2, **TINY)
    assert result.stopped == "interrupted" and result.history == []
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["epoch"] == 0 and 1 <= last["step"] < 4
    monkeypatch.setattr(engine, "train_transform", real)
    resumed = shufflenet.train(out=str(run), resume=True, workers=0)
    assert resumed.stopped is None and [row["epoch"] for row in resumed.history] == [1, 2]
    assert resumed.history[0]["train_acc"] * 26 == pytest.approx(round(resumed.history[0]["train_acc"] * 26))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(
    image_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = engine.batch_normalizer
    calls = {"n": 0}

    def poisoned(*args: object, **kwargs: object):
        normalize = real(*args, **kwargs)

        def apply(images: torch.Tensor) -> torch.Tensor:
            calls["n"] += 1
            out = normalize(images)
            # 4 training + 1 validation batches per epoch: the second epoch's third batch turns NaN.
            return out * float("nan") if calls["n"] == 8 else out

        return apply

    monkeypatch.setattr(engine, "batch_normalizer", poisoned)
    run = tmp_path / "run"
    result = shufflenet.train(data=str(image_tree), out=str(run), epochs=3, **TINY)
    assert result.stopped == "diverged" and "nan" in result.message and "epoch 2, step 3" in result.message
    assert len(result.history) == 1
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1
    assert torch.load(run / "best.pt", weights_only=True)["epoch"] == 1


def test_existing_run_folder_needs_resume_or_overwrite(image_tree: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "keep.txt").write_text("someone's notes")
    with pytest.raises(FileExistsError, match=r"--resume.*--overwrite"):
        shufflenet.train(data=str(image_tree), out=str(run), epochs=1, **TINY)
    shufflenet.train(data=str(image_tree), out=str(run), epochs=1, overwrite=True, **TINY)
    assert (run / "keep.txt").is_file() and (run / "last.pt").is_file()  # overwrite replaces run files only


def test_single_tree_is_split_and_the_split_is_reused(tmp_path: Path) -> None:
    data = tmp_path / "tree"
    write_images(data, 10)
    run = tmp_path / "run"
    first = shufflenet.train(data=str(data), out=str(run), epochs=1, **TINY)
    split = json.loads((run / "split.json").read_text())
    assert sum(len(v) for v in split["val"].values()) == 4  # 20% of 10 per class
    again = shufflenet.train(data=str(data), out=str(run), epochs=1, overwrite=True, **TINY)
    assert json.loads((run / "split.json").read_text())["val"] == split["val"]
    assert first.history[0]["val_acc"] == again.history[0]["val_acc"]


def test_freeze_backbone_with_pretrained_weights(image_tree: Path, tmp_path: Path) -> None:
    pretrained = create_model("shufflenet_v2_x0_5", num_classes=1000)
    weights = tmp_path / "pretrained.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in pretrained.state_dict().items()}}, weights)
    run = tmp_path / "run"
    shufflenet.train(data=str(image_tree), out=str(run), epochs=1, weights=str(weights), freeze_backbone=True, **TINY)
    assert "re-initialised fc.bias, fc.weight" in (run / "train.log").read_text()
    trained = torch.load(run / "last.pt", weights_only=True)["state_dict"]
    original = pretrained.state_dict()
    backbone = [k for k in trained if not k.startswith("fc.")]
    assert all(torch.equal(trained[k], original[k]) for k in backbone)  # incl. BatchNorm running statistics
    assert trained["fc.weight"].shape == (2, 1024)


def test_weights_for_another_architecture_are_refused(image_tree: Path, tmp_path: Path) -> None:
    weights = tmp_path / "v1.pth"
    torch.save(create_model("shufflenet_v1_g3_x0_25", num_classes=2).state_dict(), weights)
    with pytest.raises(ValueError, match="another architecture"):
        shufflenet.train(data=str(image_tree), out=str(tmp_path / "run"), epochs=1, weights=str(weights), **TINY)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"optimizer": "rmsprop"}, "optimizer must be one of"),
        ({"epochs": 0}, "epochs must be > 0"),
        ({"amp": "fp16", "device": "cpu"}, "fp16 needs a GPU"),
        ({"model": "shufflenet_v3"}, "unknown model"),
    ],
)
def test_bad_options_are_one_line_errors(image_tree: Path, tmp_path: Path, options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        shufflenet.train(**{**TINY, "data": str(image_tree), "out": str(tmp_path / "run"), "epochs": 1, **options})
    assert "\n" not in str(info.value)


def test_missing_data_and_single_class(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        shufflenet.train(data=str(tmp_path / "nowhere"), out=str(tmp_path / "run"), **TINY)
    one = tmp_path / "one"
    write_images(one, 4)
    for folder in one.glob("dog"):
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    with pytest.raises(ValueError, match="one class"):
        shufflenet.train(data=str(one), out=str(tmp_path / "run2"), **TINY)


def test_schedule_and_optimizer_groups() -> None:
    assert [lr_factor(s, "constant", 2, 10) for s in (0, 1, 5)] == [0.5, 1.0, 1.0]
    assert lr_factor(2, "cosine", 2, 10) == pytest.approx(1.0)
    assert lr_factor(6, "cosine", 2, 10) == pytest.approx(0.5)
    assert lr_factor(10, "cosine", 2, 10) == pytest.approx(0.0)
    model = create_model("shufflenet_v2_x0_5", num_classes=3)
    optimizer = build_optimizer(model, "sgd", 0.1, 4e-5)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 4e-5 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_config_rejects_unknown_option() -> None:
    with pytest.raises(TypeError, match="learning_rate"):
        shufflenet.train(data="x", out="y", learning_rate=0.1)
    assert TrainConfig().optimizer == "adam" and TrainConfig().epochs == 5 and TrainConfig().lr == 1e-4


def test_evaluate_accepts_any_callable(image_tree: Path) -> None:
    samples, names = shufflenet.data.scan_image_folder(image_tree / "val")
    dataset = shufflenet.data.ImageFolderDataset(samples, names, Preprocessing.for_size(32).eval_transform())

    def always_cat(batch: torch.Tensor) -> torch.Tensor:
        return torch.tensor([[2.0, 0.0]]).repeat(len(batch), 1)

    result = evaluate(always_cat, dataset, names, batch_size=3)
    assert result.num_images == 8 and result.top1 == 0.5 and result.top5 == 1.0
    assert result.confusion == [[4, 0], [4, 0]]
    cat, dog = result.per_class
    assert (cat["precision"], cat["recall"], dog["recall"], dog["precision"]) == (0.5, 1.0, 0.0, 0.0)
    # cross-entropy of logits (2, 0): log(1 + e^-2) for the cats, 2 more for the dogs
    assert result.loss == pytest.approx(math.log1p(math.exp(-2)) + 1.0)


def test_predict_ranks_classes_and_skips_bad_files(image_tree: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shufflenet.train(data=str(image_tree), out=str(run), epochs=1, **TINY)
    model = shufflenet.load_model(run / "best.pt")
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (50, 40), (200, 40, 40)).save(folder / "red.jpg")
    Image.new("CMYK", (50, 40), (0, 200, 200, 0)).save(folder / "cmyk.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result = predict(model, [folder], topk=5)
    assert sorted(p.path.name for p in result.predictions) == ["cmyk.jpg", "red.jpg"]
    assert [p.name for p, _ in result.skipped] == ["broken.png"]
    for prediction in result.predictions:
        probs = [p for _, p in prediction.topk]
        assert len(probs) == 2 and probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0)
    logits = model(Preprocessing.for_size(32).eval_transform()(Image.open(folder / "red.jpg"))[None])
    red = next(p for p in result.predictions if p.path.name == "red.jpg")
    assert red.probability == pytest.approx(logits.softmax(1).max().item(), rel=1e-5)


@pytest.mark.parametrize(
    "preprocessing",
    [Preprocessing.for_size(32), Preprocessing.for_size(32, mean=(0.0,) * 3, std=(1.0,) * 3, pixel_scale=255.0,
                                                         channel_order="BGR")],
)  # fmt: skip
def test_uint8_batches_match_the_per_image_transform(image_tree: Path, preprocessing: Preprocessing) -> None:
    images = [Image.open(p).convert("RGB") for p in sorted((image_tree / "val" / "cat").glob("*.jpg"))]
    reference = torch.stack([preprocessing.eval_transform()(im) for im in images])
    batch = torch.stack([engine.eval_transform(preprocessing)(im) for im in images])
    assert batch.dtype == torch.uint8
    normalized = engine.batch_normalizer(preprocessing)(batch.contiguous(memory_format=torch.channels_last))
    assert normalized.is_contiguous(memory_format=torch.channels_last)
    # Resizing uint8 rounds to whole pixel values: within one grey level of the float pipeline.
    one_level = preprocessing.pixel_scale / 255 / min(preprocessing.std)
    assert torch.allclose(normalized, reference, atol=1.01 * one_level)
