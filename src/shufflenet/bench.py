"""Latency, throughput and peak-memory measurement of inference backends, side by side in one process.

Candidates are timed in interleaved rounds (A, B, C, A, B, C, ...) rather than one after the other, so
load from other processes on a shared machine falls on all of them alike; the ratios between rows of
one run are therefore more trustworthy than the absolute numbers. Each block of runs starts with one
untimed call, which absorbs the switch between runtimes (their thread pools spin down and up).
"""

from __future__ import annotations

import copy
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from shufflenet import deploy
from shufflenet.deploy.select import build_from_export

Progress = Callable[[str], None]


# --------------------------------------------------------------------------------------------------
# Machine and memory
# --------------------------------------------------------------------------------------------------


def cpu_model_name() -> str:
    """The CPU's model name as ``lscpu`` shows it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """Where a benchmark ran: CPU, cores, threads used, load average, bf16 support and library versions."""
    versions = {"torch": torch.__version__}
    for module in ("onnxruntime", "openvino", "ncnn", "ai_edge_litert", "torchvision"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            versions[module] = None
    return {
        "cpu": cpu_model_name(),
        "logical_cpus": os.cpu_count(),
        "threads": threads or torch.get_num_threads(),
        "load_avg_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "cpu_bf16": deploy.cpu_has_bf16(),
        "python": platform.python_version(),
        "versions": versions,
    }


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


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Benchmark of one model
# --------------------------------------------------------------------------------------------------


@dataclass
class BenchRow:
    """One candidate at one batch size: latency statistics, throughput, memory, agreement, speed-ups."""

    model: str
    label: str
    backend: str
    precision: str
    batch_size: int
    img_size: int
    threads: int
    median_ms: float
    min_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    others_cpu: float | None
    clean: bool
    img_per_s: float
    peak_mem_mib: float | None
    mem_growth_mib: float | None
    max_abs_diff: float | None
    top1_agreement: float | None
    speedup_vs_baseline: float | None = None
    speedup_vs_fp32_best: float | None = None


@dataclass
class BenchResult:
    """Rows of a benchmark run plus where and how it ran."""

    rows: list[BenchRow]
    machine: dict[str, Any]
    settings: dict[str, Any]
    skipped: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "machine": self.machine,
            "settings": self.settings,
            "skipped": self.skipped,
            "rows": [asdict(r) for r in self.rows],
        }


BASELINE_LABEL = "torchvision eager"
EAGER_LABEL = "shufflenet eager"


def torchvision_twin(model: nn.Module) -> nn.Module | None:
    """The torchvision ShuffleNetV2 with ``model``'s weights (same keys), or None for v1 / other widths."""
    from shufflenet.models import ShuffleNetV2

    if not isinstance(model, ShuffleNetV2):
        return None
    import torchvision

    builders = {
        0.5: torchvision.models.shufflenet_v2_x0_5,
        1.0: torchvision.models.shufflenet_v2_x1_0,
        1.5: torchvision.models.shufflenet_v2_x1_5,
        2.0: torchvision.models.shufflenet_v2_x2_0,
    }
    builder = builders.get(model.width_mult)
    if builder is None or model.in_chans != 3:
        return None
    twin = builder(weights=None, num_classes=model.fc.out_features)
    twin.load_state_dict(model.state_dict())
    return twin.eval()


def _eager(module: nn.Module) -> Callable[[Tensor], Tensor]:
    def run(x: Tensor) -> Tensor:
        with torch.inference_mode():
            return module(x)

    return run


