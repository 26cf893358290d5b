"""--resume is exact: a run stopped mid-epoch and resumed ends bit for bit where an uninterrupted run does."""

from __future__ import annotations

import math
import os
import random
import signal
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
import torch

import shufflenet
from conftest import TINY, read_rows, rerun_in_fresh_interpreter
from shufflenet.training import loaders, loop

WALL_TIME_COLUMNS = {"epoch_seconds", "train_img_per_s"}


def assert_same(a: Any, b: Any, where: str) -> None:
    """Nested dicts/lists of tensors and numbers, equal bit for bit."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        keys = set(a) - WALL_TIME_COLUMNS - {"seconds"}
        assert keys == set(b) - WALL_TIME_COLUMNS - {"seconds"}, where
        for key in keys:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


SAVED_STATE = ("state_dict", "optimizer", "scheduler", "scaler", "ema", "rng", "ranks", "history", "epoch")


def assert_same_run(a: Path, b: Path) -> None:
    """Two run folders hold the same last.pt, best.pt, best_ema.pt and metrics.csv, bit for bit."""
    for name in ("last.pt", "best.pt", "best_ema.pt"):
        assert (a / name).is_file() == (b / name).is_file(), name
        if not (a / name).is_file():
            continue
        x, y = (torch.load(run / name, weights_only=True) for run in (a, b))
        for key in (*SAVED_STATE, "best_epoch", "val_acc"):
            if key in x or key in y:
                assert_same(x.get(key), y.get(key), f"{name}:{key}")
    rows_a, rows_b = read_rows(a / "metrics.csv"), read_rows(b / "metrics.csv")
    assert [{k: v for k, v in r.items() if k not in WALL_TIME_COLUMNS} for r in rows_a] == [
        {k: v for k, v in r.items() if k not in WALL_TIME_COLUMNS} for r in rows_b
    ]


def signal_once_at_image(
    monkeypatch: pytest.MonkeyPatch, at_image: int, flag: Path, module: ModuleType = loaders
) -> Callable:
    """The ``at_image``-th augmented image (in whichever process transforms it) sends SIGINT once to the main
    process and to its own process, as a Ctrl-C to the process group does; loader workers must ignore it.
    ``module`` is where the trainer finds ``train_transform`` (returned, to put back)."""
    main_pid = os.getpid()
    real = module.train_transform

    def interrupting(*args: object, **kwargs: object) -> Callable:
        transform = real(*args, **kwargs)
        calls = {"n": 0}

        def apply(image: object) -> torch.Tensor:
            calls["n"] += 1
            if calls["n"] == at_image:
                try:
                    os.close(os.open(flag, os.O_CREAT | os.O_EXCL))
                except FileExistsError:
                    pass
                else:
                    os.kill(main_pid, signal.SIGINT)
                    if os.getpid() != main_pid:
                        os.kill(os.getpid(), signal.SIGINT)
            return transform(image)

        return apply

    monkeypatch.setattr(module, "train_transform", interrupting)
    return real


@pytest.mark.signals
@pytest.mark.parametrize(("workers", "cache"), [(0, True), (2, False)])
def test_stopped_and_resumed_run_is_bit_identical(
    image_tree: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
    workers: int,
    cache: bool,
) -> None:
    if not rerun_in_fresh_interpreter(request):
        return
    options = {**TINY, "data": str(image_tree), "epochs": 2, "workers": workers, "cache_images": cache}
    options.update(threads=1, schedule="cosine", warmup_epochs=0.5)  # the lr changes every step
    shufflenet.train(out=str(tmp_path / "straight"), **options)
    # 26 images, batches of 8: image 12 is in the second batch (of the first epoch with 0 workers).
    real = signal_once_at_image(monkeypatch, 12, tmp_path / "signalled")
    stopped = shufflenet.train(out=str(tmp_path / "cut"), **options)
    assert stopped.stopped == "interrupted" and (tmp_path / "signalled").exists()
    last = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    # 26 images in batches of 8: 4 steps an epoch. With workers the signal comes while they prefetch, so
    # the exact step varies, but it is inside the first epoch.
    assert last["epoch"] == 0 and 0 < last["step"] < 4, (last["epoch"], last["step"])
    if workers == 0:
        # The step whose batch was being loaded when the signal came finishes: 2 steps, not 1.
        assert last["step"] == 2
    monkeypatch.setattr(loaders, "train_transform", real)
    resumed = shufflenet.train(out=str(tmp_path / "cut"), resume=True, workers=workers, device="cpu", threads=1)
    assert resumed.stopped is None and [row["epoch"] for row in resumed.history] == [1, 2]
    assert_same_run(tmp_path / "straight", tmp_path / "cut")


def test_augmentation_does_not_depend_on_loader_workers(
    image_tree: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Each image's crop and flip are seeded by (seed, epoch, index): 0 or 2 worker processes, same weights."""
    # Forked loader workers flush copies of the parent's stdio buffers when they exit, which corrupts an
    # xdist worker's channel: run where no xdist channel is.
    if not rerun_in_fresh_interpreter(request):
        return
    options = {**TINY, "data": str(image_tree), "epochs": 1, "cache_images": False, "threads": 1}
    shufflenet.train(out=str(tmp_path / "w0"), **{**options, "workers": 0})
    shufflenet.train(out=str(tmp_path / "w2"), **{**options, "workers": 2})
    assert "2 loader workers" in (tmp_path / "w2" / "train.log").read_text()
    assert "decoded images cached in memory" not in (tmp_path / "w2" / "train.log").read_text()
    assert_same_run(tmp_path / "w0", tmp_path / "w2")


