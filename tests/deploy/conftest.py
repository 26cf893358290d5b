"""Fixtures of the deploy tests: a trained v2, its ONNX file, batches, calibration data, run folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from deploy.helpers import IMG, RUN_CLASSES, RUN_COUNTS, synthetic_batch, trained
from shufflenet import create_model, deploy
from shufflenet.checkpoints import make_checkpoint, save_checkpoint
from shufflenet.data import make_digits_dataset, write_split
from shufflenet.transforms import Preprocessing


@pytest.fixture(scope="module")
def v2() -> nn.Module:
    return trained("shufflenet_v2_x0_5")


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return synthetic_batch(64, torch.Generator().manual_seed(1))[0]


@pytest.fixture(scope="module")
def calibration() -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return [synthetic_batch(16, generator)[0] for _ in range(4)]


@pytest.fixture(scope="module")
def onnx_file(v2: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "v2.onnx"
    return deploy.export_onnx(v2, path, img_size=IMG, dynamic_batch=True)


@pytest.fixture(scope="module")
def ort_runner(onnx_file: Path) -> deploy.CompiledModel:
    return deploy.load_onnx(onnx_file, "onnxruntime")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder as training leaves it: best.pt and split.json over real PNG class folders."""
    root = tmp_path_factory.mktemp("int8")
    data, run = root / "data", root / "run"
    run.mkdir()
    rng = np.random.default_rng(0)
    train, val = [], []
    for label, name in enumerate(RUN_CLASSES):
        (data / name).mkdir(parents=True)
        for i in range(RUN_COUNTS[name] + 2):
            path = data / name / f"{i}.png"
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
            (val if i < 2 else train).append((path, label))
    write_split(run / "split.json", data, RUN_CLASSES, train, val, seed=0, val_split=0.2)
    torch.manual_seed(0)
    model = create_model("shufflenet_v2_x0_5", num_classes=len(RUN_CLASSES)).eval()
    save_checkpoint(
        run / "best.pt", make_checkpoint(model, "shufflenet_v2_x0_5", RUN_CLASSES, Preprocessing.for_size(32))
    )
    return run


# The demo's recipe, shortened: x0_5 at 32 px reaches ~0.93 top-1 on the digits' validation split in 8 epochs
# (~15 s on one core), far above the 0.1 of chance, so an int8 that loses accuracy shows.
DIGITS_EPOCHS = 8


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder trained on scikit-learn's real digit scans (PNG class folders): best.pt and split.json."""
    from shufflenet.cli.demo import DEMO_OPTIONS
    from shufflenet.training import train

    root = tmp_path_factory.mktemp("digits")
    data = make_digits_dataset(root / "data", image_size=32)
    options = {**DEMO_OPTIONS, "epochs": DIGITS_EPOCHS, "seed": 0, "device": "cpu"}
    train(data=str(data), out=str(root / "run"), progress=False, **options)
    return root / "run"
