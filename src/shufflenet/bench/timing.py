"""Timing candidates side by side: interleaved rounds, the load other processes put on the CPU, peak memory.

Candidates are timed in interleaved rounds (A, B, C, A, B, C, ...) rather than one after the other, so
load from other processes on a shared machine falls on all of them alike; the ratios between rows of
one run are therefore more trustworthy than the absolute numbers. Each block of runs starts with one
untimed call, which absorbs the switch between runtimes (their thread pools spin down and up).
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor


def _rss_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak resident memory of this process inside a ``with`` block, in MiB.

    On Linux the kernel's high-water mark (VmHWM) is reset on entry (``/proc/self/clear_refs``), so
    ``peak_mib`` is the peak during the block and ``growth_mib`` the peak above the RSS at entry. Elsewhere
    the process-lifetime ``ru_maxrss`` is all there is, and ``growth_mib`` stays None.
    """

    def __init__(self) -> None:
        self.start_mib: float | None = None
        self.peak_mib: float | None = None
        self.growth_mib: float | None = None
        self._reset = False

    def __enter__(self) -> PeakMemory:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._reset = True
        except OSError:
            self._reset = False
        rss = _rss_kib("VmRSS")
        self.start_mib = rss / 1024 if rss is not None else None
        return self

    def __exit__(self, *exc: object) -> None:
        hwm = _rss_kib("VmHWM") if self._reset else None
        if hwm is not None:
            self.peak_mib = hwm / 1024
            if self.start_mib is not None:
                self.growth_mib = max(0.0, self.peak_mib - self.start_mib)
        else:
            self.peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _system_jiffies() -> tuple[int, int] | None:
    """(busy, total) CPU time of the whole machine in clock ticks, from /proc/stat."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return total - idle, total


def _own_jiffies() -> int | None:
    """User + system CPU time of this process (all threads) in clock ticks."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[11]) + int(fields[12])


class LoadProbe:
    """Share of the machine's CPU used by *other* processes during a ``with`` block (Linux; else None)."""

    def __init__(self) -> None:
        self.others: float | None = None

    def __enter__(self) -> LoadProbe:
        self._system, self._own = _system_jiffies(), _own_jiffies()
        return self

    def __exit__(self, *exc: object) -> None:
        system, own = _system_jiffies(), _own_jiffies()
        if None in (system, own, self._system, self._own):
            return
        total = system[1] - self._system[1]
        if total > 0:
            self.others = max(0.0, (system[0] - self._system[0]) - (own - self._own)) / total


@dataclass
class Timing:
    """Latency samples of one candidate at one input shape (milliseconds per call).

    ``samples_ms`` are the samples the statistics use: those of blocks during which other processes
    used at most ``max_others`` of the machine's CPU, when at least a third of the blocks were that
    quiet; otherwise every sample (and ``clean`` is False).
    """

    samples_ms: list[float] = field(default_factory=list)
    batch_size: int = 1
    blocks: list[tuple[list[float], float | None]] = field(default_factory=list)
    clean: bool = True

    @property
    def median_ms(self) -> float:
        """Median latency."""
        return statistics.median(self.samples_ms)

    @property
    def min_ms(self) -> float:
        """Fastest call (the least disturbed by other processes)."""
        return min(self.samples_ms)

    def quantile_ms(self, q: float) -> float:
        """Latency quantile ``q`` in [0, 1] (linear interpolation)."""
        data = sorted(self.samples_ms)
        pos = q * (len(data) - 1)
        low = int(pos)
        high = min(low + 1, len(data) - 1)
        return data[low] + (data[high] - data[low]) * (pos - low)

    @property
    def throughput(self) -> float:
        """Images per second at the median latency."""
        return self.batch_size * 1e3 / self.median_ms

    @property
    def others_cpu(self) -> float | None:
        """Mean share of the machine's CPU other processes used during this candidate's blocks."""
        shares = [share for _, share in self.blocks if share is not None]
        return sum(shares) / len(shares) if shares else None

    def select(self, max_others: float | None) -> None:
        """Keep the samples of quiet blocks (see the class docstring)."""
        everything = [t for samples, _ in self.blocks for t in samples]
        quiet = [
            samples for samples, share in self.blocks if share is None or max_others is None or share <= max_others
        ]
        if max_others is None or 3 * len(quiet) >= len(self.blocks):
            self.samples_ms = [t for samples in quiet for t in samples]
            self.clean = True
        else:
            self.samples_ms = everything
            self.clean = False


def time_interleaved(
    candidates: Mapping[str, Callable[[Tensor], Any]],
    x: Tensor,
    *,
    min_time_s: float = 2.0,
    rounds: int = 5,
    min_runs: int = 5,
    max_runs: int = 500,
    max_others: float | None = 0.1,
) -> dict[str, Timing]:
    """Time every candidate on ``x`` in ``rounds`` interleaved blocks; about ``min_time_s`` each in total.

    Blocks during which other processes took more than ``max_others`` of the machine's CPU are left
    out of the statistics when enough quiet blocks remain (None keeps everything).
    """
    timings = {name: Timing(batch_size=x.shape[0]) for name in candidates}
    budget = min_time_s / rounds
    per_round_min = max(1, -(-min_runs // rounds))
    per_round_max = max(1, max_runs // rounds)
    for _ in range(rounds):
        for name, fn in candidates.items():
            fn(x)
            samples: list[float] = []
            with LoadProbe() as probe:
                end = time.perf_counter() + budget
                while len(samples) < per_round_min or (time.perf_counter() < end and len(samples) < per_round_max):
                    start = time.perf_counter()
                    fn(x)
                    samples.append((time.perf_counter() - start) * 1e3)
            timings[name].blocks.append((samples, probe.others))
    for timing in timings.values():
        timing.select(max_others)
    return timings
