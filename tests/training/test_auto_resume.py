"""--resume auto and torchrun restarts (TORCHELASTIC_RESTART_COUNT): continue a run folder whose last.pt holds
this run's options, start otherwise; --checkpoint-every leaves a mid-epoch last.pt that a crashed run resumes
from exactly (the multi-process SIGKILL case is tests/training/test_torchrun_faults.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from conftest import write_images
from shufflenet.cli import main
from shufflenet.training import loaders

ARGS = [
    *("--model", "shufflenet_v2_x0_5", "--img-size", "32", "--batch-size", "4", "--lr", "1e-3"),
    *("--device", "cpu", "--workers", "0", "--threads", "1", "--quiet"),
]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    write_images(tmp_path / "data" / "train", 6)
    write_images(tmp_path / "data" / "val", 2, seed=1)
    return tmp_path / "data"


def _train(data: Path, run: Path, *extra: str) -> int:
    return main(["train", "--data", str(data), "--out", str(run), *ARGS, *extra])


def test_resume_auto_starts_then_continues_and_refuses_another_runs_folder(data: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert _train(data, run, "--epochs", "1", "--resume", "auto") == 0  # nothing to continue: a new run
    assert _train(data, run, "--epochs", "2", "--resume", "auto") == 0
    log_text = (run / "train.log").read_text()
    assert "--resume auto: continuing from" in log_text and "resumed" in log_text
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 2
    capsys.readouterr()
    assert _train(data, run, "--epochs", "3", "--resume", "auto", "--lr", "0.5") == 2  # another run's options
    assert "already exists" in capsys.readouterr().err


def test_torchrun_restart_continues_a_crashed_run_from_its_mid_epoch_checkpoint_exactly(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    assert _train(data, straight, "--epochs", "2") == 0
    # 12 training images, batch 4: 3 steps per epoch. The process dies (an exception, no handler saves
    # anything) at image 21: epoch 2, step 3, after the --checkpoint-every 2 save of step 2.
    real = loaders.train_transform
    calls = {"n": 0}

    def crashing(*args: object, **kwargs: object) -> Callable:
        transform = real(*args, **kwargs)

        def apply(image: object) -> object:
            calls["n"] += 1
            if calls["n"] == 21:
                raise RuntimeError("simulated crash")
            return transform(image)

        return apply

    monkeypatch.setattr(loaders, "train_transform", crashing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train(data, crashed, "--epochs", "2", "--checkpoint-every", "2")
    last = torch.load(crashed / "last.pt", weights_only=True)
    assert (last["epoch"], last["step"]) == (1, 2)
    monkeypatch.setattr(loaders, "train_transform", real)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")  # what torchrun sets in the restarted process
    assert _train(data, crashed, "--epochs", "2", "--checkpoint-every", "2") == 0  # the same command
    assert "torchrun restart 1: continuing from" in (crashed / "train.log").read_text()
    a = torch.load(straight / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(crashed / "last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
