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
from collections.abc import Iterator
from contextlib import contextmanager
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


@contextmanager
def upload_in_progress(server: Server, body: bytes, **headers: str) -> Iterator[socket.socket]:
    """A classify request whose body is half sent while the block runs: the batcher waits for it.

    The socket is yielded: send ``body[len(body) // 2:]`` to finish the request, or leave the block to hang up.
    """
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    head = f"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {len(body)}\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    try:
        before = server.metric("shufflenet_requests_arriving")
        sock.sendall(head.encode() + b"\r\n" + body[: len(body) // 2])
        for _ in range(200):  # until the server has started the request (and announced it to the batcher)
            if server.metric("shufflenet_requests_arriving") > before:
                break
            time.sleep(0.05)
        assert server.metric("shufflenet_requests_arriving") == before + 1
        yield sock
    finally:
        sock.close()


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 response with a Content-Length."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _content_length(data):
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"the server closed the connection after {data[:200]!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head[9:12]), body


def _content_length(data: bytes) -> int:
    head = data.partition(b"\r\n\r\n")[0].lower()
    return int(head.split(b"content-length:")[1].split(b"\r\n")[0]) if b"content-length:" in head else 0


def start_server(weights: Path, tmp: Path, *options: str, wait: bool = True, threads: int | None = 1) -> Server:
    """`python -m shufflenet serve` on a free 127.0.0.1 port, waited for until /readyz says 200.

    One runtime thread unless told (``threads=None``: serve's own choice, cores / workers): steady timings on a
    busy test machine.
    """
    port = free_port()
    log = tmp / f"serve-{port}.log"
    command = [sys.executable, "-m", "shufflenet", "serve", "--weights", str(weights), "--port", str(port)]
    command += ["--backend", "torch", *(["--threads", str(threads)] if threads else []), *options]
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
