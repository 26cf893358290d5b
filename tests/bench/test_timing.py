"""Interleaved timing, the load probe, peak memory and the machine record (structure only, no timings)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from shufflenet.bench import machine
from shufflenet.bench import timing as bench_timing


def test_time_interleaved_collects_samples_for_every_candidate() -> None:
    calls = {"a": 0, "b": 0}

    def make(name: str):
        def fn(x: torch.Tensor) -> torch.Tensor:
            calls[name] += 1
            return x * 2

        return fn

    x = torch.ones(4, 3, 8, 8)
    timings = bench_timing.time_interleaved(
        {"a": make("a"), "b": make("b")}, x, min_time_s=0.01, rounds=3, min_runs=6, max_others=None
    )
    for name, timing in timings.items():
        assert len(timing.samples_ms) >= 6 and len(timing.blocks) == 3 and timing.clean
        assert calls[name] == len(timing.samples_ms) + 3  # one untimed call per round
        assert timing.quantile_ms(0.1) <= timing.median_ms <= timing.quantile_ms(0.9)
        assert timing.throughput == pytest.approx(4 * 1e3 / timing.median_ms)


def test_timing_quantiles_interpolate() -> None:
    timing = bench_timing.Timing(samples_ms=[4.0, 1.0, 3.0, 2.0], batch_size=2)
    assert timing.median_ms == 2.5
    assert timing.quantile_ms(0.0) == 1.0 and timing.quantile_ms(1.0) == 4.0
    assert timing.quantile_ms(0.5) == 2.5
    assert timing.throughput == pytest.approx(800.0)


def test_samples_of_busy_blocks_are_left_out_while_enough_quiet_ones_remain() -> None:
    timing = bench_timing.Timing(blocks=[([1.0, 1.1], 0.0), ([5.0], 0.5), ([1.2], 0.05)])
    timing.select(0.1)
    assert timing.samples_ms == [1.0, 1.1, 1.2] and timing.clean
    assert timing.others_cpu == pytest.approx(0.55 / 3)
    busy = bench_timing.Timing(blocks=[([1.0], 0.0), ([5.0], 0.5), ([6.0], 0.4), ([7.0], 0.3)])
    busy.select(0.1)  # one quiet block of four: too few to trust, keep everything and say so
    assert busy.samples_ms == [1.0, 5.0, 6.0, 7.0] and not busy.clean
    busy.select(None)
    assert busy.samples_ms == [1.0, 5.0, 6.0, 7.0] and busy.clean
    assert busy.min_ms == 1.0


def test_load_probe_does_not_count_this_process() -> None:
    if bench_timing._system_jiffies() is None:
        pytest.skip("needs Linux /proc")
    with bench_timing.LoadProbe() as probe:
        end = time.perf_counter() + 0.3
        while time.perf_counter() < end:
            pass
    assert probe.others is not None and 0.0 <= probe.others <= 1.0


def test_peak_memory_sees_a_large_allocation() -> None:
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc")
    with bench_timing.PeakMemory() as memory:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        del block
    assert memory.growth_mib is not None and memory.growth_mib >= 50
    assert memory.peak_mib >= memory.start_mib


def test_machine_info_names_the_cpu() -> None:
    info = machine.machine_info(threads=2)
    assert info["cpu"] and info["threads"] == 2 and len(info["load_avg_1_5_15"]) == 3
    assert info["versions"]["torch"] == torch.__version__
