"""Published weights by name: download (torch.hub), hash check, cache, and loading into a model.

``create_model(name, pretrained=True)`` or ``weights="torchvision"``/``"mmpretrain"`` ends here (importing this
module installs :func:`load_weights` as the registry's loader). Files go where torch.hub puts them,
``$TORCH_HOME/hub/checkpoints``, under the publisher's file name, whose sha256 prefix is checked on download
(torch.hub) and again each time a cached file is used (torch.hub does not). ``SHUFFLENET_WEIGHTS_URL=<base>``
fetches every file from a mirror instead: the base replaces the URL's scheme and host, the path stays.
A download that receives nothing for ``$SHUFFLENET_DOWNLOAD_TIMEOUT`` seconds (default 30) stops with a
:class:`WeightsDownloadError`. Processes that want the same file at once (torchrun's ranks on a node) take turns
through a file lock in the cache (``.locks/``): one downloads, the others wait and check its file.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.client import HTTPException, IncompleteRead
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit

import torch
from filelock import FileLock, Timeout
from torch import nn

from shufflenet.checkpoints.files import CheckpointError, file_sha256, make_checkpoint, save_checkpoint
from shufflenet.checkpoints.loading import LoadReport, load_pretrained
from shufflenet.checkpoints.pretrained import SOURCES, PretrainedWeights, find_weights
from shufflenet.models import create_model, registry

MIRROR_ENV = "SHUFFLENET_WEIGHTS_URL"
TIMEOUT_ENV = "SHUFFLENET_DOWNLOAD_TIMEOUT"
DEFAULT_TIMEOUT_S = 30.0
LOCK_WAIT_S = 600.0  # how long a process waits for another one's download of the same file
_SOCKET_DEFAULT = threading.Lock()  # one download at a time changes the process's socket default timeout

log = logging.getLogger(__name__)


class WeightsDownloadError(CheckpointError):
    """A published weights file that could not be fetched or failed its hash; one line saying what to do."""


def is_weights_name(weights: Any) -> bool:
    """Whether ``weights`` names a publisher (``"torchvision"``, ``"mmpretrain"``) rather than a file."""
    return isinstance(weights, str) and weights in SOURCES


def weights_url(weights: PretrainedWeights) -> str:
    """Where ``weights`` is fetched from: its URL, or the same path under ``$SHUFFLENET_WEIGHTS_URL``."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if not mirror:
        return weights.url
    return mirror.rstrip("/") + urlsplit(weights.url).path


def download_timeout() -> float:
    """Seconds a download may wait for the connection or for the next data: ``$SHUFFLENET_DOWNLOAD_TIMEOUT`` or 30."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise WeightsDownloadError(
            f"{TIMEOUT_ENV}={text!r} is not a number of seconds > 0; unset it for the default {DEFAULT_TIMEOUT_S:g}"
        )
    return seconds


def cache_dir() -> Path:
    """torch.hub's checkpoint cache (``$TORCH_HOME/hub/checkpoints``), where downloads land."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def download_weights(weights: PretrainedWeights, progress: bool = True) -> Path:
    """The local file of ``weights``: the cached one after checking its hash, else downloaded and checked.

    A download whose sha256 does not start with the expected prefix is deleted (torch.hub writes to a
    temporary file first); any failure is a :class:`WeightsDownloadError` naming the URL and what to do.
    One process at a time downloads a file: torchrun's ranks on a node each build their model, so one
    fetches it while the others wait on its lock and then check its file.
    """
    path = cache_dir() / weights.file_name
    url = weights_url(weights)
    if not path.is_file():
        with _download_lock(path, url):
            if not path.is_file():  # else another process fetched it while this one waited
                _fetch(url, path, weights, progress)
                return path  # checked as it arrived
    digest = file_sha256(path)
    if not digest.startswith(weights.sha256_prefix):
        raise WeightsDownloadError(
            f"cached {path} has sha256 {digest[:12]}..., not {weights.sha256_prefix}... (damaged or replaced); "
            f"delete it to download {url} again"
        )
    return path


