"""Timing the guideline experiments on this machine (:func:`run_guidelines`).

Rows of one experiment are timed round-robin, repeat by repeat, so that load from other processes falls on all
rows alike; throughput is the median over repeats with the interquartile range as spread.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from statistics import median, quantiles
from typing import Any

import torch
from torch import Tensor, nn

from shufflenet.guidelines.claims import verdicts
from shufflenet.guidelines.experiments import (
    EXPERIMENTS,
    BenchSpec,
    GuidelineConfig,
    build_model,
    count_spec,
    experiment_specs,
)


def _check_device(device: str) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} requested but CUDA is not available here (torch {torch.__version__}, "
            f"torch.cuda.is_available() is False); run with --device cpu"
        )
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not supported; use cpu or cuda")
    return dev


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_calls(model: nn.Module, x: Tensor, iters: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        model(x)
    _sync(device)
    return time.perf_counter() - start


def measure_group(
    models: Sequence[nn.Module],
    inputs: Sequence[Tensor],
    device: torch.device,
    repeats: int,
    warmup: int,
    min_time: float,
) -> list[list[float]]:
    """Images/s samples for each model, timed round-robin so that background load hits every model alike.

    Each model is warmed up, its calls per repeat are chosen so one repeat lasts ``min_time``, then each repeat
    times every model once, starting the round at a different model each time.
    """
    iters = []
    with torch.inference_mode():
        for model, x in zip(models, inputs, strict=True):
            for _ in range(warmup):
                model(x)
            once = _time_calls(model, x, 1, device)
            iters.append(max(1, min(10_000, math.ceil(min_time / max(once, 1e-6)))))
        samples: list[list[float]] = [[] for _ in models]
        for r in range(repeats):
            order = list(range(len(models)))
            order = order[r % len(order) :] + order[: r % len(order)]
            for i in order:
                elapsed = _time_calls(models[i], inputs[i], iters[i], device)
                samples[i].append(inputs[i].shape[0] * iters[i] / elapsed)
    return samples


def _summary(samples: list[float]) -> dict[str, float]:
    mid = median(samples)
    q1, _, q3 = quantiles(samples, n=4, method="inclusive") if len(samples) > 1 else (mid, mid, mid)
    return {
        "images_per_s": mid,
        "images_per_s_q1": q1,
        "images_per_s_q3": q3,
        "spread_pct": 100 * (q3 - q1) / mid if mid else 0.0,
        "images_per_s_best": max(samples),  # the least disturbed repeat, for runs on a busy machine
    }


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """CPU model, core count, torch version and threads, GPU name, and the load average now."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _run_experiment(
    experiment: str, config: GuidelineConfig, device: torch.device, progress: Callable[[str], None] | None
) -> list[dict[str, Any]]:
    specs = experiment_specs(
        experiment,
        config.resolved_profile(),
        config.multipliers,
        config.input_size,
        config.model_widths,
        config.model_input_size,
        config.plus_sizes,
    )
    rows: list[dict[str, Any]] = []
    groups: dict[float, list[BenchSpec]] = {}
    for spec in specs:
        groups.setdefault(spec.multiplier, []).append(spec)
    for multiplier, group in groups.items():
        torch.manual_seed(0)
        models = [build_model(s, config.blocks).to(device).eval() for s in group]
        inputs = [torch.randn(config.batch_size, s.in_chans, s.input_size, s.input_size, device=device) for s in group]
        if progress:
            progress(f"{experiment} x{multiplier:g}: timing {len(group)} rows")
        samples = measure_group(models, inputs, device, config.repeats, config.warmup, config.min_time)
        del models, inputs
        base = None
        for spec, sample in zip(group, samples, strict=True):
            row: dict[str, Any] = {
                "experiment": experiment,
                "name": spec.name,
                "multiplier": spec.multiplier,
                "widths": spec.label,
                "channels": list(spec.channels),
                "groups": spec.groups,
                "input_size": spec.input_size,
                **count_spec(spec, config.blocks),
                **_summary(sample),
                "samples": [round(s, 3) for s in sample],
                "paper_gpu": spec.paper_gpu,
                "paper_arm": spec.paper_arm,
            }
            if spec.kind == "model":
                row["paper_mflops"] = spec.paper_mflops
            row["mflops"] = row["flops"] / 1e6
            row["mmac"] = row["mac"] / 1e6
            row["gflops_per_s"] = row["images_per_s"] * row["flops"] / 1e9  # what FLOPs predict stays constant
            row["mac_vs_bound"] = row["mac"] / row["mac_bound"] if row["mac_bound"] else None
            if base is None:
                base = row
            row["relative"] = row["images_per_s"] / base["images_per_s"]
            for platform_ in ("gpu", "arm"):
                ours, first = row[f"paper_{platform_}"], base[f"paper_{platform_}"]
                row[f"paper_{platform_}_relative"] = ours / first if ours and first else None
            rows.append(row)
            if progress:
                progress(
                    f"  {spec.name:<22} {row['mflops']:9.1f} MFLOPs {row['mmac']:9.2f} M MAC "
                    f"{row['images_per_s']:10.1f} img/s ±{row['spread_pct']:.1f}%"
                )
    return rows


def run_guidelines(config: GuidelineConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the selected experiments; JSON-ready results with one list of rows per experiment and verdicts.

    ``progress`` (optional) receives one line per experiment group and per timed row.
    """
    device = _check_device(config.device)
    unknown = [e for e in config.experiments if e not in EXPERIMENTS]
    if unknown:
        raise ValueError(f"unknown experiment(s) {unknown}; choose from {EXPERIMENTS}")
    if config.batch_size < 1 or config.repeats < 1:
        raise ValueError(f"batch_size and repeats must be >= 1, got {config.batch_size} and {config.repeats}")
    old_threads = torch.get_num_threads()
    old_benchmark = torch.backends.cudnn.benchmark
    old_mkldnn = torch.backends.mkldnn.enabled
    started = time.time()
    try:
        if config.threads:
            torch.set_num_threads(config.threads)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # the paper lets cuDNN pick its fastest algorithms
        before = machine_info(config.device)
        results: dict[str, Any] = {}
        torch.backends.mkldnn.enabled = config.mkldnn
        for experiment in EXPERIMENTS:
            if experiment in config.experiments:
                results[experiment] = _run_experiment(experiment, config, device, progress)
        after = machine_info(config.device)
    finally:
        torch.set_num_threads(old_threads)
        torch.backends.cudnn.benchmark = old_benchmark
        torch.backends.mkldnn.enabled = old_mkldnn
    settings = {**asdict(config), "profile": config.resolved_profile()}
    settings["machine"] = before
    settings["loadavg_after"] = after["loadavg"]
    settings["seconds"] = round(time.time() - started, 1)
    return {"settings": settings, **results, "verdicts": verdicts(results, config.tolerance)}
