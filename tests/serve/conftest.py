"""A real checkpoint trained on the real digit scans, and real `shufflenet serve` processes on 127.0.0.1."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from serve.helpers import Server, start_server

pytest.importorskip("fastapi", reason="shufflenet serve needs the [serve] extra")
pytest.importorskip("prometheus_client", reason="shufflenet serve needs the [serve] extra")


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """best.pt of x0_5 trained 2 epochs at 32 px on scikit-learn's 1,797 real digit scans (PNG folders).

    Trained once per test session: xdist workers share it through their common base folder and a lock.
    """
    from filelock import FileLock

    from shufflenet.data import make_digits_dataset
    from shufflenet.training import train

    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "serve-digits"
    with FileLock(f"{root}.lock"):
        if (root / "run" / "best.pt").is_file():
            return root / "run"
        data = make_digits_dataset(root / "data", image_size=32, layout="train/val")
        train(
            data=str(data),
            out=str(root / "run"),
            overwrite=True,
            progress=False,
            model="shufflenet_v2_x0_5",
            img_size=32,
            epochs=2,
            batch_size=64,
            lr=5e-3,
            crop_scale=0.6,
            hflip=False,
            threads=1,
            workers=0,
            device="cpu",
            seed=0,
        )
    return root / "run"


@pytest.fixture(scope="session")
def val_images(digits_run: Path) -> list[Path]:
    """Two validation scans per digit."""
    val = digits_run.parent / "data" / "val"
    return [path for digit in range(10) for path in sorted((val / str(digit)).glob("*.png"))[:2]]


@pytest.fixture(scope="session")
def api_server(digits_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Server:
    """The service with small limits and a 20 ms batch window (no key: the page test shares it)."""
    tmp = tmp_path_factory.mktemp("serve-api")
    options = ["--max-body-mb", "0.5", "--max-pixels", "1000000", "--max-images", "8", "--max-batch-delay-ms", "20"]
    server = start_server(digits_run / "best.pt", tmp, *options)
    yield server
    server.stop()
