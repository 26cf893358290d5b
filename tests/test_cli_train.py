"""The train / eval / predict / demo subcommands: files written, printed results, one-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import rerun_in_fresh_interpreter, signal_during_training
from shufflenet.checkpoints import load_checkpoint, load_model
from shufflenet.cli import main

TINY = [
    *("--model", "shufflenet_v2_x0_5", "--img-size", "32", "--batch-size", "8", "--lr", "1e-3"),
    *("--device", "cpu", "--quiet"),
]


def write_tree(root: Path, per_class: int, seed: int, classes: tuple[str, ...] = ("cat", "dog")) -> None:
    rng = np.random.default_rng(seed)
    colors = {"cat": (200, 40, 40), "dog": (40, 40, 200), "bird": (40, 200, 40)}
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = (rng.random((36, 40, 3)) * 80 + np.array(colors[name]) - 40).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.jpg")


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(data root with train/ + val/, run folder) after a 1-epoch CLI run."""
    torch.manual_seed(0)  # train() seeds its model itself; this keeps the fixture's own state fixed too
    base = tmp_path_factory.mktemp("cli")
    data, run = base / "data", base / "run"
    write_tree(data / "train", 10, seed=0)
    write_tree(data / "val", 4, seed=1)
    assert main(["train", "--data", str(data), "--out", str(run), "--epochs", "1", *TINY]) == 0
    return data, run


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[-1]


