"""train --data SHARDS: one process on CPU, two gloo processes under torchrun with uneven shards, exact resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_resume import assert_same_run, signal_once_at_image

import shufflenet
from conftest import TINY, read_rows, rerun_in_fresh_interpreter
from shufflenet.data.shards import read_index, write_shards
from shufflenet.training import shard_data


def write_folder(root: Path, per_class: int) -> None:
    rng = np.random.default_rng(0)
    for name, color in {"cat": (200, 40, 40), "dog": (40, 40, 200), "owl": (40, 200, 40)}.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.random((32, 40, 3)) * 80 + np.array(color) - 40).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.jpg")


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 training images in 8 shards of 4 and one of 2 (uneven over 2 ranks), 6 validation images in 4 + 2."""
    root = tmp_path_factory.mktemp("shard_training")
    write_folder(root / "data", 12)
    write_shards(root / "data", root / "shards", shard_images=4, workers=1)
    index = read_index(root / "shards")
    assert [s.count for s in index.shards["train"]] == [4] * 7 + [2]
    assert [s.count for s in index.shards["val"]] == [4, 2]
    return root / "shards"


def assert_validated_every_image(run: Path) -> None:
    """The epoch's validation (this run's loaders, summed over ranks) saw the loss that best.pt has on all 6
    validation images (confusion_matrix.json: the whole val set in one process)."""
    confusion = json.loads((run / "confusion_matrix.json").read_text())
    assert confusion["num_images"] == 6
    best_epoch = torch.load(run / "best.pt", weights_only=True)["epoch"]
    row = read_rows(run / "metrics.csv")[best_epoch - 1]
    assert float(row["val_loss"]) == pytest.approx(confusion["loss"], rel=1e-5)


def test_train_from_shards_on_cpu(shards: Path, tmp_path: Path) -> None:
    result = shufflenet.train(data=str(shards), out=str(tmp_path / "run"), epochs=1, **{**TINY, "workers": 1})
    assert result.stopped is None and len(result.history) == 1
    log_text = (tmp_path / "run" / "train.log").read_text()
    assert "data: shards (8 shards, 1 workers)" in log_text
    assert "30 samples and 4 steps per process and epoch" in log_text
    assert "first step after" in log_text
    assert_validated_every_image(tmp_path / "run")
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert last["scheduler"]["last_epoch"] == 4
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["resolved"]["layout"] == "shards" and config["resolved"]["train_images"] == 30
    assert not (tmp_path / "run" / "split.json").exists()


def test_device_input_pipeline_is_refused_with_shards_before_the_run_folder(shards: Path, tmp_path: Path) -> None:
    # The shard streams decode and augment in the loader workers; --input-pipeline device would be ignored.
    with pytest.raises(ValueError, match=r"--input-pipeline device reads image folders.*drop --input-pipeline"):
        shufflenet.train(data=str(shards), out=str(tmp_path / "run"), epochs=1, **{**TINY, "input_pipeline": "device"})
    assert not (tmp_path / "run").exists()


def test_torchrun_uneven_shards_same_steps_on_both_ranks(shards: Path, tmp_path: Path) -> None:
    """Each rank gets 4 shards, one of them 2 samples short; both take 15 samples (4 steps) an epoch, so DDP does
    not hang; validation (a val shard each, of 4 and of 2 images) sums both."""
    run = tmp_path / "run"
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"),
        *("-m", "shufflenet", "train", "--data", str(shards), "--out", str(run), "--model", "shufflenet_v2_x0_5"),
        *("--img-size", "32", "--epochs", "2", "--batch-size", "4", "--device", "cpu", "--workers", "0"),
        *("--checkpoint-every", "3", "--threads", "1", "--quiet"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SHUFFLENET_DEBUG": "1"}
    proc = subprocess.run(
        command, capture_output=True, text=True, timeout=240, env=env, start_new_session=True, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log_text = (run / "train.log").read_text()
    assert "world size 2 (gloo)" in log_text and "15 samples and 4 steps per process and epoch" in log_text
    assert [row["epoch"] for row in read_rows(run / "metrics.csv")] == ["1", "2"]
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["world_size"] == 2 and last["scheduler"]["last_epoch"] == 8
    assert_validated_every_image(run)


@pytest.mark.signals
@pytest.mark.parametrize("workers", [0, 2])
def test_mid_epoch_resume_from_shards_is_exact(
    shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest, workers: int
) -> None:
    """As docs/training.md says: a run stopped mid-epoch continues after the batches it consumed, and ends
    bit for bit where an uninterrupted run does (same world size and loader workers)."""
    if not rerun_in_fresh_interpreter(request):
        return
    options = {**TINY, "data": str(shards), "epochs": 2, "workers": workers, "threads": 1}
    options.update(schedule="cosine", warmup_epochs=0.5)  # the lr changes every step
    shufflenet.train(out=str(tmp_path / "straight"), **options)
    real = signal_once_at_image(monkeypatch, 12, tmp_path / "signalled", shard_data)
    stopped = shufflenet.train(out=str(tmp_path / "cut"), **options)
    assert stopped.stopped == "interrupted" and (tmp_path / "signalled").exists()
    last = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert last["epoch"] == 0 and 0 < last["step"] < 4, (last["epoch"], last["step"])
    monkeypatch.setattr(shard_data, "train_transform", real)
    resumed = shufflenet.train(out=str(tmp_path / "cut"), resume=True, workers=workers, device="cpu", threads=1)
    assert resumed.stopped is None and [row["epoch"] for row in resumed.history] == [1, 2]
    assert_same_run(tmp_path / "straight", tmp_path / "cut")
