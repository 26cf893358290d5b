"""The HTTP service (FastAPI on uvicorn): routes, start-up (load, warm up, then ready) and graceful shutdown.

``create_app(config)`` builds the app; ``serve(config)`` runs it with uvicorn, in ``config.workers`` processes.
Images are decoded on a thread pool (never on the event loop) and classified by the :class:`Batcher`'s
single inference thread.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from shufflenet.serve.batcher import Batcher, BatcherClosedError, QueueFullError
from shufflenet.serve.limits import MULTIPART, Limits, Rejection, check_content_type, image_to_input, is_raw_image_type
from shufflenet.serve.metrics import Metrics, RequestMetricsMiddleware
from shufflenet.serve.model import ServedModel, cpu_cores, load_served_model, runtime_threads, warm_up

log = logging.getLogger("shufflenet.serve")
PAGE = Path(__file__).resolve().parent / "page"
CONFIG_ENV = "SHUFFLENET_SERVE_CONFIG"  # how `--workers` processes get the configuration
MAX_TOP_K = 1000


@dataclass
class ServeConfig:
    """Everything `shufflenet serve` is told: the weights, where to listen, batching, limits, security."""

    weights: str
    backend: str = "auto"
    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 16
    max_batch_delay_ms: float = 5.0
    workers: int = 1
    runtime_threads: int | None = None  # None: cores / workers
    api_key_file: str | None = None
    cors_origins: list[str] = field(default_factory=list)
    limits: Limits = field(default_factory=Limits)

    def validate(self) -> ServeConfig:
        """Raise ValueError naming the first bad option."""
        if self.max_batch_size < 1 or self.max_batch_delay_ms < 0 or self.workers < 1:
            raise ValueError(
                f"--max-batch-size and --workers must be >= 1 and --max-batch-delay-ms >= 0; got "
                f"{self.max_batch_size}, {self.workers}, {self.max_batch_delay_ms}"
            )
        if self.runtime_threads is not None and self.runtime_threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.runtime_threads}")
        self.limits.validate()
        read_api_key(self.api_key_file)
        return self

    @property
    def threads(self) -> int:
        """Runtime threads per worker: ``--threads``, else cores / workers."""
        return self.runtime_threads or runtime_threads(self.workers)

    def to_json(self) -> str:
        """The configuration for worker processes."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeConfig:
        """Inverse of :meth:`to_json`."""
        data = json.loads(text)
        return cls(**{**data, "limits": Limits(**data["limits"])})


def read_api_key(path: str | None) -> str | None:
    """The key in ``--api-key-file`` (surrounding whitespace removed), None without one."""
    if path is None:
        return None
    try:
        key = Path(path).read_text().strip()
    except OSError as err:
        raise ValueError(f"--api-key-file {path}: cannot read it ({err.strerror or err})") from None
    if len(key) < 16:
        raise ValueError(f"--api-key-file {path}: the key must be at least 16 characters, got {len(key)}")
    return key