def test_train_prints_summary_and_resume_adds_epochs(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, _ = trained
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--epochs", "1", *TINY]) == 0
    assert f"run folder {run}" in capsys.readouterr().out
    # The resumed run takes its options from last.pt; only --epochs is new.
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--device", "cpu", "--quiet"]) == 0
    with open(run / "metrics.csv", newline="") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1", "2"]
    assert json.loads((run / "config.json").read_text())["options"]["epochs"] == 2


def test_small_input_lands_in_config_and_checkpoints_and_eval_rebuilds_it(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    data, default_run = trained
    assert load_checkpoint(default_run / "best.pt")["model_kwargs"] == {}  # the paper's model, as before
    assert json.loads((default_run / "config.json").read_text())["options"]["small_input"] is False
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--epochs", "1", "--small-input", *TINY]) == 0
    assert json.loads((run / "config.json").read_text())["options"]["small_input"] is True
    for name in ("best.pt", "last.pt"):
        assert load_checkpoint(run / name)["model_kwargs"] == {"small_input": True}
    model = load_model(run / "best.pt")
    assert model.small_input is True and isinstance(model.maxpool, torch.nn.Identity)
    report = tmp_path / "report.json"
    assert main(["eval", "--weights", str(run / "best.pt"), "--data", str(data), "--json", str(report), "--quiet"]) == 0
    # A resumed run keeps the stem it was started with.
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2", "--device", "cpu", "--quiet"]) == 0
    assert load_checkpoint(run / "last.pt")["model_kwargs"] == {"small_input": True}


def test_existing_run_folder_is_a_one_line_error(
    trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data, run = trained
    assert main(["train", "--data", str(data), "--out", str(run), *TINY]) == 2
    line = error_line(capsys)
    assert line.startswith("shufflenet train: error:") and str(run) in line and "--overwrite" in line


def test_missing_data_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run"), *TINY]) == 2
    assert "nope does not exist" in error_line(capsys)


def test_eval_reports_accuracy_per_class_and_confusion(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, run = trained
    out = tmp_path / "eval"
    report = tmp_path / "eval.json"
    # A train/ + val/ root is evaluated on its val/ folder.
    assert main(["eval", "--weights", str(run / "best.pt"), "--data", str(data), "--json", str(report),
                 "--out", str(out), "--quiet"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "top-1" in printed and "precision" in printed
    result = json.loads(report.read_text())
    assert result["num_images"] == 8 and [c["class"] for c in result["per_class"]] == ["cat", "dog"]
    assert sum(map(sum, result["confusion_matrix"])) == 8
    with open(run / "metrics.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert result["top1"] == pytest.approx(float(row["val_acc"]), abs=1e-5)  # best.pt is that epoch's model
    assert (out / "confusion_matrix.png").is_file() and (out / "confusion_matrix.json").is_file()


def test_eval_class_mismatch_names_the_difference(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, run = trained
    other = tmp_path / "other"
    write_tree(other, 2, seed=3, classes=("bird", "cat"))
    assert main(["eval", "--weights", str(run / "best.pt"), "--data", str(other), "--quiet"]) == 2
    line = error_line(capsys)
    assert "missing ['dog']" in line and "['bird']" in line


def test_eval_with_weights_of_another_architecture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = tmp_path / "plain.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, weights)
    assert main(["eval", "--weights", str(weights), "--data", str(tmp_path), "--quiet"]) == 2
    assert "not a shufflenet checkpoint" in error_line(capsys)


def test_predict_prints_topk_and_writes_json_and_figure(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, run = trained
    report, figure = tmp_path / "pred.json", tmp_path / "pred.png"
    images = data / "val" / "cat"
    assert main(["predict", "--weights", str(run / "best.pt"), str(images), str(data / "val" / "dog" / "0.jpg"),
                 "--topk", "1", "--json", str(report), "--save-figure", str(figure)]) == 0  # fmt: skip
    lines = [line for line in capsys.readouterr().out.splitlines() if line.endswith(tuple("0123456789"))]
    assert len(lines) == 5 and all(len(line.split()) == 3 for line in lines)  # path, class, probability
    predictions = json.loads(report.read_text())["predictions"]
    assert len(predictions) == 5 and all(p["label"] in ("cat", "dog") for p in predictions)
    assert figure.is_file() and figure.stat().st_size > 0


def test_predict_through_a_compiled_backend(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("shufflenet.deploy")
    pytest.importorskip("onnxruntime")
    data, run = trained
    eager, compiled = tmp_path / "eager.json", tmp_path / "ort.json"
    images = str(data / "val")
    assert main(["predict", "--weights", str(run / "best.pt"), images, "--json", str(eager)]) == 0
    assert main(["predict", "--weights", str(run / "best.pt"), images, "--json", str(compiled),
                 "--backend", "onnxruntime", "--precision", "fp32"]) == 0  # fmt: skip
    a = json.loads(eager.read_text())["predictions"]
    b = json.loads(compiled.read_text())["predictions"]
    assert [p["path"] for p in a] == [p["path"] for p in b]
    for x, y in zip(a, b, strict=True):
        assert y["probability"] == pytest.approx(x["probability"], abs=1e-3)


def test_demo_runs_offline_and_writes_a_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "1", "--quiet"]) == 0  # the full demo is measured in docs
    printed = capsys.readouterr().out
    assert "validation accuracy" in printed
    for name in ("metrics.csv", "best.pt", "last.pt", "result.png", "confusion_matrix.png", "eval.json"):
        assert (out / name).is_file(), name
    assert len(list((out / "data" / "val").glob("*/*.png"))) == 359  # 20% of sklearn's 1,797 scans
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["class_names"] == [str(d) for d in range(10)] and evaluation["num_images"] == 359
    assert (out / "predictions.png").is_file()
    # Running it again replaces the run (no "already exists" error) and reuses the written images.
    assert main(["demo", "--out", str(out), "--epochs", "1", "--quiet"]) == 0


@pytest.mark.signals
def test_ctrl_c_exits_130_and_resume_finishes(
    trained: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    if not rerun_in_fresh_interpreter(request):
        return
    import signal

    from shufflenet.training import loaders

    data, _ = trained
    real = signal_during_training(monkeypatch, 10, signal.SIGINT)  # Ctrl-C in the second batch: that step finishes
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--epochs", "2", *TINY]) == 130
    line = error_line(capsys)
    assert "stopped by a signal at epoch 1, step 2/3" in line and "--resume" in line
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    monkeypatch.setattr(loaders, "train_transform", real)
    assert main(["train", "--out", str(run), "--resume", "--device", "cpu", "--quiet"]) == 0
    with open(run / "metrics.csv", newline="") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1", "2"]


def test_nan_loss_exits_1_with_the_step(
    trained: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from shufflenet.training import loaders

    real = loaders.batch_normalizer

    def poisoned(*args: object, **kwargs: object):
        normalize = real(*args, **kwargs)
        return lambda images: normalize(images) * float("nan")

    monkeypatch.setattr(loaders, "batch_normalizer", poisoned)
    data, _ = trained
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--epochs", "2", *TINY]) == 1
    line = error_line(capsys)
    assert "loss is nan at epoch 1, step 1" in line and "--lr" in line
    assert not (run / "last.pt").exists()


@pytest.mark.slow
def test_full_demo_reaches_the_accuracy_the_readme_states(tmp_path: Path) -> None:
    """README.md: the demo (12 epochs, no options) ends with 0.955 validation accuracy on the digits. eval.json
    is best.pt read back from its file and evaluated on the 359 validation scans."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--quiet"]) == 0
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["num_images"] == 359
    assert round(evaluation["top1"], 3) >= 0.955, evaluation["top1"]


def test_workers_help_states_the_defaults_that_training_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    from shufflenet.cli import build_parser
    from shufflenet.training.config import RUNTIME_OPTIONS
    from shufflenet.training.loaders import resolve_workers

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    text = " ".join(next(a.help for a in train._actions if a.dest == "workers").split())
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for cores, on_cpu, on_gpu in ((16, 4, 8), (7, 1, 6), (1, 0, 1)):
        monkeypatch.setattr("os.sched_getaffinity", lambda pid, n=cores: set(range(n)), raising=False)
        assert (resolve_workers(None, cpu), resolve_workers(None, cpu, cached=True)) == (on_cpu, 0)
        assert resolve_workers(None, cuda) == on_gpu
    assert "per training process (under torchrun: per rank)" in text
    assert "on CPU: none when the images are cached in memory (--cache-images), else a quarter of the cores" in text
    assert "on a GPU: cores-1, at least 1 and at most 8" in text
    assert "workers" in RUNTIME_OPTIONS and "May change on --resume" in text
