"""`--workers 2`: two uvicorn processes on one port, and /metrics counting both whichever answers."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from serve.helpers import start_server
from shufflenet.serve.model import runtime_threads


def worker_images(text: str) -> dict[str, float]:
    """Images per worker pid from the exposition's shufflenet_worker_images{pid="..."} lines."""
    return {m[1]: float(m[2]) for m in re.finditer(r'shufflenet_worker_images\{pid="(\d+)"\} (\S+)', text)}


def test_two_workers_metrics_add_up(digits_run: Path, val_images: list[Path], tmp_path: Path):
    server = start_server(digits_run / "best.pt", tmp_path, "--workers", "2", "--max-batch-delay-ms", "0", threads=None)
    try:
        for _ in range(1200):  # /readyz answered 200 from one worker; the other may still be warming up
            if server.log.read_text().count("ready: shufflenet_v2_x0_5") == 2:
                break
            time.sleep(0.1)
        assert server.log.read_text().count("ready: shufflenet_v2_x0_5") == 2
        assert f"2 worker(s) x {runtime_threads(2)} runtime thread(s)" in server.log.read_text()  # cores / 2
        body = val_images[0].read_bytes()
        sent = 0
        with ThreadPoolExecutor(8) as pool:  # fresh connections, 8 at a time: both workers accept some
            for _ in range(10):
                statuses = list(pool.map(lambda _: server.classify(body)[0], range(16)))
                assert statuses == [200] * 16
                sent += 16
                per_worker = worker_images(server.request("GET", "/metrics")[2].decode())
                if len(per_worker) == 2 and min(per_worker.values()) > 0:
                    break
        assert len(per_worker) == 2 and min(per_worker.values()) > 0, per_worker
        assert sum(per_worker.values()) == sent
        for _ in range(4):  # any worker answers /metrics with the sum over both
            assert server.metric('shufflenet_requests_total{endpoint="/v1/classify",status="200"}') == sent
            assert server.metric("shufflenet_images_total") == sent
            assert server.metric("shufflenet_batch_size_sum") == sent
            assert server.metric('shufflenet_request_seconds_count{endpoint="/v1/classify"}') == sent
        assert server.metric("shufflenet_queue_depth") == 0
    finally:
        assert server.stop() in (0, -15)