class _State:
    """What the routes share: the model once loaded, the batcher, the decoding pool, readiness."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.api_key = read_api_key(config.api_key_file)
        self.served: ServedModel | None = None
        self.batcher: Batcher | None = None
        self.error: str | None = None
        self.draining = False
        decoders = max(2, runtime_threads(config.workers))
        self.decoders = ThreadPoolExecutor(max_workers=decoders, thread_name_prefix="shufflenet-decode")

    def load(self) -> None:
        """Load, compile and warm up the model, then start the batcher (on a thread: /healthz answers meanwhile)."""
        config = self.config
        try:
            started = time.perf_counter()
            served = load_served_model(config.weights, config.backend, config.threads, config.max_batch_size)
            warm_seconds = warm_up(served, (1, config.max_batch_size))
            self.batcher = Batcher(
                served.probabilities,
                config.max_batch_size,
                config.max_batch_delay_ms / 1000,
                config.limits.max_queue,
                on_batch=self.metrics.observe_batch,
                on_depth=self.metrics.queue_depth.set,
                on_arriving=self.metrics.arriving.set,
            )
            self.served = served
            log.info(
                "ready: %s as %s/%s in %.1f s (warm-up %.2f s), pid %d",
                served.card["name"],
                served.runner.backend,
                served.runner.precision,
                time.perf_counter() - started,
                warm_seconds,
                os.getpid(),
            )
        except Exception as err:  # readiness reports it; the process stays up to say why
            self.error = f"{type(err).__name__}: {err}"
            log.error("cannot serve %s: %s", config.weights, self.error)

    @property
    def ready(self) -> bool:
        """Loaded, warmed up and not draining."""
        return self.batcher is not None and not self.draining

    def close(self) -> None:
        """Finish the queued images, then stop the threads."""
        self.draining = True
        if self.batcher is not None:
            self.batcher.close(timeout=self.config.limits.timeout_s)
        self.decoders.shutdown(wait=True)
        self.metrics.process_exited()


def create_app(config: ServeConfig) -> FastAPI:
    """The FastAPI app for ``config`` (it starts loading the model when uvicorn starts it)."""
    state = _State(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> Any:
        threading.Thread(target=state.load, name="shufflenet-load", daemon=True).start()
        yield
        log.info("shutting down: finishing %d queued image(s)", state.batcher.depth if state.batcher else 0)
        await asyncio.get_running_loop().run_in_executor(None, state.close)

    app = FastAPIOffline(  # FastAPI whose /docs serves Swagger UI from the package, not from a CDN
        redoc_url=None,
        title="shufflenet serve",
        summary="Image classification with a ShuffleNet checkpoint, batched dynamically on the CPU",
        lifespan=lifespan,
    )
    app.state.serve = state
    if config.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=config.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(RequestMetricsMiddleware, metrics=state.metrics)

    @app.exception_handler(Rejection)
    async def rejected(request: Request, err: Rejection) -> JSONResponse:
        state.metrics.rejections.labels(err.reason).inc()
        return JSONResponse({"error": err.reason, "detail": err.message}, err.status, headers=err.headers)

    async def authorized(request: Request) -> None:  # async: FastAPI runs a plain def on a thread pool
        check_api_key(state.api_key, request.headers.get("authorization"))

    def require_ready() -> ServedModel:
        if not state.ready or state.served is None:
            raise Rejection(503, "not_ready", _not_ready_message(state), {"Retry-After": "1"})
        return state.served

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(PAGE / "index.html", media_type="text/html")

    app.mount("/page", StaticFiles(directory=PAGE), name="page")

    @app.get("/healthz", summary="the process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="200 once the model is loaded and warmed up; 503 before, after a failure, draining")
    async def readyz() -> JSONResponse:
        if state.ready:
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": _not_ready_message(state)}, 503, headers={"Retry-After": "1"})

    @app.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def metrics() -> Response:
        body, content_type = state.metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get("/v1/model", summary="the model card", dependencies=[Depends(authorized)])
    async def model_card() -> dict[str, Any]:
        served = require_ready()
        batching = {"max_batch_size": config.max_batch_size, "max_batch_delay_ms": config.max_batch_delay_ms}
        limits = {"max_body_bytes": config.limits.max_body_bytes, "max_images": config.limits.max_images}
        return {**served.card, "batching": batching, "limits": limits, "workers": config.workers}

    # No FastAPI parameters or dependencies on the hot path: the key, top_k and the body are read here, which
    # saves the dependency machinery's per-request cost; openapi_extra documents what it takes.
    @app.post(
        "/v1/classify",
        summary="classify images: one raw image body, or multipart/form-data with one or more image files",
        openapi_extra={
            "parameters": [
                {
                    "name": "top_k",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K, "default": 5},
                }
            ],
            "requestBody": {
                "content": {
                    "image/*": {"schema": {"type": "string", "format": "binary"}},
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                        }
                    },
                }
            },
        },
    )
    async def classify(request: Request) -> Response:
        started = time.perf_counter()
        deadline = started + config.limits.timeout_s
        check_api_key(state.api_key, request.headers.get("authorization"))
        served = require_ready()
        top_k = _top_k(request.query_params.get("top_k"))
        kind = check_content_type(request.headers.get("content-type"))
        with state.batcher.arriving():  # the batcher may wait a little for these images, not longer
            try:
                body = await _read_body(request, config.limits.max_body_bytes)
            except ClientDisconnect:
                state.metrics.rejections.labels("client_disconnected").inc()
                return Response(status_code=499)  # nobody is listening; the status only reaches the metrics
            uploads = await _split_images(request, body, kind, config.limits.max_images)
            inputs = await _with_deadline(
                asyncio.get_running_loop().run_in_executor(state.decoders, _decode_all, uploads, served, config.limits),
                deadline,
            )
            decoded = time.perf_counter()
            futures = _submit(state.batcher, inputs, top_k)
        results = await _with_deadline(_gather(futures), deadline)
        return _response(served, results, uploads, started, decoded)

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Rejection(413, "body_too_large", f"the body is {declared} bytes; the limit is {limit} (--max-body-mb)")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Rejection(413, "body_too_large", f"the body exceeds the limit of {limit} bytes (--max-body-mb)")
        chunks.append(chunk)
    return b"".join(chunks)


async def _split_images(request: Request, body: bytes, kind: str, max_images: int) -> list[tuple[str, bytes]]:
    """(name, bytes) of each image: the body itself, or each file part of a multipart body."""
    if kind != MULTIPART:
        return [("image", body)]

    async def stream() -> Any:
        yield body

    parser = MultiPartParser(request.headers, stream(), max_files=max_images, max_fields=16)
    try:
        form = await parser.parse()
    except MultiPartException as err:
        status, reason = (413, "too_many_images") if "Too many files" in str(err) else (422, "bad_multipart")
        raise Rejection(status, reason, f"multipart body: {err} (at most {max_images} images per request)") from None
    uploads = []
    for key, value in form.multi_items():
        if not isinstance(value, UploadFile):
            continue
        name = value.filename or key
        if not is_raw_image_type(value.content_type):
            raise Rejection(415, "unsupported_type", f"part {name!r} has Content-Type {value.content_type!r}")
        uploads.append((name, await value.read()))
        await value.close()
    if not uploads:
        raise Rejection(422, "no_images", "the multipart body has no file parts; send images as files")
    return uploads


def check_api_key(key: str | None, authorization: str | None) -> None:
    """401 unless ``authorization`` is ``Bearer <key>`` (nothing to check without a key)."""
    if key is None:
        return
    scheme, _, given = (authorization or "").partition(" ")
    # compare_digest: the time taken does not tell how much of a guessed key was right.
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
        raise Rejection(
            401, "unauthorized", "send the key as 'Authorization: Bearer <key>'", {"WWW-Authenticate": "Bearer"}
        )


def _top_k(value: str | None) -> int:
    if value is None:
        return 5
    if not value.isdigit() or not 1 <= int(value) <= MAX_TOP_K:
        raise Rejection(422, "bad_top_k", f"top_k={value!r}: give an integer from 1 to {MAX_TOP_K}")
    return int(value)


def _decode_all(uploads: list[tuple[str, bytes]], served: ServedModel, limits: Limits) -> list[Any]:
    return [
        image_to_input(data, name, served.transform, limits.max_pixels, served.draft_size) for name, data in uploads
    ]


def _submit(batcher: Batcher, inputs: list[Any], top_k: int) -> list[asyncio.Future]:
    """Queue every image of a request, or none: the queue being full or closed is a 503."""
    futures = []
    try:
        for image in inputs:
            futures.append(batcher.submit(image, top_k))
    except (QueueFullError, BatcherClosedError) as err:
        for future in futures:
            future.cancel()
        reason = "queue_full" if isinstance(err, QueueFullError) else "shutting_down"
        raise Rejection(503, reason, f"{err}; retry shortly", {"Retry-After": "1"}) from None
    return futures


async def _gather(futures: list[asyncio.Future]) -> list[Any]:
    try:
        return await asyncio.gather(*futures)
    except asyncio.CancelledError:
        for future in futures:
            future.cancel()  # a timed-out or disconnected request's images never reach the model
        raise


async def _with_deadline(awaitable: Any, deadline: float) -> Any:
    try:
        return await asyncio.wait_for(awaitable, max(0.0, deadline - time.perf_counter()))
    except asyncio.TimeoutError:
        raise Rejection(504, "timeout", "the request took longer than the service's timeout (--timeout-s)") from None


def _response(
    served: ServedModel, results: list[Any], uploads: list[tuple[str, bytes]], started: float, decoded: float
) -> Response:
    names = served.card["classes"]
    predictions = []
    for (name, _), result in zip(uploads, results, strict=True):
        top = [
            {"label": names[i], "index": i, "probability": p}
            for i, p in zip(result.indices, result.probabilities, strict=True)
        ]
        predictions.append({"name": name, **top[0], "top_k": top})
    finished = time.perf_counter()
    answer = {
        "model": served.card["name"],
        "predictions": predictions,
        "timings_ms": {
            "decode": (decoded - started) * 1000,
            "queue": max(r.queue_ms for r in results),
            "inference": max(r.inference_ms for r in results),
            "total": (finished - started) * 1000,
        },
        "batch_sizes": [r.batch_size for r in results],
    }
    # json.dumps of plain lists and floats: FastAPI's jsonable_encoder walk would cost more than the model.
    return Response(json.dumps(answer), media_type="application/json")


def _not_ready_message(state: _State) -> str:
    if state.draining:
        return "draining"
    return f"failed: {state.error}" if state.error else "loading"


def app_from_environment() -> FastAPI:
    """The app of a ``--workers`` process, configured by the parent through the environment."""
    logger = logging.getLogger("shufflenet")
    if not logger.handlers:  # a fresh worker process: its start-up lines go where the parent's went (stderr)
        logger.addHandler(logging.StreamHandler())
        logger.setLevel(logging.INFO)
    return create_app(ServeConfig.from_json(os.environ[CONFIG_ENV]))


def serve(config: ServeConfig) -> None:
    """Run the service with uvicorn until SIGINT/SIGTERM, which drain in-flight requests first."""
    import uvicorn

    config.validate()
    log.info(
        "serving %s on http://%s:%d: %d worker(s) x %d runtime thread(s) on %d core(s), batches of <= %d "
        "within %.1f ms, queue <= %d",
        config.weights,
        config.host,
        config.port,
        config.workers,
        config.threads,
        cpu_cores(),
        config.max_batch_size,
        config.max_batch_delay_ms,
        config.limits.max_queue,
    )
    options = {
        "host": config.host,
        "port": config.port,
        "timeout_graceful_shutdown": int(config.limits.timeout_s) + 5,
        "log_level": "info",
        "access_log": False,
    }
    if config.workers == 1:
        uvicorn.run(create_app(config), **options)
        return
    with tempfile.TemporaryDirectory(prefix="shufflenet-metrics-") as metrics_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        os.environ[CONFIG_ENV] = config.to_json()
        uvicorn.run(f"{__name__}:app_from_environment", factory=True, workers=config.workers, **options)
