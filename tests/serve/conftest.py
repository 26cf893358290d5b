"""A real checkpoint trained on the real digit scans, and real `shufflenet serve` processes on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="shufflenet serve needs the [serve] extra")
pytest.importorskip("prometheus_client", reason="shufflenet serve needs the [serve] extra")

API_KEY = "k3y-for-the-serve-tests-0123456789"


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """best.pt of x0_5 trained 2 epochs at 32 px on scikit-learn's 1,797 real digit scans (PNG folders)."""
    from shufflenet.data import make_digits_dataset
    from shufflenet.training import train

    root = tmp_path_factory.mktemp("serve-digits")
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A `shufflenet serve` process; ``ready_statuses`` are the /readyz answers seen while it started."""

    proc: subprocess.Popen
    port: int
    log: Path
    ready_statuses: list[int] = field(default_factory=list)

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None, timeout: float = 30
    ) -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def classify(self, body: bytes, content_type: str = "image/png", query: str = "", **headers: str) -> tuple:
        status, head, data = self.request(
            "POST", "/v1/classify" + query, body, {"Content-Type": content_type, **headers}
        )
        return status, head, json.loads(data) if data else None

    def metric(self, name: str) -> float:
        """The value of one sample line of /metrics (``name`` with its labels), 0 when absent."""
        _, _, text = self.request("GET", "/metrics")
        for line in text.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return 0.0

    def rss_mb(self) -> float:
        """Resident memory of the server process."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_server(weights: Path, tmp: Path, *options: str, wait: bool = True) -> Server:
    """`python -m shufflenet serve` on a free 127.0.0.1 port, waited for until /readyz says 200."""
    port = free_port()
    log = tmp / f"serve-{port}.log"
    command = [sys.executable, "-m", "shufflenet", "serve", "--weights", str(weights), "--port", str(port)]
    command += ["--backend", "torch", *options]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))
    server = Server(proc, port, log)
    deadline = time.monotonic() + 120
    while wait:
        if proc.poll() is not None:
            raise AssertionError(f"serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            status = server.request("GET", "/readyz", timeout=5)[0]
        except OSError:
            status = None
        if status is not None:
            server.ready_statuses.append(status)
        if status == 200:
            break
        if time.monotonic() > deadline:
            server.stop()
            raise AssertionError(f"serve not ready in 120 s:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)
    return server


@pytest.fixture(scope="session")
def api_server(digits_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Server:
    """The service with small limits and a 20 ms batch window (no key: the page test shares it)."""
    tmp = tmp_path_factory.mktemp("serve-api")
    options = ["--max-body-mb", "0.5", "--max-pixels", "1000000", "--max-images", "8", "--max-batch-delay-ms", "20"]
    server = start_server(digits_run / "best.pt", tmp, *options)
    yield server
    server.stop()
