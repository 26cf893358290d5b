"""The dynamic batcher: requests from the event loop queue up; one inference thread runs them in batches.

A batch runs when ``max_batch_size`` images wait or when the oldest has waited ``max_delay_s``, whichever
comes first. One thread owns the runtime, so its own threads (cores / workers) are the only ones computing:
no oversubscription. The queue is bounded; a full queue refuses at once (the caller answers 503) instead of
letting latency grow without limit. Requests whose caller gave up (timeout, disconnect) are dropped before
they reach the model.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
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
    """One image's probabilities and what its batch cost."""

    probabilities: Tensor
    queue_ms: float
    inference_ms: float
    batch_size: int


@dataclass
class _Item:
    image: Tensor
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.perf_counter)


class Batcher:
    """Queue of single images in front of ``model``; ``await batcher.submit(image)`` gives its probabilities."""

    def __init__(
        self,
        model: Callable[[Tensor], Tensor],
        max_batch_size: int = 16,
        max_delay_s: float = 0.005,
        max_queue: int = 256,
        on_batch: Callable[[int, float], None] | None = None,
        on_depth: Callable[[int], None] | None = None,
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
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="shufflenet-inference", daemon=True)
        self._thread.start()

    @property
    def depth(self) -> int:
        """Images waiting now."""
        return len(self._queue)

    def submit(self, image: Tensor) -> asyncio.Future:
        """Queue one CHW image; the future resolves to a :class:`BatchResult` (call from the event loop)."""
        loop = asyncio.get_running_loop()
        item = _Item(image, loop.create_future(), loop)
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
        kept = [item for item in self._queue if not item.future.done()]
        self._queue.clear()
        self._queue.extend(kept)

    def _next_batch(self) -> list[_Item] | None:
        """Wait for a full batch or the oldest item's deadline; None when closing with nothing left."""
        with self._cond:
            while True:
                self._drop_abandoned()
                if self._queue:
                    waited = time.perf_counter() - self._queue[0].enqueued
                    if len(self._queue) >= self.max_batch_size or waited >= self.max_delay_s or self._closing:
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
                    logits = torch.as_tensor(self.model(torch.stack([item.image for item in batch])))
                probabilities = logits.float().softmax(1)
            except Exception as err:  # one bad batch must not stop the thread that serves everyone
                log.exception("inference failed for a batch of %d", len(batch))
                for item in batch:
                    item.loop.call_soon_threadsafe(_set_exception, item.future, err)
                continue
            seconds = time.perf_counter() - started
            self.on_batch(len(batch), seconds)
            for row, item in zip(probabilities, batch, strict=True):
                result = BatchResult(row, (started - item.enqueued) * 1000, seconds * 1000, len(batch))
                item.loop.call_soon_threadsafe(_set_result, item.future, result)


def _set_result(future: asyncio.Future, result: BatchResult) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future, err: Exception) -> None:
    if not future.done():
        future.set_exception(err)
