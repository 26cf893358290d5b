"""``compile_for_inference``: one runtime as asked, or ``auto``: every installed one timed, the fastest kept."""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from torch import Tensor, nn

from shufflenet.deploy.backends import (
    BACKENDS,
    RUNTIMES,
    SUPPORTED,
    _check_backend,
    _check_precision,
    _check_supported,
    _require,
    available_backends,
    backend_available,
    cpu_has_bf16,
    runner_class,
)
from shufflenet.deploy.cpu import cpu_features, has_vnni
from shufflenet.deploy.export import export_onnx, read_onnx_metadata
from shufflenet.deploy.inputs import _in_chans, check_batch, default_example_input
from shufflenet.deploy.ir import is_ir
from shufflenet.deploy.quantize import _QUANT_FORMAT, _calibration_batches, quantize_onnx
from shufflenet.deploy.runtimes.base import CompiledModel, _check_max_batch

log = logging.getLogger(__name__)


def load_onnx(
    path: str | Path,
    backend: str = "onnxruntime",
    precision: str = "fp32",
    calibration_data: Iterable[Tensor] | None = None,
    threads: int | None = None,
) -> CompiledModel:
    """A runner for an exported .onnx file or OpenVINO IR (.xml); class names and preprocessing from its metadata."""
    if is_ir(path):
        if backend not in ("auto", "openvino"):
            raise ValueError(f"{path} is an OpenVINO IR; it runs on backend 'openvino', not {backend!r}")
        backend = "openvino"
    meta = read_onnx_metadata(path) if backend == "auto" else None
    if backend == "auto":
        backend = "openvino" if precision == "bf16" else "onnxruntime"
        made_for = (meta.get("int8") or {}).get("backend")
        backend = made_for if made_for in RUNTIMES else backend
        if not backend_available(backend):
            backend = next((b for b in available_backends() if RUNTIMES[b].source == "onnx"), backend)
    _check_backend(backend)
    _check_precision(precision)
    if RUNTIMES[backend].source != "onnx":
        raise ValueError(
            "an .onnx file runs on backend "
            + " or ".join(repr(b) for b in BACKENDS if RUNTIMES[b].source == "onnx")
            + f", not {backend!r}"
        )
    _check_supported(backend, precision)
    _require(backend)
    meta = read_onnx_metadata(path) if meta is None else meta
    source = Path(path)
    if meta.get("int8"):  # already quantized (`shufflenet quantize`): runs as it is
        if precision not in ("fp32", "int8"):
            raise ValueError(f"{path} is an int8 file; it runs as int8, not {precision!r}")
        precision = "int8"
        _check_supported(backend, precision)
        if not meta["int8"].get("reduce_range", True) and not has_vnni(cpu_features()):
            log.warning(
                "%s was quantized with 8-bit weights for a CPU with VNNI; this CPU lacks VNNI, so int8 sums may "
                "saturate and lose accuracy: quantize again here (`shufflenet quantize`)",
                path,
            )
    if is_ir(path) and precision == "int8" and not meta.get("int8"):
        raise ValueError(f"{path} is an fp32 OpenVINO IR; for int8 quantize the checkpoint (`shufflenet quantize`)")
    with tempfile.TemporaryDirectory() as tmp:
        if precision == "int8" and not meta.get("int8"):
            source = quantize_onnx(
                path, Path(tmp) / "int8.onnx", _calibration_batches(calibration_data), _QUANT_FORMAT[backend]
            )
        runner = _make_onnx_runner(source, backend, precision, threads)
    runner.class_names = meta.get("class_names")
    runner.preprocessing = meta.get("preprocessing")
    return runner


def _make_onnx_runner(source: str | Path, backend: str, precision: str, threads: int | None) -> CompiledModel:
    return runner_class(backend)(source, precision, threads)


@dataclass
class _Candidate:
    backend: str
    runner: CompiledModel
    median_ms: float = float("inf")
    times: list[float] = field(default_factory=list)


def candidate_backends(precision: str) -> list[str]:
    """Installed backends that run ``precision`` (bf16 only where the CPU has native bf16)."""
    _check_precision(precision)
    names = [b for b in available_backends() if precision in SUPPORTED[b] and RUNTIMES[b].in_auto]
    if precision == "bf16" and not cpu_has_bf16():
        names = []
    return names


