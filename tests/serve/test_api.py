"""The HTTP API of a real `shufflenet serve` (uvicorn on 127.0.0.1) with a checkpoint trained on real scans."""

from __future__ import annotations

import http.client
import io
import json
import socket
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from PIL import Image

from shufflenet.checkpoints import load_model
from shufflenet.evaluation import predict


@pytest.fixture(scope="module")
def expected(digits_run: Path, val_images: list[Path]) -> dict[Path, tuple[str, list[float]]]:
    """What `shufflenet predict` (evaluation.predict) says for each file: top-1 and the top-3 probabilities."""
    torch.set_num_threads(1)
    result = predict(load_model(digits_run / "best.pt"), val_images, topk=3)
    return {p.path: (p.label, [prob for _, prob in p.topk]) for p in result.predictions}


def multipart(files: list[tuple[str, bytes, str]]) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, data, content_type in files:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        parts.append(head.encode() + f"Content-Type: {content_type}\r\n\r\n".encode() + data + b"\r\n")
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_health_readiness_and_model_card(api_server, digits_run):
    assert api_server.ready_statuses[-1] == 200
    assert api_server.request("GET", "/healthz")[0] == 200
    status, _, body = api_server.request("GET", "/v1/model")
    card = json.loads(body)
    checkpoint = torch.load(digits_run / "best.pt", weights_only=True)
    assert status == 200
    assert card["classes"] == checkpoint["class_names"] == [str(d) for d in range(10)]
    assert card["preprocessing"] == checkpoint["preprocessing"]
    assert card["val_accuracy"] == pytest.approx(checkpoint["val_acc"])
    assert (card["name"], card["backend"], card["precision"], card["weights"]) == (
        "shufflenet_v2_x0_5",
        "torch",
        "fp32",
        "best.pt",
    )
    schema = json.loads(api_server.request("GET", "/openapi.json")[2])
    assert {"/v1/classify", "/v1/model", "/healthz", "/readyz"} <= set(schema["paths"])


def test_served_top1_equals_predict(api_server, val_images, expected):
    for path in val_images:
        status, _, answer = api_server.classify(path.read_bytes(), query="?top_k=3")
        assert status == 200, answer
        label, probabilities = expected[path]
        assert answer["predictions"][0]["label"] == label, path
        assert [t["probability"] for t in answer["predictions"][0]["top_k"]] == pytest.approx(probabilities, abs=1e-4)
    # several images in one multipart request, answered in their order
    files = val_images[::3][:8]
    body, content_type = multipart([(p.name, p.read_bytes(), "image/png") for p in files])
    status, _, answer = api_server.classify(body, content_type)
    assert status == 200, answer
    assert [p["label"] for p in answer["predictions"]] == [expected[p][0] for p in files]
    assert all(len(p["top_k"]) == 5 for p in answer["predictions"])
    assert set(answer["timings_ms"]) == {"decode", "queue", "inference", "total"}


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """A real PNG of 20,000 x 20,000 pixels (400 MP, 1.2 GB as RGB) in a file of about 50 kB."""
    data = png_bytes(Image.new("1", (20_000, 20_000)))
    assert len(data) < 200_000
    return data


