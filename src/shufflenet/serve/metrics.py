"""Prometheus metrics of the service (prometheus-client), correct across ``--workers`` processes.

With several workers, ``PROMETHEUS_MULTIPROC_DIR`` (set by :func:`shufflenet.serve.app.serve` before the
workers start) makes every process write its values to files there, and ``/metrics`` sums them, so any
worker answers for all. prometheus-client reads that variable when it is first imported: this module
imports it only inside :class:`Metrics`.
"""

from __future__ import annotations

import os
import time
from typing import Any

# Batch sizes are powers of two up to the largest sensible --max-batch-size.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Paths counted under their own label; anything else a client asks for is "other" (bounded label values).
ENDPOINTS = ("/v1/classify", "/v1/model", "/healthz", "/readyz", "/metrics", "/")


def multiprocess_dir() -> str | None:
    """The folder shared by the workers' metric files, or None in a single process."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class Metrics:
    """The service's metrics in a registry of their own (several apps may live in one test process)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry(auto_describe=True)
        options: dict[str, Any] = {"registry": self.registry}
        self.requests = Counter(
            "shufflenet_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], **options
        )
        self.latency = Histogram(
            "shufflenet_request_seconds", "HTTP request latency", ["endpoint"], buckets=LATENCY_BUCKETS, **options
        )
        self.batch_size = Histogram(
            "shufflenet_batch_size", "images per inference batch", buckets=BATCH_BUCKETS, **options
        )
        self.inference = Histogram(
            "shufflenet_inference_seconds", "runtime time per batch", buckets=LATENCY_BUCKETS, **options
        )
        self.images = Counter("shufflenet_images", "images classified", **options)
        # One series per worker process (label pid) with --workers: how the load spread over them.
        self.worker_images = Gauge(
            "shufflenet_worker_images", "images this worker classified", multiprocess_mode="all", **options
        )
        self.queue_depth = Gauge(
            "shufflenet_queue_depth", "images waiting for the model", multiprocess_mode="livesum", **options
        )
        self.arriving = Gauge(
            "shufflenet_requests_arriving",
            "classify requests being received or decoded (the batch window waits for them)",
            multiprocess_mode="livesum",
            **options,
        )
        self.rejections = Counter("shufflenet_rejections", "requests refused, by reason", ["reason"], **options)

    def observe_batch(self, size: int, seconds: float) -> None:
        """One inference batch ran."""
        self.batch_size.observe(size)
        self.inference.observe(seconds)
        self.images.inc(size)
        self.worker_images.inc(size)

    def exposition(self) -> tuple[bytes, str]:
        """The text format body and its content type (summed over workers in multiprocess mode)."""
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess

        if multiprocess_dir():
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    @staticmethod
    def process_exited() -> None:
        """Drop this worker's live gauges from the shared files (multiprocess mode)."""
        if multiprocess_dir():
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(os.getpid())


class RequestMetricsMiddleware:
    """ASGI middleware counting every HTTP request by endpoint and status, with its latency."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        """Pass the request on, noting the status it was answered with."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"
        started = time.perf_counter()
        status = [500]  # unless the app sends a response start, the client saw nothing useful

        async def send_noting_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            self.metrics.requests.labels(endpoint, str(status[0])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
