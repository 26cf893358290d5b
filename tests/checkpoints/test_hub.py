"""Published weights by name: downloaded through torch.hub, hash-checked, cached, loaded with their preprocessing.

A loopback HTTP server (127.0.0.1, started here) stands in for download.pytorch.org and download.openmmlab.com
through ``SHUFFLENET_WEIGHTS_URL``. It serves files in the real formats: a seeded torchvision ShuffleNetV2's
``state_dict`` saved by torch, and an mmpretrain-layout file ({meta, state_dict} with backbone./head. keys),
each named ``<name>-<sha256 prefix>.pth`` as the real ones are, with the registry entry pointed at that name.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import multiprocessing
import re
import socket
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.models._meta import _IMAGENET_CATEGORIES

from shufflenet.checkpoints import MIRROR_ENV, WeightsDownloadError, find_weights, load_model, pretrained
from shufflenet.checkpoints.formats.mmpretrain import MMPRETRAIN_PREPROCESSING
from shufflenet.checkpoints.hub import TIMEOUT_ENV
from shufflenet.cli import main
from shufflenet.models import create_model

X0_5 = "shufflenet_v2_x0_5"


class Server:
    """A static file server on 127.0.0.1 in a thread; ``requests`` lists the paths asked for."""

    def __init__(self, root: Path) -> None:
        self.root, self.requests = root, []
        self.delay_s = 0.0  # before each answer: a slow server, so that downloads overlap
        owner = self

        class Handler(SimpleHTTPRequestHandler):
            def __init__(self, *args: object, **kwargs: object) -> None:
                super().__init__(*args, directory=str(root), **kwargs)

            def do_GET(self) -> None:
                owner.requests.append(self.path)
                time.sleep(owner.delay_s)
                super().do_GET()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.thread.join(timeout=10)
        self.httpd.server_close()  # nothing listens on the port any more: connections are refused


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Server:
    """The mirror, an empty temporary TORCH_HOME, and SHUFFLENET_WEIGHTS_URL pointing at the mirror."""
    running = Server(tmp_path / "mirror")
    running.root.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv(MIRROR_ENV, running.url)
    yield running
    running.stop()


def cache(tmp_path: Path) -> Path:
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def weight_files(tmp_path: Path) -> list[str]:
    """The cache's files (partial downloads included), less the download locks in .locks/."""
    return sorted(p.name for p in cache(tmp_path).iterdir() if p.name != ".locks")


def publish(server: Server, monkeypatch: pytest.MonkeyPatch, model: str, source: str, contents: object) -> Path:
    """Save ``contents`` as the mirror's file for (model, source), named by its own sha256 as the real one is, and
    point the registry entry at that name; returns the served file."""
    buffer = io.BytesIO()
    torch.save(contents, buffer)
    data = buffer.getvalue()
    real = find_weights(model, source)
    prefix = hashlib.sha256(data).hexdigest()[: len(real.sha256_prefix)]
    remote = urlsplit(real.url).path.replace(real.sha256_prefix, prefix)
    served = server.root / remote.lstrip("/")
    served.parent.mkdir(parents=True, exist_ok=True)
    served.write_bytes(data)
    entry = dataclasses.replace(real, url=real.url.replace(real.sha256_prefix, prefix), sha256_prefix=prefix)
    monkeypatch.setattr(pretrained, "WEIGHTS", tuple(entry if w == real else w for w in pretrained.WEIGHTS))
    return served