def test_every_bad_input_is_a_4xx_naming_the_reason(api_server, val_images, bomb):
    good = val_images[0].read_bytes()
    rss_before = api_server.rss_mb()
    cases = [
        ("text/plain", b"hello", 415, "unsupported_type"),
        ("", good, 415, "unsupported_type"),
        ("image/png", b"\x89PNG\r\n\x1a\n garbage", 422, "bad_image"),
        ("image/png", good[: len(good) // 2], 422, "bad_image"),
        ("image/png", b"", 422, "empty_image"),
        ("image/png", b"\0" * 600_000, 413, "body_too_large"),
        ("image/png", bomb, 413, "too_many_pixels"),
        ("image/png", png_bytes(Image.new("L", (2000, 600))), 413, "too_many_pixels"),  # 1.2 MP > --max-pixels 1M
        ("multipart/form-data; boundary=xyz", b"--xyz\r\nnot a part", 422, "bad_multipart"),
        (*multipart([(f"{i}.png", good, "image/png") for i in range(9)])[::-1], 413, "too_many_images"),
        (*multipart([("notes.txt", b"hi", "text/plain")])[::-1], 415, "unsupported_type"),
    ]
    for content_type, body, status, reason in cases:
        before = api_server.metric(f'shufflenet_rejections_total{{reason="{reason}"}}')
        got, _, answer = api_server.classify(body, content_type)
        assert (got, answer["error"]) == (status, reason), (content_type, answer)
        assert answer["detail"]
        assert api_server.metric(f'shufflenet_rejections_total{{reason="{reason}"}}') == before + 1
    _, _, answer = api_server.classify(bomb)
    # Refused from the header (PIL's own bomb check fires first past 2x its limit; ours below that, case above).
    assert "400000000 pixels" in answer["detail"]
    assert api_server.rss_mb() < rss_before + 200  # the 1.2 GB bomb was never decoded
    assert api_server.classify(good, query="?top_k=0")[0] == 422
    # a chunked body (no Content-Length) is cut off at the limit too
    conn = http.client.HTTPConnection("127.0.0.1", api_server.port, timeout=30)
    conn.request("POST", "/v1/classify", body=iter([b"\0" * 300_000] * 3), headers={"Content-Type": "image/png"})
    assert conn.getresponse().status == 413
    conn.close()
    assert api_server.metric('shufflenet_requests_total{endpoint="/v1/classify",status="413"}') >= 4


def test_concurrent_requests_share_batches(api_server, val_images):
    count_before = api_server.metric("shufflenet_batch_size_count")
    sum_before = api_server.metric("shufflenet_batch_size_sum")
    bodies = [p.read_bytes() for p in val_images[:16]]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda b: api_server.classify(b), bodies))
    assert all(status == 200 for status, _, _ in answers)
    batches = api_server.metric("shufflenet_batch_size_count") - count_before
    images = api_server.metric("shufflenet_batch_size_sum") - sum_before
    assert images == 16
    assert batches < images  # some batch held more than one request's image
    assert max(max(a["batch_sizes"]) for _, _, a in answers) > 1


def test_1000_bad_requests_interleaved_with_good(api_server, val_images, expected):
    good = [(p, p.read_bytes()) for p in val_images]
    half_png = good[0][1][:200]
    bad = [("text/plain", b"x"), ("image/png", b"not a png"), ("image/png", half_png), ("image/jpeg", b"")]
    rss_before = api_server.rss_mb()
    failures = []

    def client(worker: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", api_server.port, timeout=30)  # one keep-alive connection
        for i in range(250):
            content_type, body = bad[(i + worker) % len(bad)]
            conn.request("POST", "/v1/classify", body=body, headers={"Content-Type": content_type})
            response = conn.getresponse()
            response.read()
            if response.status not in (415, 422):
                failures.append(("bad", response.status))
            if i % 10 == 0:
                path, data = good[(i // 10 + worker) % len(good)]
                conn.request("POST", "/v1/classify", body=data, headers={"Content-Type": "image/png"})
                response = conn.getresponse()
                answer = json.loads(response.read())
                if response.status != 200 or answer["predictions"][0]["label"] != expected[path][0]:
                    failures.append(("good", response.status, path))
        conn.close()

    threads = [threading.Thread(target=client, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not failures
    assert api_server.request("GET", "/healthz")[0] == 200
    assert api_server.rss_mb() < rss_before + 100


def test_client_disconnecting_mid_request(api_server, val_images):
    """Hang-ups mid-body are counted and never reach the model; whole requests whose client left still run."""
    before = api_server.metric('shufflenet_rejections_total{reason="client_disconnected"}')
    images_before = api_server.metric("shufflenet_images_total")
    good = val_images[0].read_bytes()
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", api_server.port)) as sock:
            head = f"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {len(good)}"
            sock.sendall(head.encode() + b"\r\n\r\n" + good[:100])  # then hang up
        with socket.create_connection(("127.0.0.1", api_server.port)) as sock:
            head = f"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {len(good)}"
            sock.sendall(head.encode() + b"\r\n\r\n" + good)  # whole request, gone before the answer
    for _ in range(50):  # the server notices the hang-ups on its own time
        if api_server.metric('shufflenet_rejections_total{reason="client_disconnected"}') >= before + 3:
            break
        threading.Event().wait(0.1)
    assert api_server.metric('shufflenet_rejections_total{reason="client_disconnected"}') == before + 3
    assert api_server.classify(good)[0] == 200
    assert api_server.metric("shufflenet_images_total") == images_before + 3 + 1