def compile_for_inference(
    model: nn.Module | str | Path,
    backend: str = "auto",
    precision: str = "fp32",
    example_input: Tensor | None = None,
    calibration_data: Iterable[Tensor] | None = None,
    *,
    threads: int | None = None,
    channels_last: bool = True,
    torch_compile: bool = False,
    max_batch: int | None = None,
) -> CompiledModel:
    """A callable ``runner(x) -> logits`` for fast CPU inference of ``model`` (or an .onnx / OpenVINO .xml path).

    ``example_input`` fixes the image size of the ONNX-based backends (default: the model's
    preprocessing crop size) and is the batch ``backend="auto"`` times candidates on. ``precision="int8"``
    needs ``calibration_data`` (an iterable of float NCHW batches). ``threads`` defaults to
    ``torch.get_num_threads()``; batches above ``max_batch`` images run in chunks (default: torch and
    onnxruntime about 8 images' worth of 224x224 pixels, see :func:`default_max_batch`; openvino splits
    batches over its streams itself, in requests of the same size).
    """
    if isinstance(model, (str, Path)):
        runner = load_onnx(model, backend, precision, calibration_data, threads)
        runner.set_max_batch(max_batch)
        return runner
    if not isinstance(model, nn.Module):
        raise TypeError(f"expected an nn.Module or a path to an .onnx file, got {type(model).__name__}")
    _check_precision(precision)
    _check_max_batch(max_batch)
    if backend != "auto":
        _check_backend(backend)
        _check_supported(backend, precision)
    if precision == "int8":
        calibration_data = _calibration_batches(calibration_data)
    example = default_example_input(model) if example_input is None else check_batch(example_input, _in_chans(model))
    if backend == "auto":
        names = candidate_backends(precision)
        if not names:
            raise ValueError(_no_candidate_message(precision))
    else:
        names = [backend]
    for name in names:
        _require(name)
    options = {"channels_last": channels_last, "torch_compile": torch_compile}
    candidates = _build_candidates(model, names, precision, example, calibration_data, threads, options)
    for candidate in candidates:
        candidate.runner.set_max_batch(max_batch)
        candidate.runner.class_names = getattr(model, "class_names", None)
        candidate.runner.preprocessing = getattr(model, "preprocessing", None)
    if len(candidates) == 1:
        return candidates[0].runner
    _time_candidates(candidates, example)
    best = min(candidates, key=lambda c: c.median_ms)
    best.runner.auto_timings = {c.backend: c.median_ms for c in candidates}
    log.info(
        "auto backend for %s, batch %d: %s (%s)",
        precision,
        example.shape[0],
        best.backend,
        ", ".join(f"{c.backend} {c.median_ms:.1f} ms" for c in candidates),
    )
    return best.runner


def _build_candidates(
    model: nn.Module,
    names: list[str],
    precision: str,
    example: Tensor,
    calibration_data: Iterable[Tensor] | None,
    threads: int | None,
    options: dict[str, bool],
) -> list[_Candidate]:
    """One runner per backend in ``names``; the ONNX-based ones share one export (and quantize it for int8)."""
    candidates: list[_Candidate] = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path = Path(tmp) / "model.onnx"
        if any(RUNTIMES[n].source == "onnx" for n in names):
            export_onnx(model, fp32_path, example_input=example[:1], dynamic_batch=True)
        for name in names:
            if RUNTIMES[name].source == "module":
                runner: CompiledModel = runner_class(name)(model, precision, threads=threads, **options)
            elif RUNTIMES[name].source != "onnx":
                runner = build_from_export(name, model, precision, example, calibration_data, threads, Path(tmp))
            else:
                source = fp32_path
                if precision == "int8":
                    source = quantize_onnx(
                        fp32_path, Path(tmp) / f"int8-{name}.onnx", calibration_data, _QUANT_FORMAT[name]
                    )
                # Both runtimes read the file fully here, so the temporary directory can go afterwards.
                runner = _make_onnx_runner(source, name, precision, threads)
            candidates.append(_Candidate(name, runner))
    return candidates


def build_from_export(
    backend: str,
    model: nn.Module,
    precision: str,
    example: Tensor,
    calibration_data: Iterable[Tensor] | None,
    threads: int | None,
    workdir: Path,
) -> CompiledModel:
    """A runner of a backend that runs its own format (ncnn, litert): export ``model`` into ``workdir``, load it.

    The runners read their files fully, so ``workdir`` may go afterwards.
    """
    if example.shape[2] != example.shape[3]:
        raise ValueError(
            f"backend {backend!r} is exported for square images, got {example.shape[2]}x{example.shape[3]}"
        )
    size = example.shape[-1]
    if RUNTIMES[backend].source == "ncnn":
        from shufflenet.deploy.formats.ncnn import export_ncnn
        from shufflenet.deploy.runtimes.ncnn import NcnnModel

        export = export_ncnn(model, workdir / "ncnn", img_size=size, verify_export=False)
        return NcnnModel(export.path, precision, threads)
    from shufflenet.deploy.formats.litert import export_tflite
    from shufflenet.deploy.runtimes.litert import LiteRTModel

    export = export_tflite(
        model,
        workdir / f"model-{precision}.tflite",
        img_size=size,
        precision=precision,
        calibration_data=calibration_data,
        verify_export=False,
        overwrite=True,
    )
    return LiteRTModel(export.path, threads)


def _time_candidates(candidates: list[_Candidate], x: Tensor, rounds: int = 3, per_round: int = 3) -> None:
    """Median latency of each candidate, interleaved in rounds so a shared CPU's load hits all alike."""
    for candidate in candidates:
        candidate.runner(x)  # warm-up (first-call allocations, OpenVINO's compile for this shape)
    for _ in range(rounds):
        for candidate in candidates:
            candidate.runner(x)
            for _ in range(per_round):
                start = time.perf_counter()
                candidate.runner(x)
                candidate.times.append((time.perf_counter() - start) * 1e3)
    for candidate in candidates:
        candidate.median_ms = statistics.median(candidate.times)


def _no_candidate_message(precision: str) -> str:
    if precision == "bf16" and not cpu_has_bf16():
        return "precision='bf16' needs a CPU with native bf16 (AVX-512 BF16 or AMX); this one has neither"
    needed = [b for b in BACKENDS if precision in SUPPORTED[b] and RUNTIMES[b].extra is not None]
    extras = " or ".join(f"pip install 'shufflenet[{RUNTIMES[b].extra}]'" for b in needed)
    return f"precision={precision!r} needs one of the runtimes {', '.join(needed)}: {extras}"
