"""Real `shufflenet serve` processes on 127.0.0.1 for the tests, and a small HTTP client for them."""

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

API_KEY = "k3y-for-the-serve-tests-0123456789"


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
    if wait:
        wait_ready(server)
    return server


def wait_ready(server: Server) -> Server:
    """Poll /readyz until 200, noting each answer in ``server.ready_statuses``."""
    proc, log = server.proc, server.log
    deadline = time.monotonic() + 120
    while True:
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
