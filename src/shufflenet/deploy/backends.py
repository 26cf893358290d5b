"""Which runtimes exist, which precisions each runs, whether they are installed, and what the CPU can do.

A runtime is one module under :mod:`shufflenet.deploy.runtimes` holding a :class:`CompiledModel` subclass,
plus one :class:`Runtime` line in :data:`RUNTIMES`; everything else (``BACKENDS``, ``SUPPORTED``, the
install hints, ``backend="auto"``) follows from that line.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any

from shufflenet.deploy.cpu import cpu_features, has_bf16

PRECISIONS = ("fp32", "bf16", "int8")


@dataclass(frozen=True)
class Runtime:
    """One inference runtime: its precisions, its runner class and the package it needs."""

    name: str
    precisions: tuple[str, ...]
    runner: str  # "module:Class", the module under shufflenet.deploy.runtimes
    source: str  # what the runner is built from: "module" (an nn.Module), "onnx" (an .onnx file), "ncnn", "tflite"
    package: str | None = None  # import name of the runtime library (None: PyTorch itself)
    extra: str | None = None  # pip extra of shufflenet that installs it
    converter: str | None = None  # import name of the package that writes its format from PyTorch
    in_auto: bool = True  # whether backend="auto" races it (LiteRT's ~20 s conversion keeps it out)


RUNTIMES: dict[str, Runtime] = {
    r.name: r
    for r in (
        Runtime("torch", ("fp32", "bf16"), "torch:TorchModel", "module"),
        Runtime("onnxruntime", ("fp32", "int8"), "onnxruntime:OnnxRuntimeModel", "onnx", "onnxruntime", "onnx"),
        Runtime("openvino", ("fp32", "bf16", "int8"), "openvino:OpenVinoModel", "onnx", "openvino", "openvino"),
        Runtime("ncnn", ("fp32",), "ncnn:NcnnModel", "ncnn", "ncnn", "ncnn", converter="pnnx"),
        Runtime(
            "litert",
            ("fp32", "int8"),
            "litert:LiteRTModel",
            "tflite",
            "ai_edge_litert",
            "litert",
            "litert_torch",
            False,
        ),
    )
}
BACKENDS = tuple(RUNTIMES)
SUPPORTED: dict[str, tuple[str, ...]] = {name: r.precisions for name, r in RUNTIMES.items()}


def runner_class(backend: str) -> type:
    """The CompiledModel subclass of ``backend`` (its module is imported now, its runtime library later)."""
    _check_backend(backend)
    module, cls = RUNTIMES[backend].runner.split(":")
    return getattr(importlib.import_module(f"shufflenet.deploy.runtimes.{module}"), cls)


def backend_available(backend: str) -> bool:
    """Whether the runtime behind ``backend`` can be imported here."""
    _check_backend(backend)
    runtime = RUNTIMES[backend]
    packages = [p for p in (runtime.package, runtime.converter) if p is not None]
    return all(importlib.util.find_spec(p) is not None for p in packages)


def available_backends() -> list[str]:
    """Backends whose runtime is installed, in :data:`BACKENDS` order."""
    return [b for b in BACKENDS if backend_available(b)]


def install_hint(backend: str) -> str:
    """The pip command that installs the runtime of ``backend``."""
    _check_backend(backend)
    extra = RUNTIMES[backend].extra
    return "" if extra is None else f"pip install 'shufflenet[{extra}]'"


def cpu_has_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic natively (AVX-512 BF16 or AMX); otherwise bf16 is emulated."""
    return has_bf16(cpu_features())


def _check_backend(backend: str) -> None:
    if backend not in RUNTIMES:
        raise ValueError(f"unknown backend {backend!r}; valid: 'auto', {', '.join(map(repr, RUNTIMES))}")


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(map(repr, PRECISIONS))}")


def _check_supported(backend: str, precision: str) -> None:
    if precision not in SUPPORTED[backend]:
        others = [b for b in BACKENDS if precision in SUPPORTED[b]]
        raise ValueError(
            f"backend {backend!r} does not run precision {precision!r} (it runs {', '.join(SUPPORTED[backend])}); "
            f"{precision} runs on {', '.join(others)}"
        )


def _require(backend: str) -> Any:
    """Import the runtime module of ``backend`` or raise an ImportError naming the pip extra."""
    runtime = RUNTIMES[backend]
    if runtime.package is None:
        return None
    for package in (runtime.converter, runtime.package):
        if package is None:
            continue
        try:
            module = importlib.import_module(package)
        except ImportError as err:
            raise ImportError(
                f"backend {backend!r} needs the {package} package, which is not installed: "
                f"pip install 'shufflenet[{runtime.extra}]' (or choose backend='torch')"
            ) from err
    return module


def _require_onnx() -> Any:
    try:
        import onnx
    except ImportError as err:
        raise ImportError("ONNX export needs the onnx package: pip install 'shufflenet[onnx]'") from err
    return onnx
