"""Per-sample random streams: each image's augmentation draws from its own seed, whichever process reads it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def mix_seed(*numbers: int) -> int:
    """One 63-bit seed from several integers (seed, epoch, rank, position...)."""
    value = 0
    for number in numbers:
        value = (value * 1_000_003 + number) & (2**63 - 1)
    return value


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """torch's CPU generator seeded with ``seed`` inside the block; the caller's RNG state is restored after."""
    with torch.random.fork_rng(devices=[]):
        # The CPU generator alone: torch.manual_seed also queues CUDA seeding with a stack trace, 0.2 ms per
        # image (benchmarks/data_throughput.py shards).
        torch.default_generator.manual_seed(seed)
        yield
