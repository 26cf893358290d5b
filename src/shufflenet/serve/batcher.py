"""The dynamic batcher: requests from the event loop queue up; one inference thread runs them in batches.

When the inference thread is free it takes what is queued (at most ``max_batch_size`` images) at once, unless
more requests are on their way (announced with :meth:`Batcher.arriving`: their bodies are still being read or
decoded). Only then does it wait for them, and never longer than ``max_delay_s`` after the oldest image
queued: a lone client pays no batching delay, and images that arrive while a batch runs form the next batch.
Under load the queue holds a full batch whenever the thread frees up, so batches fill without waiting.

One thread owns the runtime, so its own threads (cores / workers) are the only ones computing: no
oversubscription. The queue is bounded; a full queue refuses at once (the caller answers 503) instead of
letting latency grow without limit. Requests whose caller gave up (timeout, disconnect) are dropped before
they reach the model.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor

log = logging.getLogger("shufflenet.serve")


class QueueFullError(Exception):
    """The batcher's queue holds ``max_queue`` images already."""


class BatcherClosedError(Exception):
    """The batcher is draining for shutdown and takes no new work."""


@dataclass
class BatchResult:
    """One image's top-k classes (most probable first) and what its batch cost."""

    indices: list[int]
    probabilities: list[float]
    queue_ms: float
    inference_ms: float
    batch_size: int


@dataclass
class _Item:
    image: Tensor
    top_k: int
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    """Queue of single images in front of ``model``; ``await batcher.submit(image, k)`` gives its top-k.

    ``model`` maps a stacked batch of the submitted images to class probabilities (N, classes).
    """

    def __init__(
        self,
        model: Callable[[Tensor], Tensor],
        max_batch_size: int = 16,
        max_delay_s: float = 0.005,
        max_queue: int = 256,
        on_batch: Callable[[int, float], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
        on_arriving: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_delay_s < 0 or max_queue < 1:
            raise ValueError(
                f"batcher needs max_batch_size >= 1, max_delay_s >= 0, max_queue >= 1; got "
                f"{max_batch_size}, {max_delay_s}, {max_queue}"
            )
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_queue = max_queue
        self.on_batch = on_batch or (lambda size, seconds: None)
        self.on_depth = on_depth or (lambda depth: None)
        self.on_arriving = on_arriving or (lambda count: None)
        self._queue: deque[_Item] = deque()
        self._arriving = 0
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="shufflenet-inference", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Images waiting now."""
        return len(self._queue)

    @contextmanager
    def arriving(self) -> Iterator[None]:
        """Announce a request whose images will be submitted inside this block (worth waiting for)."""
        with self._cond:
            self._arriving += 1
            self.on_arriving(self._arriving)
        try:
            yield
        finally:
            with self._cond:
                self._arriving -= 1
                self.on_arriving(self._arriving)
                self._cond.notify()

    def submit(self, image: Tensor, top_k: int = 5) -> asyncio.Future:
        """Queue one image; the future resolves to a :class:`BatchResult` (call from the event loop)."""
        loop = asyncio.get_running_loop()
        item = _Item(image, top_k, loop.create_future(), loop)
        with self._cond:
            if self._closing:
                raise BatcherClosedError("the service is shutting down")
            if len(self._queue) >= self.max_queue:
                self._drop_abandoned()
            if len(self._queue) >= self.max_queue:
                raise QueueFullError(f"{len(self._queue)} images are waiting (--max-queue {self.max_queue})")
            self._queue.append(item)
            self.on_depth(len(self._queue))
            self._cond.notify()
        return item.future

    def close(self, timeout: float | None = None) -> None:
        """Stop taking work, finish every queued image, then stop the inference thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)

    def _drop_abandoned(self) -> None:
        """Forget items whose caller stopped waiting (timed out, disconnected); holds the lock."""
        if any(item.future.done() for item in self._queue):
            kept = [item for item in self._queue if not item.future.done()]
            self._queue.clear()
            self._queue.extend(kept)

    def _next_batch(self) -> list[_Item] | None:
        """What is queued, once nothing more is on its way or the oldest has waited long enough; None when done."""
        with self._cond:
            while True:
                self._drop_abandoned()
                if self._queue:
                    waited = time.perf_counter() - self._queue[0].enqueued
                    full = len(self._queue) >= self.max_batch_size
                    if full or self._closing or not self._arriving or waited >= self.max_delay_s:
                        count = min(self.max_batch_size, len(self._queue))
                        batch = [self._queue.popleft() for _ in range(count)]
                        self.on_depth(len(self._queue))
                        return batch
                    self._cond.wait(self.max_delay_s - waited)
                elif self._closing:
                    return None
                else:
                    self._cond.wait()

    def _run(self) -> None:
        while (batch := self._next_batch()) is not None:
            started = time.perf_counter()
            try:
                with torch.inference_mode():
                    probabilities = self.model(torch.stack([item.image for item in batch]))
                    k = min(max(item.top_k for item in batch), probabilities.shape[1])
                    top_probabilities, top_indices = probabilities.topk(k)
                rows = zip(top_indices.tolist(), top_probabilities.tolist(), strict=True)
            except Exception as err:  # one bad batch must not stop the thread that serves everyone
                log.exception("inference failed for a batch of %d", len(batch))
                for item in batch:
                    item.loop.call_soon_threadsafe(_set_exception, item.future, err)
                continue
            seconds = time.perf_counter() - started
            self.on_batch(len(batch), seconds)
            by_loop: dict[asyncio.AbstractEventLoop, list] = {}
            for (indices, probs), item in zip(rows, batch, strict=True):
                queue_ms = (started - item.enqueued) * 1000
                result = BatchResult(indices[: item.top_k], probs[: item.top_k], queue_ms, seconds * 1000, len(batch))
                by_loop.setdefault(item.loop, []).append((item.future, result))
            for loop, results in by_loop.items():  # one wake-up of the event loop per batch, not per image
                loop.call_soon_threadsafe(_set_results, results)


def _set_results(results: list[tuple[asyncio.Future, BatchResult]]) -> None:
    for future, result in results:
        if not future.done():
            future.set_result(result)


def _set_exception(future: asyncio.Future, err: Exception) -> None:
    if not future.done():
        future.set_exception(err)
