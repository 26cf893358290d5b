"""``shufflenet serve``: classify images over HTTP with dynamic batching (FastAPI + uvicorn, the [serve] extra)."""

from __future__ import annotations

import argparse

from shufflenet import deploy

BACKENDS = (*deploy.BACKENDS, "auto")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the subcommand."""
    parser = subparsers.add_parser(
        "serve",
        help="serve a model over HTTP: /v1/classify, a web page at /, /metrics",
        description="An HTTP service for a checkpoint or exported file: POST /v1/classify (image body or "
        "multipart), GET /v1/model, /healthz, /readyz, /metrics, the web page at / and the OpenAPI schema at "
        "/openapi.json. Concurrent requests share inference batches.",
    )
    parser.add_argument(
        "--weights",
        metavar="FILE",
        required=True,
        help="checkpoint (RUN/best.pt), exported/int8 .onnx file or int8 OpenVINO .xml",
    )
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="runtime (default auto: the fastest)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    parser.add_argument("--port", type=int, default=8000, help="default %(default)s")
    parser.add_argument("--max-batch-size", type=int, default=16, help="images per batch (default %(default)s)")
    parser.add_argument(
        "--max-batch-delay-ms",
        type=float,
        default=5.0,
        help="how long the oldest image may wait for requests still on their way to join its batch; a lone "
        "request runs at once (default %(default)s)",
    )
    parser.add_argument("--max-queue", type=int, default=256, help="waiting images before 503 (default %(default)s)")
    parser.add_argument("--max-body-mb", type=float, default=10.0, help="request body limit (default %(default)s)")
    parser.add_argument(
        "--max-pixels", type=int, default=40_000_000, help="pixels per image, checked before decoding (default 40M)"
    )
    parser.add_argument("--max-images", type=int, default=64, help="images per request (default %(default)s)")
    parser.add_argument("--timeout-s", type=float, default=30.0, help="per-request time limit (default %(default)s)")
    parser.add_argument("--workers", type=int, default=1, help="processes; runtime threads = cores / workers")
    parser.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="runtime threads per worker (default cores / workers; fewer leave cores to decoding under load)",
    )
    parser.add_argument("--api-key-file", metavar="FILE", help="require 'Authorization: Bearer <the key in FILE>'")
    parser.add_argument(
        "--cors-origin", action="append", default=[], metavar="ORIGIN", help="allow browser calls from ORIGIN"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM."""
    from shufflenet.cli.common import setup_logging

    try:
        from shufflenet.serve.app import ServeConfig, serve
    except ImportError as err:
        raise ImportError(
            f"shufflenet serve needs the [serve] extra: pip install 'shufflenet[serve]' ({err})"
        ) from None
    from shufflenet.serve.limits import Limits

    setup_logging()
    limits = Limits(
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
        max_pixels=args.max_pixels,
        max_images=args.max_images,
        max_queue=args.max_queue,
        timeout_s=args.timeout_s,
    )
    config = ServeConfig(
        weights=args.weights,
        backend=args.backend,
        host=args.host,
        port=args.port,
        max_batch_size=args.max_batch_size,
        max_batch_delay_ms=args.max_batch_delay_ms,
        workers=args.workers,
        runtime_threads=args.threads,
        api_key_file=args.api_key_file,
        cors_origins=args.cors_origin,
        limits=limits,
    )
    serve(config)
    return 0
