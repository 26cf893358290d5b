"""Benchmark results for people: table rows for the CLI and a bar chart."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from shufflenet.bench.runner import BenchResult, BenchRow

TABLE_COLUMNS = [
    ("label", "backend"),
    ("batch_size", "batch"),
    ("median_ms", "median ms"),
    ("spread", "p10-p90 ms"),
    ("min_ms", "min ms"),
    ("img_per_s", "img/s"),
    ("speedup_vs_baseline", "x baseline"),
    ("speedup_vs_fp32_best", "x fp32 best"),
    ("mem_growth_mib", "peak +MiB"),
    ("max_abs_diff", "max|diff|"),
    ("top1_agreement", "top1 agree"),
    ("others", "others CPU"),
]


def table_rows(result: BenchResult) -> list[dict[str, Any]]:
    """Rows for :func:`shufflenet.cli.common.format_table` (spread and diff pre-formatted)."""
    out = []
    for row in result.rows:
        data = asdict(row)
        data["spread"] = f"{row.p10_ms:.2f}-{row.p90_ms:.2f}"
        data["max_abs_diff"] = f"{row.max_abs_diff:.1e}" if row.max_abs_diff is not None else None
        if row.others_cpu is not None:
            data["others"] = f"{row.others_cpu:.0%}" + ("" if row.clean else " (!)")
        out.append(data)
    return out


def not_faster_notes(rows: Sequence[BenchRow]) -> list[str]:
    """A line per reduced-precision candidate (bf16, int8) that measured no faster than the fastest fp32 row.

    From the measured rows, batch size by batch size: a CPU's features say what it could do, the table what
    it did (int8 without VNNI, bf16 without AMX, or a small model whose time goes to memory, not arithmetic).
    """
    fastest: dict[int, BenchRow] = {}
    for row in rows:
        if row.precision == "fp32" and (
            row.batch_size not in fastest or row.median_ms < fastest[row.batch_size].median_ms
        ):
            fastest[row.batch_size] = row
    slow: dict[str, list[str]] = {}
    for row in rows:
        best = fastest.get(row.batch_size)
        if row.precision != "fp32" and best is not None and row.median_ms >= best.median_ms:
            ratio = best.median_ms / row.median_ms
            slow.setdefault(row.label, []).append(f"batch {row.batch_size}: {ratio:.2f}x {best.label}")
    return [
        f"{label} is not faster than fp32 here ({'; '.join(where)}): keep fp32 on this machine"
        for label, where in slow.items()
    ]


def plot(result: BenchResult, path: str | Path) -> Path:
    """Grouped bar chart of throughput (img/s) per batch size, one bar per backend; written as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = list(dict.fromkeys(r.label for r in result.rows))
    batches = list(dict.fromkeys(r.batch_size for r in result.rows))
    if not labels:
        raise ValueError("the benchmark has no rows to plot")
    value = {(r.label, r.batch_size): r.img_per_s for r in result.rows}
    fig = Figure(figsize=(max(6.0, 1.2 * len(batches) * len(labels) / 2), 4.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    width = 0.8 / len(labels)
    for i, label in enumerate(labels):
        xs = [j + (i - (len(labels) - 1) / 2) * width for j in range(len(batches))]
        ys = [value.get((label, b), 0.0) for b in batches]
        bars = ax.bar(xs, ys, width, label=label)
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
    ax.set_ylabel("images / s (median)")
    settings, machine = result.settings, result.machine
    ax.set_title(
        f"{settings['model']} {settings['img_size']}x{settings['img_size']}, {settings['threads']} threads, "
        f"{machine['cpu']}",
        fontsize=9,
    )
    ax.legend(fontsize=7, ncols=2)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    return path