def torchvision_reference(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torchvision.models.shufflenet_v2_x0_5()
    with torch.no_grad():  # BN statistics that are not the identity, so a skipped buffer would show
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def photo(path: Path) -> Path:
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
    Image.fromarray(coarse).resize((80, 64), Image.BICUBIC).save(path, quality=90)
    return path


def test_download_lands_in_torch_home_and_loads_with_preprocessing_and_labels_then_the_cache_serves_it(
    server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    reference = torchvision_reference()
    served = publish(server, monkeypatch, X0_5, "torchvision", reference.state_dict())
    x = torch.randn(2, 3, 64, 64)

    model = create_model(X0_5, pretrained=True).eval()
    assert server.requests == ["/" + str(served.relative_to(server.root))]
    cached = cache(tmp_path) / served.name
    assert cached.read_bytes() == served.read_bytes()
    torch.testing.assert_close(model(x), reference(x))
    assert model.class_names == list(_IMAGENET_CATEGORIES)
    assert (model.preprocessing.resize_size, model.preprocessing.crop_size) == (256, 224)
    assert model.preprocessing.mean == (0.485, 0.456, 0.406) and model.arch == X0_5

    server.stop()  # offline now: the cached file is used (its hash checked), nothing is fetched
    again = create_model(X0_5, weights="torchvision").eval()
    torch.testing.assert_close(again(x), reference(x))
    assert len(server.requests) == 1

    fine_tune = create_model(X0_5, num_classes=3, weights="torchvision")  # a new classifier: no ImageNet names
    assert not hasattr(fine_tune, "class_names") and fine_tune.fc.out_features == 3


def test_file_whose_hash_does_not_match_is_refused_and_leaves_nothing_behind(
    server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    served = publish(server, monkeypatch, X0_5, "torchvision", torchvision_reference().state_dict())
    flip_a_byte(served)  # same name, other contents
    with pytest.raises(WeightsDownloadError, match=rf"{re.escape(server.url)}/models/{served.name} is not the publ"):
        create_model(X0_5, pretrained=True)
    assert weight_files(tmp_path) == []  # no partial file, no bad file


def test_a_damaged_cached_file_is_refused_not_used(
    server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    served = publish(server, monkeypatch, X0_5, "torchvision", torchvision_reference().state_dict())
    create_model(X0_5, pretrained=True)
    cached = cache(tmp_path) / served.name
    flip_a_byte(cached)
    with pytest.raises(WeightsDownloadError, match=rf"cached {re.escape(str(cached))} has sha256 .*delete it"):
        create_model(X0_5, pretrained=True)
    assert len(server.requests) == 1


def test_mmpretrain_v1_file_is_converted_with_its_preprocessing(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_formats import MmBackboneV1, MmClassifier, mm_input, randomize

    crops = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    reference = randomize(MmClassifier(MmBackboneV1(groups=3, widen_factor=1.0), 1000), mm_input(crops))
    meta = {"mmcls_version": "0.7.0", "config": "model = dict(type='ImageClassifier')"}
    contents = {"meta": meta, "state_dict": reference.state_dict()}
    publish(server, monkeypatch, "shufflenet_v1_g3_x1_0", "mmpretrain", contents)

    model = create_model("shufflenet_v1_g3_x1_0", pretrained=True).eval()  # mmpretrain: the model's only source
    assert model.preprocessing == MMPRETRAIN_PREPROCESSING and model.class_names[0] == _IMAGENET_CATEGORIES[0]
    with torch.no_grad():
        ours = model(model.preprocessing.normalize()(crops.float() / 255))
        torch.testing.assert_close(ours, reference(mm_input(crops)), rtol=1e-4, atol=1e-4)


def test_predict_by_name_prints_imagenet_names_as_torchvision_ranks_them(
    server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    reference = torchvision_reference()
    publish(server, monkeypatch, X0_5, "torchvision", reference.state_dict())
    image = photo(tmp_path / "cat.jpg")
    transform = torchvision.models.ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1.transforms()
    with torch.no_grad():
        probabilities = reference(transform(Image.open(image).convert("RGB"))[None]).softmax(1)[0]
    expected = [_IMAGENET_CATEGORIES[int(i)] for i in probabilities.topk(3).indices]

    argv = ["predict", "--weights", "torchvision", "--model", X0_5, "--device", "cpu", "--topk", "3", str(image)]
    assert main(argv) == 0
    line = capsys.readouterr().out.strip()
    shown = re.findall(r"  (.+?) (\d\.\d{3})", line.split(str(image), 1)[1])
    assert [name for name, _ in shown] == expected
    assert float(shown[0][1]) == pytest.approx(probabilities.max().item(), abs=2e-3)


def test_dead_server_is_one_line_naming_url_file_and_where_to_put_it(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    server.stop()
    image = photo(tmp_path / "cat.jpg")
    weights = find_weights(X0_5)
    assert main(["predict", "--weights", "torchvision", "--model", X0_5, str(image)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"could not download {server.url}/models/{weights.file_name} (" in err
    assert f"put {weights.file_name} into {cache(tmp_path)} by hand" in err


def test_mirror_without_the_file_names_the_http_error(server: Server, tmp_path: Path) -> None:
    weights = find_weights(X0_5)
    message = rf"could not download .*/models/{re.escape(weights.file_name)} \(HTTP 404 File not found\)"
    with pytest.raises(WeightsDownloadError, match=message):
        create_model(X0_5, pretrained=True)
    assert server.requests == [f"/models/{weights.file_name}"]
    assert weight_files(tmp_path) == []


class StallingServer:
    """127.0.0.1: accepts one connection, reads the request, sends ``head`` (maybe nothing) and then nothing more
    until stopped or ``STALL_S`` pass; ``requests`` counts the requests read."""

    STALL_S = 20.0

    def __init__(self, head: bytes) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(self.STALL_S)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.released, self.requests = threading.Event(), 0
        self.thread = threading.Thread(target=self._serve_one, args=(head,), daemon=True)
        self.thread.start()

    def _serve_one(self, head: bytes) -> None:
        try:
            connection, _ = self.listener.accept()
        except OSError:  # stopped, or nobody came
            return
        with connection:
            connection.recv(65536)
            self.requests += 1
            connection.sendall(head)
            self.released.wait(self.STALL_S)

    def stop(self) -> None:
        self.released.set()
        self.listener.close()
        self.thread.join(timeout=10)


@pytest.mark.parametrize(
    "head",
    [b"", b"HTTP/1.0 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 5000],
    ids=["before-the-response", "mid-file"],
)
def test_a_stalled_download_stops_after_the_timeout_naming_url_and_remedies_and_keeps_nothing(
    head: bytes, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    stalling = StallingServer(head)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv(MIRROR_ENV, stalling.url)
    monkeypatch.setenv(TIMEOUT_ENV, "0.5")
    weights = find_weights(X0_5)
    message = (
        rf"could not download {re.escape(stalling.url)}/models/{re.escape(weights.file_name)} \(no data for 0.5 s; "
        rf"{TIMEOUT_ENV} sets how long to wait\); put {re.escape(weights.file_name)} into .* by hand, "
        rf"or set {MIRROR_ENV}"
    )
    started = time.monotonic()
    try:
        with pytest.raises(WeightsDownloadError, match=message):
            create_model(X0_5, pretrained=True)
        waited = time.monotonic() - started
    finally:
        stalling.stop()
    assert stalling.requests == 1
    assert waited < StallingServer.STALL_S / 2  # it gave up; it was not the server hanging up
    assert weight_files(tmp_path) == []  # torch.hub's .partial file is gone
    assert socket.getdefaulttimeout() is None  # the process's default is back


def test_a_download_timeout_that_is_not_seconds_is_refused_naming_the_variable(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(TIMEOUT_ENV, "soon")
    with pytest.raises(WeightsDownloadError, match=rf"{TIMEOUT_ENV}='soon' is not a number of seconds > 0"):
        create_model(X0_5, pretrained=True)
    assert server.requests == []


def download_in_this_process(weights: object, start: object, results: object) -> None:
    """A torchrun rank's part (run in a spawned process): wait for the others, then fetch ``weights``."""
    from shufflenet.checkpoints import download_weights
    from shufflenet.checkpoints.files import file_sha256

    start.wait(120)
    path = download_weights(weights, progress=False)
    results.put((str(path), file_sha256(path)))


def test_processes_that_want_the_same_file_at_once_download_it_once_and_all_get_it_verified(
    server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    served = publish(server, monkeypatch, X0_5, "torchvision", torchvision_reference().state_dict())
    server.delay_s = 2.0  # a download takes that long, so the second process asks while the first one fetches
    weights = find_weights(X0_5)
    context = multiprocessing.get_context("spawn")  # like torchrun: fresh interpreters, environment inherited
    start, results = context.Barrier(2), context.Queue()
    ranks = [context.Process(target=download_in_this_process, args=(weights, start, results)) for _ in range(2)]
    for rank in ranks:
        rank.start()
    for rank in ranks:
        rank.join(timeout=180)
    assert [rank.exitcode for rank in ranks] == [0, 0]
    got = [results.get(timeout=5) for _ in ranks]
    expected = (str(cache(tmp_path) / served.name), hashlib.sha256(served.read_bytes()).hexdigest())
    assert got == [expected, expected]
    assert server.requests == ["/" + str(served.relative_to(server.root))]
    assert weight_files(tmp_path) == [served.name]


def test_train_by_name_starts_from_the_downloaded_weights(
    server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, image_tree: Path
) -> None:
    reference = torchvision_reference()
    publish(server, monkeypatch, X0_5, "torchvision", reference.state_dict())
    out = tmp_path / "run"
    argv = ["train", "--data", str(image_tree), "--out", str(out), "--weights", "torchvision", "--model", X0_5]
    argv += ["--epochs", "1", "--img-size", "32", "--batch-size", "8", "--device", "cpu", "--freeze-backbone"]
    assert main([*argv, "--quiet"]) == 0
    trained = load_model(out / "last.pt")
    frozen = {k: v for k, v in reference.state_dict().items() if k.startswith("conv5.") or k.startswith("stage4.")}
    for key, value in frozen.items():
        torch.testing.assert_close(trained.state_dict()[key], value)
    assert trained.fc.out_features == 2


def test_mirror_replaces_scheme_and_host_and_keeps_the_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from shufflenet.checkpoints.hub import weights_url

    weights = find_weights("shufflenet_v1_g3_x1_0")
    monkeypatch.delenv(MIRROR_ENV, raising=False)
    assert weights_url(weights) == weights.url
    monkeypatch.setenv(MIRROR_ENV, "http://mirror.lan:8080/weights/")
    assert weights_url(weights) == (
        "http://mirror.lan:8080/weights/mmclassification/v0/shufflenet_v1/"
        "shufflenet_v1_batch1024_imagenet_20200804-5d6cec73.pth"
    )


def test_unknown_names_and_sources_say_what_exists() -> None:
    with pytest.raises(ValueError, match=r"shufflenet_v1_g8_x1_0 has no published weights; these models have: .*_x2_0"):
        create_model("shufflenet_v1_g8_x1_0", pretrained=True)
    with pytest.raises(ValueError, match="shufflenet_v2_x0_5 has no mmpretrain weights; it has torchvision"):
        create_model(X0_5, weights="mmpretrain")


# ---------------------------------------------------------------------------------------------- the data (no network)
def test_registry_urls_carry_their_hash_prefix_and_torchvision_entries_match_torchvision() -> None:
    for weights in pretrained.WEIGHTS:
        host = urlsplit(weights.url).netloc
        assert host == {"torchvision": "download.pytorch.org", "mmpretrain": "download.openmmlab.com"}[weights.source]
        match = torch.hub.HASH_REGEX.search(weights.file_name)  # the rule torch.hub's check_hash applies
        assert match and match.group(1) == weights.sha256_prefix and len(weights.sha256_prefix) >= 8
        create_model(weights.model)  # a registered name
    enums = torchvision.models.get_model_weights
    by_model = {w.model: w for w in pretrained.WEIGHTS if w.source == "torchvision"}
    assert sorted(by_model) == ["shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0"]
    for name, ours in by_model.items():
        theirs = enums(name).IMAGENET1K_V1
        assert ours.url == theirs.url
        metrics = theirs.meta["_metrics"]["ImageNet-1K"]
        assert (ours.top1, ours.top5) == (metrics["acc@1"], metrics["acc@5"])
        transform = theirs.transforms()
        assert (ours.preprocessing.resize_size, ours.preprocessing.crop_size) == (
            transform.resize_size[0],
            transform.crop_size[0],
        )
        assert list(ours.preprocessing.mean) == transform.mean and list(ours.preprocessing.std) == transform.std
        assert ours.class_names() == theirs.meta["categories"]
    # mmpretrain's configs/shufflenet_v1|v2/metafile.yml
    mm = {w.model: (w.top1, w.top5) for w in pretrained.WEIGHTS if w.source == "mmpretrain"}
    assert mm == {"shufflenet_v1_g3_x1_0": (68.13, 87.81), "shufflenet_v2_x1_0": (69.55, 88.92)}
    assert find_weights("shufflenet_v2_x1_0").source == "torchvision"  # the default where both publish


def test_models_command_lists_weights_sources_and_accuracy(capsys: pytest.CaptureFixture) -> None:
    assert main(["models", "shufflenet_v*_x1_0"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.startswith("shufflenet")}
    assert rows["shufflenet_v2_x1_0"].endswith("torchvision 69.362, mmpretrain 69.55")
    assert rows["shufflenet_v1_g3_x1_0"].endswith("mmpretrain 68.13")
    assert rows["shufflenet_v1_g8_x1_0"].endswith("-")


def test_timm_pretrained_cfg_has_the_real_url() -> None:
    timm = pytest.importorskip("timm")
    cfg = timm.models.get_pretrained_cfg("shufflenet_v2_x1_5")
    assert cfg.url == "https://download.pytorch.org/models/shufflenetv2_x1_5-3c479a10.pth"
    assert cfg.crop_pct == pytest.approx(224 / 232)


def test_export_by_name_carries_imagenet_names_and_the_publishers_preprocessing(
    server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    reference = torchvision_reference()
    wide_state = torchvision.models.shufflenet_v2_x1_5().state_dict()
    publish(server, monkeypatch, "shufflenet_v2_x1_5", "torchvision", wide_state)
    publish(server, monkeypatch, X0_5, "torchvision", reference.state_dict())
    out = tmp_path / "x0_5.pt"
    argv = ["export", "--weights", "torchvision", "--model", X0_5, "--format", "torchscript", "--out", str(out)]
    assert main(argv) == 0
    extra = {"shufflenet.json": ""}
    exported = torch.jit.load(str(out), _extra_files=extra)
    meta = json.loads(extra["shufflenet.json"])
    assert meta["arch"] == X0_5 and meta["class_names"] == list(_IMAGENET_CATEGORIES)
    assert (meta["preprocessing"]["resize_size"], meta["preprocessing"]["crop_size"]) == (256, 224)
    x = torch.randn(2, 3, 224, 224)
    torch.testing.assert_close(exported(x), reference(x), rtol=1e-4, atol=1e-4)

    wide = tmp_path / "x1_5.pt"  # torchvision's newer recipe: evaluated at 232 -> 224
    assert main([*argv[:4], "shufflenet_v2_x1_5", *argv[5:-1], str(wide)]) == 0
    torch.jit.load(str(wide), _extra_files=extra)
    assert json.loads(extra["shufflenet.json"])["preprocessing"]["resize_size"] == 232


def test_torch_hub_load_by_name(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    reference = torchvision_reference()
    publish(server, monkeypatch, X0_5, "torchvision", reference.state_dict())
    repo = Path(__file__).resolve().parents[2]
    model = torch.hub.load(str(repo), X0_5, source="local", weights="torchvision", verbose=False).eval()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(model(x), reference(x))
    assert model.class_names == list(_IMAGENET_CATEGORIES) and model.preprocessing.resize_size == 256
