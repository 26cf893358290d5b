"""DistributedDataParallel: a real 2-process torchrun (gloo on CPU) writes one run folder from rank 0."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def write_tree(root: Path, per_class: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for name, color in {"cat": (200, 40, 40), "dog": (40, 40, 200)}.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.random((32, 32, 3)) * 80 + np.array(color) - 40).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.jpg")


def test_torchrun_two_processes_gloo(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_tree(data / "train", 9, seed=0)  # 18 images: 9 per process
    write_tree(data / "val", 3, seed=1)  # 6 images: validated in two shards of 3
    run = tmp_path / "run"
    command = [
        *(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"),
        *("-m", "shufflenet", "train", "--data", str(data), "--out", str(run), "--model", "shufflenet_v2_x0_5"),
        *("--img-size", "32", "--epochs", "1", "--batch-size", "4", "--lr", "1e-3", "--device", "cpu", "--quiet"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SHUFFLENET_DEBUG": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    log_text = (run / "train.log").read_text()
    assert "world size 2 (gloo)" in log_text
    assert log_text.count("epoch 1/1") == 1  # one writer: rank 0
    with open(run / "metrics.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    # Validation sums both shards: accuracy is a multiple of 1/6 over the 6 images.
    assert abs(float(row["val_acc"]) * 6 - round(float(row["val_acc"]) * 6)) < 1e-4
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["world_size"] == 2 and last["epoch"] == 1
    assert not any(k.startswith("module.") for k in last["state_dict"])
    assert json.loads((run / "config.json").read_text())["resolved"]["world_size"] == 2
    assert json.loads((run / "confusion_matrix.json").read_text())["num_images"] == 6
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == []  # no temp files left behind
