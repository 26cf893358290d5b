"""The dynamic batcher on its own: when a batch runs, what it holds, and what each caller gets back."""

from __future__ import annotations

import asyncio
import threading

import torch

from shufflenet.serve.batcher import Batcher


class GatedModel:
    """Softmax over each image's values; the first batch waits for ``release`` (a busy runtime)."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.running = threading.Event()
        self.release = threading.Event()

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(images))
        self.running.set()
        self.release.wait(10)
        return images.float().softmax(1)


def image(hot: int) -> torch.Tensor:
    """A 4-class 'image' whose class ``hot`` is the most probable."""
    return torch.nn.functional.one_hot(torch.tensor(hot), 4).float() * 5


def test_a_lone_image_runs_at_once_whatever_the_window():
    async def main() -> tuple:
        model = GatedModel()
        model.release.set()
        batcher = Batcher(model, max_batch_size=8, max_delay_s=30.0)
        result = await asyncio.wait_for(batcher.submit(image(2), top_k=2), 10)
        batcher.close(10)
        return result, model.batches

    result, batches = asyncio.run(main())
    assert batches == [1]
    assert result.indices[0] == 2 and len(result.indices) == 2
    assert result.probabilities == sorted(result.probabilities, reverse=True)
    assert result.probabilities[0] == torch.tensor([0.0, 0, 5, 0]).softmax(0)[2].item()


def test_images_queued_during_a_batch_form_the_next_up_to_the_maximum():
    async def main() -> tuple:
        model = GatedModel()
        batcher = Batcher(model, max_batch_size=4, max_delay_s=30.0)
        first = batcher.submit(image(0))
        await asyncio.get_running_loop().run_in_executor(None, model.running.wait, 10)
        later = [batcher.submit(image(i % 4), top_k=1 + i % 2) for i in range(6)]  # while the runtime is busy
        model.release.set()
        results = await asyncio.wait_for(asyncio.gather(first, *later), 10)
        batcher.close(10)
        return results, model.batches

    results, batches = asyncio.run(main())
    assert batches == [1, 4, 2]
    assert [r.indices[0] for r in results[1:]] == [i % 4 for i in range(6)]  # each caller gets its own image's
    assert [len(r.indices) for r in results[1:]] == [1 + i % 2 for i in range(6)]  # and its own top_k
    assert [r.batch_size for r in results] == [1, 4, 4, 4, 4, 2, 2]


def test_the_window_waits_only_for_requests_on_their_way():
    async def main() -> tuple:
        model = GatedModel()
        model.release.set()
        batcher = Batcher(model, max_batch_size=8, max_delay_s=30.0)
        with batcher.arriving():  # a second request is still being read or decoded
            first = batcher.submit(image(1))
            await asyncio.sleep(0.3)
            waited = not first.done() and model.batches == []
            second = batcher.submit(image(3))
        results = await asyncio.wait_for(asyncio.gather(first, second), 10)
        # with a short window the batch runs without the late request once the oldest has waited enough
        short = Batcher(model, max_batch_size=8, max_delay_s=0.05)
        with short.arriving():
            alone = await asyncio.wait_for(short.submit(image(0)), 10)
        batcher.close(10)
        short.close(10)
        return waited, results, alone, model.batches

    waited, results, alone, batches = asyncio.run(main())
    assert waited
    assert batches == [2, 1]
    assert [r.indices[0] for r in results] == [1, 3] and alone.batch_size == 1