def build_candidates(
    model: nn.Module,
    img_size: int,
    *,
    backends: Sequence[str] | None = None,
    precisions: Sequence[str] | None = None,
    threads: int | None = None,
    calibration_data: Iterable[Tensor] | None = None,
    torch_compile: bool = False,
    progress: Progress | None = None,
) -> tuple[dict[str, deploy.CompiledModel], dict[str, str]]:
    """Every available backend/precision runner for ``model`` (one ONNX export shared), and what was skipped."""
    backends = list(backends or deploy.BACKENDS)
    precisions = list(precisions or deploy.PRECISIONS)
    runners: dict[str, deploy.CompiledModel] = {}
    skipped: dict[str, str] = {}
    example = torch.randn(1, deploy._in_chans(model), img_size, img_size)
    if calibration_data is None:
        # Speed does not depend on the calibration images; agreement on real images is measured elsewhere.
        generator = torch.Generator().manual_seed(0)
        calibration_data = [torch.randn(8, 3, img_size, img_size, generator=generator) for _ in range(4)]
    calibration = list(calibration_data)

    def note(text: str) -> None:
        if progress:
            progress(text)

    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "model.onnx"
        exported = False
        for backend in backends:
            for precision in precisions:
                label = f"{backend} {precision}"
                if precision not in deploy.SUPPORTED[backend]:
                    continue
                if not deploy.backend_available(backend):
                    skipped[label] = f"{backend} not installed ({deploy.install_hint(backend)})"
                    continue
                if precision == "bf16" and not deploy.cpu_has_bf16():
                    skipped[label] = "no native bf16 on this CPU"
                    continue
                note(f"building {label}")
                try:
                    if backend == "torch":
                        runners[label] = deploy.TorchModel(model, precision, threads=threads)
                        if torch_compile and precision == "fp32":
                            note("building torch fp32 compiled (torch.compile)")
                            runners["torch fp32 compiled"] = deploy.TorchModel(
                                model, precision, threads=threads, torch_compile=True
                            )
                        continue
                    if deploy.RUNTIMES[backend].source != "onnx":
                        runners[label] = build_from_export(
                            backend, model, precision, example, calibration, threads, Path(tmp)
                        )
                        continue
                    if not exported:
                        deploy.export_onnx(model, onnx_path, example_input=example, dynamic_batch=True)
                        exported = True
                    runners[label] = deploy.load_onnx(onnx_path, backend, precision, calibration, threads)
                except (ImportError, ValueError, RuntimeError) as err:
                    skipped[label] = deploy._first_line(err)
    return runners, skipped


def benchmark(
    model: nn.Module,
    *,
    model_name: str | None = None,
    batch_sizes: Sequence[int] = (1, 8, 32),
    img_size: int = 224,
    threads: int | None = None,
    backends: Sequence[str] | None = None,
    precisions: Sequence[str] | None = None,
    baseline: bool = True,
    calibration_data: Iterable[Tensor] | None = None,
    torch_compile: bool = False,
    min_time_s: float = 2.0,
    rounds: int = 8,
    max_others: float | None = 0.1,
    progress: Progress | None = None,
) -> BenchResult:
    """Benchmark every available backend/precision of ``model`` beside torchvision eager (v2) in this process.

    Timing blocks during which other processes used more than ``max_others`` of the CPU are dropped
    (see :func:`time_interleaved`). Sets ``torch.set_num_threads(threads)`` for the run and restores it
    afterwards. Agreement columns compare each candidate's logits on one random batch with torchvision's
    eager model (v2 widths it has) or our eager model; with random weights only max|diff| means much.
    """
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise ValueError(f"batch sizes must be integers >= 1, got {list(batch_sizes)}")
    if img_size < 32:
        raise ValueError(f"img_size must be at least 32 (the network downsamples by 32), got {img_size}")
    previous_threads = torch.get_num_threads()
    threads = threads or previous_threads
    torch.set_num_threads(threads)
    try:
        return _benchmark(
            model.eval(),
            model_name or getattr(model, "arch", None) or type(model).__name__,
            [int(b) for b in batch_sizes],
            img_size,
            threads,
            backends,
            precisions,
            baseline,
            calibration_data,
            torch_compile,
            min_time_s,
            rounds,
            max_others,
            progress,
        )
    finally:
        torch.set_num_threads(previous_threads)


