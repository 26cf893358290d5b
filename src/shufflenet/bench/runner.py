"""Benchmark one model: every available backend/precision beside torchvision's eager model, in one process."""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from shufflenet import deploy
from shufflenet.bench.machine import machine_info
from shufflenet.bench.timing import PeakMemory, Timing, time_interleaved
from shufflenet.deploy.select import build_from_export

Progress = Callable[[str], None]


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
    files: Mapping[str, deploy.CompiledModel] | None = None,
) -> BenchResult:
    """Benchmark every available backend/precision of ``model`` beside torchvision eager (v2) in this process.

    Timing blocks during which other processes used more than ``max_others`` of the CPU are dropped
    (see :func:`time_interleaved`). Sets ``torch.set_num_threads(threads)`` for the run and restores it
    afterwards. Agreement columns compare each candidate's logits on one random batch with torchvision's
    eager model (v2 widths it has) or our eager model; with random weights only max|diff| means much.
    ``files``: runners of files made from ``model`` (an int8 file of `shufflenet quantize`, an export), by
    label, timed beside the candidates built here.
    """
    if not batch_sizes or any(int(b) < 1 for b in batch_sizes):
        raise ValueError(f"batch sizes must be integers >= 1, got {list(batch_sizes)}")
    if img_size < 32:
        raise ValueError(f"img_size must be at least 32 (the network downsamples by 32), got {img_size}")
    previous_threads = torch.get_num_threads()
    threads = threads or previous_threads
    torch.set_num_threads(threads)
    try:
        model = model.eval()
        name = model_name or getattr(model, "arch", None) or type(model).__name__
        # Agreement is judged against torchvision's model when there is one (the yardstick).
        twin = torchvision_twin(model)
        reference = twin if twin is not None else copy.deepcopy(model).eval()
        baseline_label = (BASELINE_LABEL if twin is not None else EAGER_LABEL) if baseline else None
        candidates, kinds, skipped = _candidates(
            model,
            reference,
            baseline_label,
            img_size,
            backends=backends,
            precisions=precisions,
            threads=threads,
            calibration_data=calibration_data,
            torch_compile=torch_compile,
            progress=progress,
        )
        for label, runner in (files or {}).items():
            candidates[label], kinds[label] = runner, (runner.backend, runner.precision)
        timing_options = {"min_time_s": min_time_s, "rounds": rounds, "max_others": max_others}
        generator = torch.Generator().manual_seed(1)
        rows: list[BenchRow] = []
        for batch in [int(b) for b in batch_sizes]:
            x = torch.randn(batch, deploy._in_chans(model), img_size, img_size, generator=generator)
            batch_rows = _measure(candidates, kinds, reference, x, name, threads, timing_options, progress)
            _fill_speedups(batch_rows, baseline_label)
            rows.extend(batch_rows)
        settings = {
            "model": name,
            "batch_sizes": [int(b) for b in batch_sizes],
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
    finally:
        torch.set_num_threads(previous_threads)


def _candidates(
    model: nn.Module, reference: nn.Module, baseline_label: str | None, img_size: int, **build: Any
) -> tuple[dict[str, Callable[[Tensor], Tensor]], dict[str, tuple[str, str]], dict[str, str]]:
    """The baseline (``reference`` run eagerly, unless no ``baseline_label``) and every runner, with their kinds."""
    candidates: dict[str, Callable[[Tensor], Tensor]] = {}
    kinds: dict[str, tuple[str, str]] = {}
    if baseline_label is not None:
        candidates[baseline_label] = _eager(reference)
        kinds[baseline_label] = ("eager", "fp32")
    runners, skipped = build_candidates(model, img_size, **build)
    for label, runner in runners.items():
        candidates[label] = runner
        kinds[label] = (runner.backend, runner.precision)
    return candidates, kinds, skipped


def _measure(
    candidates: dict[str, Callable[[Tensor], Tensor]],
    kinds: dict[str, tuple[str, str]],
    reference: nn.Module,
    x: Tensor,
    name: str,
    threads: int,
    timing_options: dict[str, Any],
    progress: Progress | None,
) -> list[BenchRow]:
    """One row per candidate at ``x``'s batch size: memory of the first call, agreement, then the timings."""
    batch, img_size = x.shape[0], x.shape[-1]
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
    timings = time_interleaved(candidates, x, **timing_options)
    return [
        _row(name, label, kinds[label], batch, img_size, threads, timing, memory[label], agreement[label])
        for label, timing in timings.items()
    ]


def _row(
    name: str,
    label: str,
    kind: tuple[str, str],
    batch: int,
    img_size: int,
    threads: int,
    timing: Timing,
    memory: PeakMemory,
    agreement: dict[str, Any],
) -> BenchRow:
    backend, precision = kind
    return BenchRow(
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
        peak_mem_mib=memory.peak_mib,
        mem_growth_mib=memory.growth_mib,
        max_abs_diff=agreement["max_abs_diff"],
        top1_agreement=agreement["top1_agreement"],
    )


def _fill_speedups(rows: list[BenchRow], baseline_label: str | None) -> None:
    base = next((r for r in rows if r.label == baseline_label), None)
    fp32 = [r for r in rows if r.precision == "fp32" and r.label != baseline_label]
    best_fp32 = min(fp32, key=lambda r: r.median_ms) if fp32 else None
    for row in rows:
        if base is not None:
            row.speedup_vs_baseline = base.median_ms / row.median_ms
        if best_fp32 is not None:
            row.speedup_vs_fp32_best = best_fp32.median_ms / row.median_ms
