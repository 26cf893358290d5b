"""Where a benchmark ran: the CPU, its cores, the load, and the versions of the libraries timed."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import torch

from shufflenet import deploy


def cpu_model_name() -> str:
    """The CPU's model name as ``lscpu`` shows it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def library_versions() -> dict[str, str | None]:
    """Versions of torch and of the optional runtimes and torchvision (None: not installed)."""
    versions: dict[str, str | None] = {"torch": torch.__version__}
    for module in ("onnxruntime", "openvino", "ncnn", "ai_edge_litert", "torchvision"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            versions[module] = None
    return versions


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """Where a benchmark ran: CPU, cores, threads used, load average, bf16 support and library versions."""
    # One key per fact; a new fact about the machine (e.g. CPU features) is one more key here.
    return {
        "cpu": cpu_model_name(),
        "logical_cpus": os.cpu_count(),
        "threads": threads or torch.get_num_threads(),
        "load_avg_1_5_15": [round(v, 2) for v in os.getloadavg()],
        "cpu_bf16": deploy.cpu_has_bf16(),
        "python": platform.python_version(),
        "versions": library_versions(),
    }
