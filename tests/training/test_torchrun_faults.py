"""Faults on torchrun's own elastic machinery (gloo, x0_5, 32-px images, a few steps): a SIGKILLed worker is
restarted by torchrun and the run continues from its last checkpoint by itself, ending with the weights of an
uninterrupted run bit for bit; two "nodes" (c10d rendezvous on 127.0.0.1) train as one node with two processes."""

from __future__ import annotations

import csv
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_distributed import write_tree

pytestmark = pytest.mark.slow

WORKER = str(Path(__file__).with_name("torchrun_train.py"))
TRAIN = [
    *("--model", "shufflenet_v2_x0_5", "--img-size", "32", "--epochs", "2", "--batch-size", "2", "--lr", "1e-3"),
    *("--device", "cpu", "--workers", "0", "--threads", "1", "--checkpoint-every", "2", "--quiet"),
]
WALL_TIME = {"epoch_seconds", "train_img_per_s"}


def _torchrun(launch: list[str], run: Path, data: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", *launch, WORKER, "--data", str(data)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    # Own session: torchrun's clean-up of a failed worker group must not reach pytest's process group.
    return subprocess.Popen(
        [*command, "--out", str(run), *TRAIN],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )


def _finish(proc: subprocess.Popen) -> str:
    try:
        output, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
    assert proc.returncode == 0, output[-4000:]
    return output


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "last.pt", weights_only=True)["state_dict"]


def _rows(run: Path) -> list[dict[str, str]]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k not in WALL_TIME} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("faults") / "data"
    write_tree(root / "train", 12, seed=0)  # 24 images: 12 per rank, 6 steps of 2 per epoch
    write_tree(root / "val", 3, seed=1)
    return root


@pytest.fixture(scope="module")
def one_node_two_processes(data: Path) -> Path:
    """The uninterrupted reference: one torchrun, two processes, two epochs."""
    run = data.parent / "reference"
    _finish(_torchrun(["--standalone", "--nproc-per-node=2"], run, data))
    return run


def test_sigkilled_worker_is_restarted_and_ends_bit_identical(data: Path, one_node_two_processes: Path) -> None:
    run = data.parent / "killed"
    # Rank 1 dies at its 21st image: epoch 2, step 5, after the --checkpoint-every 2 saves of steps 2 and 4.
    kill = {"KILL_RANK": "1", "KILL_AT": "21"}
    launch = ["--standalone", "--nproc-per-node=2", "--max-restarts=1", "--monitor-interval=0.2"]
    output = _finish(_torchrun(launch, run, data, kill))
    assert re.search(r"SIGKILL|Signals\.SIGKILL|exitcode\s*:\s*-9", output), output[-3000:]
    log_text = (run / "train.log").read_text()
    assert "torchrun restart 1: continuing from" in log_text
    resumed = re.search(r"resumed \S+ at epoch 1, step (\d+)", log_text)
    assert resumed and int(resumed.group(1)) in (2, 4)  # mid-epoch, from a --checkpoint-every save
    reference = _weights(one_node_two_processes)
    weights = _weights(run)
    assert reference.keys() == weights.keys()
    assert all(torch.equal(reference[k], weights[k]) for k in reference)
    assert _rows(run) == _rows(one_node_two_processes)


def test_two_nodes_train_as_one_node_with_two_processes(data: Path, one_node_two_processes: Path) -> None:
    run = data.parent / "two_nodes"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launch = [
        *("--nnodes=2", "--nproc-per-node=1", "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}"),
        *("--rdzv-id=two-nodes-test", "--local-addr=127.0.0.1"),
    ]
    nodes = [_torchrun(launch, run, data) for _ in range(2)]
    for node in nodes:
        _finish(node)
    assert "world size 2 (gloo)" in (run / "train.log").read_text()
    reference = _weights(one_node_two_processes)
    weights = _weights(run)
    assert all(torch.equal(reference[k], weights[k]) for k in reference)
    assert _rows(run) == _rows(one_node_two_processes)