def _fetch(url: str, path: Path, weights: PretrainedWeights, progress: bool) -> None:
    timeout = download_timeout()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with _socket_timeout(timeout):
            torch.hub.download_url_to_file(url, str(path), hash_prefix=weights.sha256_prefix, progress=progress)
    # torch.hub writes to a temporary file and removes it on any exception: a failure leaves nothing behind.
    except RuntimeError as err:  # torch.hub's hash mismatch
        raise WeightsDownloadError(
            f"{url} is not the published {weights.file_name} ({err}); nothing was kept. Fix the mirror "
            f"({MIRROR_ENV}) or put the genuine file into {path.parent} by hand"
        ) from None
    except (OSError, HTTPException) as err:  # offline, refused, HTTP errors, timeouts, a connection cut short
        reason = _reason(err)
        if _timed_out(err):
            reason = f"no data for {timeout:g} s; {TIMEOUT_ENV} sets how long to wait"
        raise WeightsDownloadError(
            f"could not download {url} ({reason}); put {weights.file_name} into {path.parent} by hand, "
            f"or set {MIRROR_ENV} to a mirror that has it"
        ) from None


@contextmanager
def _download_lock(path: Path, url: str) -> Iterator[None]:
    # An OS file lock (fcntl/msvcrt through filelock, which torch itself depends on): released when its holder
    # exits, however it exits, so a crashed download never leaves the others waiting on a stale lock.
    lock_file = path.parent / ".locks" / f"{path.name}.lock"
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(lock_file)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another process that is downloading %s", url)
        try:
            lock.acquire(timeout=LOCK_WAIT_S)
        except Timeout:
            raise WeightsDownloadError(
                f"another process has been downloading {url} for over {LOCK_WAIT_S:g} s (it holds {lock_file}); "
                f"let it finish or stop it, then try again"
            ) from None
    try:
        yield
    finally:
        lock.release()


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """The process's default socket timeout set to ``seconds`` for the block (one such block at a time).

    torch.hub's download_url_to_file takes no timeout and opens its connection without one, so urllib falls
    back to this default: it bounds the connect and each read, not the whole download.
    """
    with _SOCKET_DEFAULT:
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(seconds)
        try:
            yield
        finally:
            socket.setdefaulttimeout(previous)


def load_named_weights(model: nn.Module, name: str, source: str | None = None, progress: bool = True) -> LoadReport:
    """Load the published weights of ``name`` from ``source`` (None: the model's default) into ``model``.

    The model gets ``arch``, ``preprocessing`` (the publisher's, which reproduces its accuracy),
    ``class_names`` (ImageNet's, when the classifier kept its 1000 classes) and ``pretrained_weights``.
    """
    weights = find_weights(name, source)
    report = load_pretrained(model, download_weights(weights, progress))
    report.source_format = f"{weights.source} {report.source_format}"
    report.preprocessing = weights.preprocessing
    model.arch = name
    model.preprocessing = weights.preprocessing
    model.pretrained_weights = weights
    if not report.reinitialized:
        model.class_names = weights.class_names()
    return report


def load_weights(model: nn.Module, name: str, weights: str | Path | None) -> LoadReport:
    """The registry's loader: a publisher's name or None (the default publisher) by name, else a file."""
    if weights is None or is_weights_name(weights):
        return load_named_weights(model, name, weights)
    return load_pretrained(model, weights)


def pretrained_checkpoint(name: str, source: str | None = None, progress: bool = True) -> Path:
    """The published weights of ``name`` as one of our self-describing checkpoints (architecture, ImageNet class
    names, the publisher's preprocessing), written once beside the download: what commands that read a
    checkpoint file (eval, predict, export, quantize, bench) are given for ``--weights torchvision``.
    """
    weights = find_weights(name, source)
    original = download_weights(weights, progress)  # checks the cached file's hash every time
    path = original.with_name(f"{name}-{weights.source}-{weights.sha256_prefix}.shufflenet.pt")
    if path.is_file():
        return path
    model = create_model(name)
    load_pretrained(model, original, strict_classifier=True)
    details = {"source": weights.source, "url": weights.url, "top1": weights.top1, "license": weights.license}
    checkpoint = make_checkpoint(model, name, weights.class_names(), weights.preprocessing, pretrained=details)
    return save_checkpoint(path, checkpoint)


def _timed_out(err: Exception) -> bool:
    # A slow connect comes wrapped in a URLError, a slow response or read as the bare TimeoutError.
    return isinstance(err, TimeoutError) or (isinstance(err, URLError) and isinstance(err.reason, TimeoutError))


def _reason(err: OSError | HTTPException) -> str:
    if isinstance(err, HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, URLError):
        return str(err.reason)
    if isinstance(err, IncompleteRead):
        return "the connection closed before the end of the file"
    return str(err) or type(err).__name__


registry.set_weights_loader(load_weights)
