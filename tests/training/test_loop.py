"""The training loop: run folder, checkpoints, resume, stops and bad input, on small real images."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

import shufflenet
from conftest import TINY, read_rows, rerun_in_fresh_interpreter, signal_during_training, write_images
from shufflenet.models import create_model
from shufflenet.training import METRIC_COLUMNS, loaders
from shufflenet.transforms import Preprocessing


def test_run_folder_holds_every_file(image_tree: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = shufflenet.train(data=str(image_tree), out=str(run), epochs=1, **TINY)
    for name in ("config.json", "class_indices.json", "metrics.csv", "best.pt", "last.pt", "result.png"):
        assert (run / name).is_file(), name
    assert (run / "confusion_matrix.png").is_file() and (run / "confusion_matrix.json").is_file()
    rows = read_rows(run / "metrics.csv")
    assert list(rows[0]) == list(METRIC_COLUMNS)
    assert len(rows) == 1 and float(rows[0]["val_acc"]) == pytest.approx(result.history[0]["val_acc"], abs=1e-5)
    assert json.loads((run / "class_indices.json").read_text()) == {"0": "cat", "1": "dog"}
    config = json.loads((run / "config.json").read_text())
    assert config["options"]["model"] == "shufflenet_v2_x0_5" and config["options"]["optimizer"] == "adamw"
    assert config["options"]["recipe"] == "scratch"  # no --weights
    assert config["versions"]["torch"] == torch.__version__
    # 24 JPEGs + grayscale + RGBA + the two unreadable files: listed, not decoded, before the first step
    assert config["resolved"]["train_images"] == 28
    # The two unreadable files are met when loaded: named in the log and bad_images.txt, counted in metrics.
    log_text = (run / "train.log").read_text()
    assert "2 unreadable image(s) so far" in log_text and "empty.jpg" in log_text and "notes.png" in log_text
    assert "readme.txt" not in log_text
    listed = sorted(Path(line.split("\t")[0]).name for line in (run / "bad_images.txt").read_text().splitlines())
    assert sorted(set(listed)) == ["empty.jpg", "notes.png"]
    assert rows[0]["bad_images"] == "2"


def test_tensorboard_events_hold_the_metrics_csv(image_tree: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    shufflenet.train(data=str(image_tree), out=str(run), epochs=2, **TINY)
    (events,) = run.glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    rows = read_rows(run / "metrics.csv")
    assert set(accumulator.Tags()["scalars"]) == set(METRIC_COLUMNS[1:])
    for key in METRIC_COLUMNS[1:]:
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
    resumed = shufflenet.train(out=str(tmp_path / "b"), resume=True, epochs=2, workers=0, device="cpu", lr=0.5)
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
    monkeypatch.setattr(loaders, "train_transform", real)
    resumed = shufflenet.train(out=str(run), resume=True, workers=0, device="cpu")
    assert resumed.stopped is None and [row["epoch"] for row in resumed.history] == [1, 2]
    assert resumed.history[0]["train_acc"] * 28 == pytest.approx(round(resumed.history[0]["train_acc"] * 28))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(
    image_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = loaders.batch_normalizer
    calls = {"n": 0}

    def poisoned(*args: object, **kwargs: object):
        normalize = real(*args, **kwargs)

        def apply(images: torch.Tensor) -> torch.Tensor:
            calls["n"] += 1
            out = normalize(images)
            # 4 training + 1 validation batches per epoch: the second epoch's third batch turns NaN.
            return out * float("nan") if calls["n"] == 8 else out

        return apply

    monkeypatch.setattr(loaders, "batch_normalizer", poisoned)
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
    torch.manual_seed(0)
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
    torch.manual_seed(0)
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
