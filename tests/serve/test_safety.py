"""Back-pressure, time limits, the API key, readiness and draining on SIGTERM, on real `shufflenet serve` processes."""

from __future__ import annotations

import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from serve.helpers import API_KEY, read_response, start_server, upload_in_progress, wait_ready

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def servers(digits_run: Path, tmp_path: Path):
    """Two services started side by side (their start-ups overlap).

    tight: a 3 s batch window, batches of 64, room for 4 waiting images, 1.5 s per request, and an API key;
    draining: a 3 s batch window, for SIGTERM. The window only holds images while another request is on its
    way: the tests keep one half-uploaded (``upload_in_progress``).
    """
    key_file = tmp_path / "api.key"
    key_file.write_text(API_KEY + "\n")
    options = ["--max-batch-size", "64", "--max-batch-delay-ms", "3000", "--max-queue", "4", "--timeout-s", "1.5"]
    tight = start_server(digits_run / "best.pt", tmp_path, *options, "--api-key-file", str(key_file), wait=False)
    options = ["--max-batch-size", "64", "--max-batch-delay-ms", "3000"]
    draining = start_server(digits_run / "best.pt", tmp_path, *options, wait=False)
    try:
        yield {"tight": wait_ready(tight), "draining": wait_ready(draining)}
    finally:
        tight.stop()
        draining.stop()


@pytest.fixture(scope="module")
def tight_server(servers):
    return servers["tight"]


@pytest.fixture(scope="module")
def tmp_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve-safety")


def test_readiness_is_503_until_loaded_and_warmed_up(tight_server):
    assert tight_server.ready_statuses[0] == 503 and tight_server.ready_statuses[-1] == 200
    log = tight_server.log.read_text()
    assert "ready: shufflenet_v2_x0_5 as torch/fp32" in log
    assert "1 worker(s) x 1 runtime thread(s)" in log  # --threads 1 (start_server's default) reached the runtime


def test_api_key(tight_server, val_images):
    good = val_images[0].read_bytes()
    wrong = [
        {},
        {"Authorization": "Bearer wrong-key-wrong-key-wrong"},
        {"Authorization": f"Basic {API_KEY}"},
        {"Authorization": f"Bearer {API_KEY[:-1]}"},  # a prefix of the key
        {"Authorization": f"Bearer {API_KEY}x"},  # the key and more
        {"Authorization": f"Bearer {API_KEY[:-1]}X"},  # all but the last character right
        {"Authorization": "Bearer"},
    ]
    for headers in wrong:
        status, head, answer = tight_server.classify(good, **headers)
        assert (status, answer["error"], head["www-authenticate"]) == (401, "unauthorized", "Bearer")
        assert tight_server.request("GET", "/v1/model", headers=headers)[0] == 401
    status, _, body = tight_server.request("GET", "/v1/model", headers=AUTH)
    assert status == 200 and json.loads(body)["num_classes"] == 10
    assert tight_server.request("GET", "/readyz")[0] == 200  # probes need no key
    assert tight_server.metric('shufflenet_rejections_total{reason="unauthorized"}') == 2 * len(wrong)


def test_api_key_is_compared_in_constant_time(monkeypatch):
    """The key check goes through hmac.compare_digest (time independent of how much of a guess matches)."""
    import hmac

    from shufflenet.serve.app import check_api_key
    from shufflenet.serve.limits import Rejection

    compared = []

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", spy)
    check_api_key(API_KEY, f"Bearer {API_KEY}")
    with pytest.raises(Rejection) as refused:
        check_api_key(API_KEY, f"Bearer {API_KEY[:-1]}")
    assert refused.value.status == 401
    assert compared == [(API_KEY.encode(), API_KEY.encode()), (API_KEY[:-1].encode(), API_KEY.encode())]
    check_api_key(None, None)  # no key configured: everything passes


def test_a_lone_request_is_not_held_for_the_batch_window(tight_server, val_images):
    status, _, answer = tight_server.classify(val_images[0].read_bytes(), **AUTH)
    assert status == 200, answer  # held for the 3 s window, it would have timed out at 1.5 s
    assert answer["batch_sizes"] == [1] and answer["timings_ms"]["queue"] < 1000


def test_full_queue_is_503_with_retry_after_and_slow_requests_time_out(tight_server, val_images):
    good = val_images[0].read_bytes()
    with upload_in_progress(tight_server, good, **AUTH):  # on its way: the 3 s batch window stays open
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: tight_server.classify(good, **AUTH), range(6)))
        statuses = sorted(status for status, _, _ in answers)
        # 4 images wait for the request on its way: the queue refuses 2, the 4 time out at 1.5 s
        assert statuses == [503, 503, 504, 504, 504, 504]
        for status, head, answer in answers:
            assert answer["error"] == {503: "queue_full", 504: "timeout"}[status]
            if status == 503:
                assert head["retry-after"] == "1"
        # the timed-out images left the queue: there is room again
        assert tight_server.classify(good, **AUTH)[0] == 504
    assert tight_server.metric('shufflenet_rejections_total{reason="queue_full"}') == 2


def test_the_window_waits_for_a_request_on_its_way(servers, val_images):
    """An image queued while another request uploads waits for it (up to the window); both share a batch."""
    server = servers["draining"]
    first, second = (p.read_bytes() for p in val_images[:2])
    with upload_in_progress(server, second) as sock, ThreadPoolExecutor(1) as pool:
        queued = pool.submit(server.classify, first)
        time.sleep(1.0)
        assert not queued.done()  # waiting in the queue, not answered alone
        sock.sendall(second[len(second) // 2 :])
        status, body = read_response(sock)
        assert status == 200
        assert json.loads(body)["batch_sizes"] == [2]
        status, _, answer = queued.result(timeout=30)
    assert status == 200 and answer["batch_sizes"] == [2]
    assert answer["timings_ms"]["queue"] < 2500  # it ran when the second arrived, not when the window closed


def test_sigterm_drains_accepted_requests(servers, val_images):
    """SIGTERM while 8 requests wait in the queue and a 9th is half uploaded: all 9 answered 200, then exit."""
    server = servers["draining"]
    bodies = [p.read_bytes() for p in val_images[:9]]
    with upload_in_progress(server, bodies[8]) as sock, ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(server.classify, body) for body in bodies[:8]]
        for _ in range(100):  # until all 8 wait in the queue (for the 9th, on its way)
            if server.metric("shufflenet_queue_depth") == 8:
                break
            time.sleep(0.05)
        assert server.metric("shufflenet_queue_depth") == 8
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        sock.sendall(bodies[8][len(bodies[8]) // 2 :])  # the rest of the body, after the signal
        status, body = read_response(sock)
        answers = [f.result(timeout=30) for f in futures]
    assert status == 200 and json.loads(body)["batch_sizes"] == [9]
    assert [status for status, _, _ in answers] == [200] * 8
    assert all(answer["batch_sizes"] == [9] for _, _, answer in answers)
    # uvicorn re-raises the signal it handled once it has shut down cleanly, so the exit is SIGTERM's
    assert server.proc.wait(30) in (0, -signal.SIGTERM)
    assert "shutting down: finishing" in server.log.read_text()
