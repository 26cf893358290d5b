"""Latency, throughput and peak-memory measurement of inference backends, side by side in one process.

:mod:`~shufflenet.bench.timing` times candidates in interleaved rounds and watches the machine's load and
this process's peak memory; :mod:`~shufflenet.bench.machine` records where a run happened;
:mod:`~shufflenet.bench.runner` benchmarks one model over every backend/precision; :mod:`~shufflenet.bench.report`
turns results into table rows and a plot.
"""

from __future__ import annotations

from shufflenet.bench.machine import cpu_model_name, library_versions, machine_info
from shufflenet.bench.report import TABLE_COLUMNS, not_faster_notes, plot, table_rows
from shufflenet.bench.runner import (
    BASELINE_LABEL,
    EAGER_LABEL,
    BenchResult,
    BenchRow,
    Progress,
    benchmark,
    build_candidates,
    torchvision_twin,
)
from shufflenet.bench.timing import LoadProbe, PeakMemory, Timing, time_interleaved

__all__ = [
    "BASELINE_LABEL",
    "EAGER_LABEL",
    "TABLE_COLUMNS",
    "BenchResult",
    "BenchRow",
    "LoadProbe",
    "PeakMemory",
    "Progress",
    "Timing",
    "benchmark",
    "build_candidates",
    "cpu_model_name",
    "library_versions",
    "machine_info",
    "not_faster_notes",
    "plot",
    "table_rows",
    "time_interleaved",
    "torchvision_twin",
]
