"""``shufflenet serve``: an HTTP service for a trained model with dynamic batching, limits and metrics.

:mod:`~shufflenet.serve.app` (routes, start-up, shutdown), :mod:`~shufflenet.serve.batcher` (the dynamic
batching queue), :mod:`~shufflenet.serve.limits` (what is accepted), :mod:`~shufflenet.serve.model` (the
compiled model and its card), :mod:`~shufflenet.serve.metrics` (Prometheus), ``page/`` (the web page).
FastAPI, uvicorn and prometheus-client come with the ``[serve]`` extra; this package imports them lazily.
"""

from __future__ import annotations

from shufflenet.serve.limits import Limits

__all__ = ["Limits"]
