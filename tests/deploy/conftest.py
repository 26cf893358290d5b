"""Module-scoped fixtures of the deployment tests: a trained v2, its ONNX file, batches, calibration data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from deploy.helpers import IMG, synthetic_batch, trained
from shufflenet import deploy


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
