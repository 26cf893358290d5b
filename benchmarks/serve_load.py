"""`shufflenet serve` under load on loopback: the runtime alone vs the HTTP service, batching on and off.

One run measures, side by side on this machine:
  * the runtime alone (the same compiled runner the service uses) at batch 1 and 16: latency and img/s, and
    at batch 16 plus the service's own decoding of the 16 JPEGs (no HTTP): what the runtime-alone number
    leaves out, since the service also decodes;
  * the service with 1, 8 and 64 concurrent keep-alive clients, dynamic batching on (batches of <= 16 within
    --delay-ms) and off (--max-batch-size 1), and batching on with --threads --fewer-threads: img/s and
    p50/p95/p99 latency per request (one image each);
  * a mixed run: 64 clients, every other request a bad one (garbage, wrong type, truncated); good ones must
    all succeed;
  * the runtime alone at batch 16 again at the end: how much the machine's load drifted during the run.
It ends with the issue's targets as ratios of numbers from this run (64 clients vs the runtime at batch 16,
1 client's p50 vs the runtime's batch-1 p50, failed good requests).
Every phase runs a fixed time (--seconds), so the whole script is bounded; servers listen on 127.0.0.1 only.
The clients run in this process (one uvloop/asyncio loop, requests encoded once): they share the CPU with the
server, as real local load would, and cost it as little as they can.

    PYTHONPATH=src python benchmarks/serve_load.py [--weights RUN/best.pt] [--arch shufflenet_v2_x1_0 --size 224]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch
from PIL import Image

from shufflenet.serve.model import cpu_cores, load_served_model

HYMENOPTERA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera_data"


def make_weights(arch: str, size: int, folder: Path) -> Path:
    """A seeded checkpoint of ``arch`` at ``size`` px (speed does not depend on the weights' values)."""
    from shufflenet.checkpoints.files import make_checkpoint, save_checkpoint
    from shufflenet.models import create_model
    from shufflenet.transforms import Preprocessing

    torch.manual_seed(0)
    model = create_model(arch, num_classes=2)
    checkpoint = make_checkpoint(model, arch, ["ants", "bees"], Preprocessing.for_size(size), val_acc=-1.0)
    return save_checkpoint(folder / "bench.pt", checkpoint)


def image_bodies(size: int, count: int = 16) -> list[bytes]:
    """JPEG bodies: real photos (hymenoptera) when present, else seeded noise, about ``size`` px on the short side."""
    photos = sorted(HYMENOPTERA.glob("val/*/*.jpg"))[:count] if HYMENOPTERA.is_dir() else []
    images = [Image.open(p).convert("RGB") for p in photos]
    if not images:
        torch.manual_seed(0)
        images = [Image.fromarray((torch.rand(size + 32, size + 64, 3) * 255).byte().numpy()) for _ in range(count)]
    bodies = []
    for image in images:
        image.thumbnail((2 * size, 2 * size))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        bodies.append(buffer.getvalue())
    return bodies


def time_runtime(runner, size: int, batch: int, seconds: float) -> dict:
    x = torch.randn(batch, 3, size, size)
    for _ in range(3):
        runner(x)
    times, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        started = time.perf_counter()
        runner(x)
        times.append(time.perf_counter() - started)
    return summary(times, batch * len(times) / sum(times))


def summary(latencies: list[float], images_per_s: float, failed: int = 0) -> dict:
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else latencies * 99
    return {"img/s": images_per_s, "p50": q[49] * 1e3, "p95": q[94] * 1e3, "p99": q[98] * 1e3, "n": len(latencies)}


def requests(bodies: list[tuple[str, bytes, bool]]) -> list[tuple[bytes, bool]]:
    """Each body as a whole HTTP/1.1 request, encoded once: the clients only write and read."""
    encoded = []
    for content_type, body, good in bodies:
        head = f"POST /v1/classify?top_k=1 HTTP/1.1\r\nHost: b\r\nContent-Type: {content_type}\r\n"
        encoded.append((head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body, good))
    return encoded


async def client(port: int, bodies: list, end: float, latencies: list, failures: list, offset: int) -> None:
    """One keep-alive HTTP/1.1 connection posting requests until ``end``; good answers must be 200."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = offset
    while time.perf_counter() < end:
        request, good = bodies[i % len(bodies)]
        i += 1
        started = time.perf_counter()
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        if good:
            latencies.append(time.perf_counter() - started)
            if status != 200:
                failures.append(status)
        elif status < 400 or status >= 500:
            failures.append(status)
    writer.close()


async def load(port: int, clients: int, bodies: list, seconds: float) -> dict:
    warm_end = time.perf_counter() + 1.0
    await asyncio.gather(*(client(port, bodies, warm_end, [], [], c) for c in range(clients)))
    latencies, failures = [], []
    started = time.perf_counter()
    end = started + seconds
    await asyncio.gather(*(client(port, bodies, end, latencies, failures, c) for c in range(clients)))
    result = summary(latencies, len(latencies) / (time.perf_counter() - started))
    result["failed"] = len(failures)
    return result


def start_server(
    weights: Path, backend: str, batch: int, delay_ms: float, threads: int | None = None
) -> tuple[subprocess.Popen, int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "shufflenet", "serve", "--weights", str(weights), "--port", str(port)]
    command += ["--backend", backend, "--max-batch-size", str(batch), "--max-batch-delay-ms", str(delay_ms)]
    command += ["--threads", str(threads)] if threads else []
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response:
                if response.status == 200:
                    return proc, port
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the server did not become ready in 2 minutes")


def time_runtime_with_decode(served, bodies: list[bytes], batch: int, seconds: float) -> dict:
    """The runtime at ``batch`` plus the service's own decoding of each image (cores threads), no HTTP."""
    from concurrent.futures import ThreadPoolExecutor

    from shufflenet.serve.limits import image_to_input

    def decode(body: bytes) -> torch.Tensor:
        return image_to_input(body, "bench", served.transform, 40_000_000, served.draft_size)

    with ThreadPoolExecutor(cpu_cores()) as pool:
        times, end, i = [], time.perf_counter() + seconds, 0
        while time.perf_counter() < end or len(times) < 3:
            started = time.perf_counter()
            chosen = [bodies[(i + j) % len(bodies)] for j in range(batch)]
            i += batch
            with torch.inference_mode():
                served.probabilities(torch.stack(list(pool.map(decode, chosen))))
            times.append(time.perf_counter() - started)
    return summary(times[1:], batch * len(times[1:]) / sum(times[1:]))


def run_load(port: int, clients: int, bodies: list, seconds: float) -> dict:
    """:func:`load` on uvloop when installed (a lighter client leaves more CPU to the server)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(load(port, clients, bodies, seconds))
    return uvloop.run(load(port, clients, bodies, seconds))


def print_table(rows: list[tuple[str, dict]]) -> None:
    print("| run | img/s | p50 ms | p95 ms | p99 ms | good requests | failed |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in rows:
        failed = r.get("failed", "")
        print(f"| {name} | {r['img/s']:.0f} | {r['p50']:.1f} | {r['p95']:.1f} | {r['p99']:.1f} | {r['n']} | {failed} |")


def print_targets(by_name: dict[str, dict]) -> None:
    """The issue's targets, as ratios of numbers measured in this run."""
    print()
    runtime1, runtime16 = by_name["runtime alone, batch 1"], by_name["runtime alone, batch 16"]
    again16 = by_name.get("runtime alone, batch 16, again at the end")
    if again16:  # on a busy machine the two differ: the ratios below are only as steady as this
        drift = again16["img/s"] / runtime16["img/s"] - 1
        print(f"runtime batch 16 at the end vs the start: {drift:+.0%} (0 on an idle machine)")
    with_decode = by_name.get("runtime + decode, batch 16")
    for name, served in by_name.items():
        if name.startswith("server, 64 clients, batching"):
            ratio = served["img/s"] / runtime16["img/s"]
            line = f"{name.removeprefix('server, ')} / runtime batch 16: {ratio:.0%} (target >= 70 %"
            line += ", met)" if ratio >= 0.7 else ", NOT met)"
            if with_decode:
                line += f"; / runtime + decode batch 16: {served['img/s'] / with_decode['img/s']:.0%}"
            print(line)
    for name, served in by_name.items():
        if name.startswith("server, 1 clients, batching"):
            gap = served["p50"] - runtime1["p50"]
            met = "met" if gap <= 3 else "NOT met"
            label = name.removeprefix("server, 1 clients, ")
            print(f"1 client, {label}: p50 - runtime batch-1 p50 = {gap:+.1f} ms (target <= 3 ms, {met})")
    failed = [name for name, r in by_name.items() if r.get("failed")]
    print(
        f"good requests failed: {sum(by_name[n]['failed'] for n in failed)} (target 0{', in ' if failed else ''}"
        f"{', '.join(failed)})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", help="a checkpoint (default: a seeded --arch at --size)")
    parser.add_argument("--arch", default="shufflenet_v2_x1_0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--backend", default="auto", help="runtime for both (auto: the race's pick, used for both)")
    parser.add_argument("--delay-ms", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=4.0, help="per phase")
    parser.add_argument("--clients", default="1,8,64", help="concurrent clients per phase, comma-separated")
    parser.add_argument("--batching", default="on,off", help="server phases: on, off or both")
    parser.add_argument("--no-mixed", action="store_true", help="skip the half-bad 64-client run")
    parser.add_argument(
        "--fewer-threads",
        type=int,
        default=1,
        metavar="N",
        help="also run the batching server with --threads N (default 1; 0: skip), leaving cores to decoding",
    )
    args = parser.parse_args()
    client_counts = [int(c) for c in args.clients.split(",")]
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(args.weights) if args.weights else make_weights(args.arch, args.size, Path(tmp))
        threads = cpu_cores()
        served = load_served_model(weights, args.backend, threads, 16)
        size = served.runner.preprocessing.crop_size
        backend = served.runner.backend
        photos = image_bodies(size)
        rows = [(f"runtime alone, batch {b}", time_runtime(served.runner, size, b, args.seconds)) for b in (1, 16)]
        rows.append(("runtime + decode, batch 16", time_runtime_with_decode(served, photos, 16, args.seconds)))
        good = [("image/jpeg", body, True) for body in photos]
        bad = [("image/jpeg", b"\xff\xd8 not really", False), ("text/plain", b"hello", False)]
        bad.append(("image/jpeg", good[0][1][: len(good[0][1]) // 3], False))
        servers = [(batching, None) for batching in args.batching.split(",")]
        if args.fewer_threads and args.fewer_threads < threads:
            servers.append(("on", args.fewer_threads))
        for batching, server_threads in servers:
            proc, port = start_server(weights, backend, 16 if batching == "on" else 1, args.delay_ms, server_threads)
            name = f"batching {batching}" + (f", {server_threads} runtime thread(s)" if server_threads else "")
            try:
                for clients in client_counts:
                    result = run_load(port, clients, requests(good), args.seconds)
                    rows.append((f"server, {clients} clients, {name}", result))
                if batching == "on" and not server_threads and not args.no_mixed:
                    mixed = requests([item for pair in zip(good, bad * 6, strict=False) for item in pair])
                    rows.append(("server, 64 clients, half bad", run_load(port, 64, mixed, args.seconds)))
            finally:
                proc.terminate()
                proc.wait(60)
        again = time_runtime(served.runner, size, 16, args.seconds)
        rows.append(("runtime alone, batch 16, again at the end", again))

    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    names = [ln.split(":", 1)[1].strip() for ln in info.read_text().splitlines() if ln.startswith("model name")]
    cpu = names[0] if names else cpu
    load_after = os.getloadavg()[0]
    print(f"{weights.name if args.weights else args.arch} at {size} px, backend {backend}, {threads} runtime threads")
    print(
        f"CPU: {cpu}, {cpu_cores()} cores; load average {load_before:.1f} before, {load_after:.1f} after (this "
        f"run included); torch {torch.__version__}; "
        f"batch window {args.delay_ms} ms; {args.seconds:g} s per phase\n"
    )
    print_table(rows)
    print_targets(dict(rows))


if __name__ == "__main__":
    main()