def test_samples_get_their_own_augmentation_seed(image_tree: Path) -> None:
    samples, names = shufflenet.data.scan_image_folder(image_tree / "val")
    pre = shufflenet.transforms.Preprocessing.for_size(32)
    dataset = shufflenet.data.ImageFolderDataset(samples, names, shufflenet.transforms.train_transform(pre))
    seeded = loaders.SeededSamples(dataset, seed=0)
    torch.manual_seed(1)
    first = seeded[(0, 3)][0]
    state = torch.get_rng_state()
    torch.manual_seed(2)
    assert torch.equal(seeded[(0, 3)][0], first)  # the global RNG neither decides nor moves
    torch.manual_seed(1)
    seeded[(0, 3)]
    assert torch.equal(torch.get_rng_state(), state)
    assert any(not torch.equal(seeded[(epoch, 3)][0], first) for epoch in range(1, 6))  # new crops each epoch


def cut_after_step(monkeypatch: pytest.MonkeyPatch, cut_step: int) -> None:
    """Stop the run after step ``cut_step`` of its first epoch, as a Ctrl-C during that step does."""
    real, fired = loop._check, []

    def check(pending: list, counts: list, sums: torch.Tensor, step: int, stop: Any, dist: Any) -> Any:
        if step == cut_step and not fired:
            fired.append(step)
            stop.count += 1
        return real(pending, counts, sums, step, stop, dist)

    monkeypatch.setattr(loop, "_check", check)


def scramble_global_rng() -> None:
    """What a fresh process would have: nothing left over from the interrupted run."""
    torch.manual_seed(12345)
    random.seed(12345)
    np.random.seed(12345)


FEATURES = {
    "ema": {"ema_epochs": 0.5},
    "mixup_cutmix": {"mixup_alpha": 0.4, "cutmix_alpha": 1.0},
    "trivialaugment": {"auto_augment": "trivialaugment"},
    "random_erase": {"random_erase": 0.5},
    "fp16_grad_scaler": {},
}


@pytest.mark.parametrize("feature", list(FEATURES))
def test_resume_is_exact_with_each_recipe_feature(
    feature: str, image_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cut in the middle of the first epoch and resumed (global RNG scrambled in between, as a new process
    would have it), a run ends as the uninterrupted one: weights, optimizer, schedule, scaler, EMA, RNG,
    best.pt, best_ema.pt and metrics.csv, bit for bit."""
    if feature == "fp16_grad_scaler":
        # --amp fp16 is refused on CPUs (bf16 is the CPU's half type), but autocast and GradScaler run on
        # them: this takes the loop's fp16 path (loss scaling, skipped steps, the scaler's state in last.pt).
        monkeypatch.setattr(loop, "resolve_amp", lambda mode, device: torch.float16)
    options = {**TINY, "data": str(image_tree), "epochs": 2, "threads": 1, "cache_images": True, **FEATURES[feature]}
    options.update(schedule="cosine", warmup_epochs=0.5)
    shufflenet.train(out=str(tmp_path / "straight"), **options)
    with monkeypatch.context() as cut:
        cut_after_step(cut, 2)
        stopped = shufflenet.train(out=str(tmp_path / "cut"), **options)
    assert stopped.stopped == "interrupted" and "step 2/4" in stopped.message  # 26 images, batches of 8
    last = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert (last["epoch"], last["step"]) == (0, 2) and stopped.history == []
    if feature == "fp16_grad_scaler":
        assert last["scaler"]["scale"] < 65536.0  # it skipped an overflowing step and backed off
    scramble_global_rng()
    resumed = shufflenet.train(out=str(tmp_path / "cut"), resume=True, device="cpu", threads=1)
    assert resumed.stopped is None and [row["epoch"] for row in resumed.history] == [1, 2]
    assert_same_run(tmp_path / "straight", tmp_path / "cut")


def test_resume_from_an_older_lambdalr_last_pt_is_exact(
    image_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """last.pt files written before the schedule used torch's LinearLR/CosineAnnealingLR hold LambdaLR state:
    such a run continues on the same schedule at the same step, and ends as the uninterrupted run."""
    options = {**TINY, "data": str(image_tree), "epochs": 2, "threads": 1, "cache_images": True}
    options.update(schedule="cosine", warmup_epochs=0.5)
    shufflenet.train(out=str(tmp_path / "straight"), **options)
    with monkeypatch.context() as cut:
        cut_after_step(cut, 2)
        shufflenet.train(out=str(tmp_path / "cut"), **options)
    last = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    older = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    older.last_epoch = last["scheduler"]["last_epoch"]
    last["scheduler"] = older.state_dict()
    torch.save(last, tmp_path / "cut" / "last.pt")
    resumed = shufflenet.train(out=str(tmp_path / "cut"), resume=True, device="cpu", threads=1)
    assert resumed.stopped is None
    assert_same_run(tmp_path / "straight", tmp_path / "cut")


def test_resume_with_more_epochs_follows_the_longer_schedule(image_tree: Path, tmp_path: Path) -> None:
    """--resume --epochs N stretches the cosine over N epochs from where the run is, as a run of N epochs."""
    options = {
        **TINY,
        "data": str(image_tree),
        "threads": 1,
        "cache_images": True,
        "schedule": "cosine",
        "warmup_epochs": 0,
    }
    shufflenet.train(out=str(tmp_path / "run"), epochs=1, **options)
    resumed = shufflenet.train(out=str(tmp_path / "run"), resume=True, epochs=3, device="cpu", threads=1)
    # 4 steps an epoch, 12 in all: metrics.csv's lr is the epoch's last step's.
    for row in resumed.history[1:]:
        last_step = 4 * row["epoch"] - 1
        assert row["lr"] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * last_step / 12)), rel=1e-9)