def _benchmark(
    model: nn.Module,
    name: str,
    batch_sizes: list[int],
    img_size: int,
    threads: int,
    backends: Sequence[str] | None,
    precisions: Sequence[str] | None,
    baseline: bool,
    calibration_data: Iterable[Tensor] | None,
    torch_compile: bool,
    min_time_s: float,
    rounds: int,
    max_others: float | None,
    progress: Progress | None,
) -> BenchResult:
    # Agreement is judged against torchvision's model when there is one (the yardstick).
    twin = torchvision_twin(model)
    reference = twin if twin is not None else copy.deepcopy(model).eval()
    candidates: dict[str, Callable[[Tensor], Tensor]] = {}
    kinds: dict[str, tuple[str, str]] = {}
    baseline_label = None
    if baseline:
        baseline_label = BASELINE_LABEL if twin is not None else EAGER_LABEL
        candidates[baseline_label] = _eager(reference)
        kinds[baseline_label] = ("eager", "fp32")
    runners, skipped = build_candidates(
        model,
        img_size,
        backends=backends,
        precisions=precisions,
        threads=threads,
        calibration_data=calibration_data,
        torch_compile=torch_compile,
        progress=progress,
    )
    for label, runner in runners.items():
        candidates[label] = runner
        kinds[label] = (runner.backend, runner.precision)

    generator = torch.Generator().manual_seed(1)
    rows: list[BenchRow] = []
    for batch in batch_sizes:
        x = torch.randn(batch, deploy._in_chans(model), img_size, img_size, generator=generator)
        with torch.inference_mode():
            ref_logits = reference(x)
        agreement, memory = {}, {}
        for label, fn in candidates.items():
            # The first call at a new shape allocates the activations (and runtime arenas): measure it.
            with PeakMemory() as memory[label]:
                logits = fn(x)
            agreement[label] = deploy.agreement(ref_logits, logits.float())
        if progress:
            progress(f"timing batch {batch} at {img_size}x{img_size}: {len(candidates)} candidates")
        timings = time_interleaved(candidates, x, min_time_s=min_time_s, rounds=rounds, max_others=max_others)
        batch_rows = []
        for label, timing in timings.items():
            backend, precision = kinds[label]
            batch_rows.append(
                BenchRow(
                    model=name,
                    label=label,
                    backend=backend,
                    precision=precision,
                    batch_size=batch,
                    img_size=img_size,
                    threads=threads,
                    median_ms=timing.median_ms,
                    min_ms=timing.min_ms,
                    p10_ms=timing.quantile_ms(0.1),
                    p90_ms=timing.quantile_ms(0.9),
                    runs=len(timing.samples_ms),
                    others_cpu=timing.others_cpu,
                    clean=timing.clean,
                    img_per_s=timing.throughput,
                    peak_mem_mib=memory[label].peak_mib,
                    mem_growth_mib=memory[label].growth_mib,
                    max_abs_diff=agreement[label]["max_abs_diff"],
                    top1_agreement=agreement[label]["top1_agreement"],
                )
            )
        _fill_speedups(batch_rows, baseline_label)
        rows.extend(batch_rows)
    settings = {
        "model": name,
        "batch_sizes": batch_sizes,
        "img_size": img_size,
        "threads": threads,
        "baseline": baseline_label,
        "min_time_s_per_candidate": min_time_s,
        "rounds": rounds,
        "max_others_cpu": max_others,
        "calibration": "given" if calibration_data is not None else "random (speed only)",
        "reference": "torchvision eager" if twin is not None else "shufflenet eager",
    }
    return BenchResult(rows=rows, machine=machine_info(threads), settings=settings, skipped=skipped)


def _fill_speedups(rows: list[BenchRow], baseline_label: str | None) -> None:
    base = next((r for r in rows if r.label == baseline_label), None)
    fp32 = [r for r in rows if r.precision == "fp32" and r.label != baseline_label]
    best_fp32 = min(fp32, key=lambda r: r.median_ms) if fp32 else None
    for row in rows:
        if base is not None:
            row.speedup_vs_baseline = base.median_ms / row.median_ms
        if best_fp32 is not None:
            row.speedup_vs_fp32_best = best_fp32.median_ms / row.median_ms


# --------------------------------------------------------------------------------------------------
# Presentation
# --------------------------------------------------------------------------------------------------

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
