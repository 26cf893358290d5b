"""Fast CPU inference and deployment: BN folding, ONNX / TorchScript export, compiled runners.

``compile_for_inference(model, backend, precision)`` returns a callable ``runner(x) -> logits`` that runs
on one of three backends:

========== ===================== ============================================================
backend    precisions            how
========== ===================== ============================================================
torch      fp32, bf16            BN folded into the convs, channels_last, ``inference_mode``
onnxruntime fp32, int8           exported ONNX; int8 = static QOperator quantization (u8/s8)
openvino   fp32, bf16, int8      exported ONNX; int8 = static QDQ quantization (u8/s8)
========== ===================== ============================================================

``backend="auto"`` builds every available backend for the precision and keeps the one with the lowest
median latency on ``example_input`` (measured here, on this machine, at that batch size).
Int8 is post-training static quantization, per-channel weights, calibrated on ``calibration_data``.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import json
import logging
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from shufflenet.transforms import Preprocessing

log = logging.getLogger(__name__)

BACKENDS = ("torch", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "int8")
SUPPORTED: dict[str, tuple[str, ...]] = {
    "torch": ("fp32", "bf16"),
    "onnxruntime": ("fp32", "int8"),
    "openvino": ("fp32", "bf16", "int8"),
}
# Module to import and pip extra to install for each optional runtime.
_RUNTIMES = {"onnxruntime": ("onnxruntime", "onnx"), "openvino": ("openvino", "openvino")}
ONNX_INPUT = "input"
ONNX_OUTPUT = "logits"
METADATA_PREFIX = "shufflenet."
TORCHSCRIPT_META = "shufflenet.json"
FORMAT_VERSION = 1


class DeployError(ValueError):
    """A model, file or input that cannot be deployed as asked; the message says what to change."""


# --------------------------------------------------------------------------------------------------
# Availability
# --------------------------------------------------------------------------------------------------


def backend_available(backend: str) -> bool:
    """Whether the runtime behind ``backend`` can be imported here."""
    _check_backend(backend)
    if backend == "torch":
        return True
    return importlib.util.find_spec(_RUNTIMES[backend][0]) is not None


def available_backends() -> list[str]:
    """Backends whose runtime is installed, in :data:`BACKENDS` order."""
    return [b for b in BACKENDS if backend_available(b)]


def install_hint(backend: str) -> str:
    """The pip command that installs the runtime of ``backend``."""
    _check_backend(backend)
    return "" if backend == "torch" else f"pip install 'shufflenet[{_RUNTIMES[backend][1]}]'"


def cpu_has_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic natively (AVX-512 BF16 or AMX); otherwise bf16 is emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: 'auto', {', '.join(map(repr, BACKENDS))}")


def _check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(map(repr, PRECISIONS))}")


def _require(backend: str) -> Any:
    """Import the runtime module of ``backend`` or raise an ImportError naming the pip extra."""
    module, extra = _RUNTIMES[backend]
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"backend {backend!r} needs the {module} package, which is not installed: "
            f"pip install 'shufflenet[{extra}]' (or choose backend='torch')"
        ) from err


def _require_onnx() -> Any:
    try:
        import onnx
    except ImportError as err:
        raise ImportError("ONNX export needs the onnx package: pip install 'shufflenet[onnx]'") from err
    return onnx


# --------------------------------------------------------------------------------------------------
# BatchNorm folding
# --------------------------------------------------------------------------------------------------


def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new Conv2d computing ``bn(conv(x))`` in eval mode: W' = W * g / s, b' = (b - mean) * g / s + beta."""
    fused = copy.deepcopy(conv)
    with torch.no_grad():
        scale = (
            bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else 1 / torch.sqrt(bn.running_var + bn.eps)
        )
        weight = conv.weight * scale.reshape(-1, 1, 1, 1)
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        bias = (bias - bn.running_mean) * scale + (bn.bias if bn.affine else 0)
        fused.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
        fused.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
    return fused


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every Conv2d -> BatchNorm2d pair inside a Sequential fused.

    The BatchNorm is replaced by ``nn.Identity`` so module indices (and state_dict keys of the other
    layers) stay put. ``model`` itself is not changed.
    """
    folded = copy.deepcopy(model).eval()
    count = _fold_in_place(folded)
    log.debug("folded %d BatchNorm layers", count)
    return folded


def prepare_for_inference(model: nn.Module, fold_bn: bool = True, fuse_shuffle: bool = True) -> nn.Module:
    """The eval-mode copy the ONNX export (and so the onnxruntime and openvino backends) starts from.

    ``model`` itself is not changed. The torch backend and TorchScript use :func:`fold_batchnorm` alone:
    eager PyTorch was not faster with the fused shuffle (docs/deploy.md).

    ``fold_bn``: BatchNorm folded into the convolutions (:func:`fold_batchnorm`). ``fuse_shuffle``: each
    v2 unit computes its concat + channel shuffle as one interleaving copy
    (:func:`shufflenet.models.ops.interleave_channels`): the same values, exported as Unsqueeze -> Concat ->
    Reshape instead of Concat -> Reshape -> Transpose -> Reshape. v1's shuffles are left as they are.
    """
    prepared = fold_batchnorm(model) if fold_bn else copy.deepcopy(model).eval()
    for module in prepared.modules():
        if hasattr(module, "fuse_shuffle"):
            module.fuse_shuffle = fuse_shuffle
    return prepared


def _fold_in_place(module: nn.Module) -> int:
    count = 0
    if isinstance(module, nn.Sequential):
        children = list(module)
        for i in range(len(children) - 1):
            conv, bn = children[i], children[i + 1]
            if (
                isinstance(conv, nn.Conv2d)
                and isinstance(bn, nn.BatchNorm2d)
                and bn.track_running_stats
                and conv.out_channels == bn.num_features
            ):
                module[i] = fold_conv_bn(conv, bn)
                module[i + 1] = nn.Identity()
                children[i + 1] = module[i + 1]
                count += 1
    for child in module.children():
        count += _fold_in_place(child)
    return count


# --------------------------------------------------------------------------------------------------
# Input checks and model facts
# --------------------------------------------------------------------------------------------------


def _in_chans(model: nn.Module) -> int:
    return int(getattr(model, "in_chans", 3))


def _crop_size(model: nn.Module) -> int:
    preprocessing = getattr(model, "preprocessing", None)
    return int(getattr(preprocessing, "crop_size", 224))


def default_example_input(model: nn.Module, batch_size: int = 1, img_size: int | None = None) -> Tensor:
    """A random batch of the size the model expects (its preprocessing crop size, else 224)."""
    size = img_size or _crop_size(model)
    return torch.randn(batch_size, _in_chans(model), size, size)


def check_batch(x: Any, channels: int, spatial: tuple[int, int] | None = None) -> Tensor:
    """Validate a float NCHW batch; returns it as a contiguous float32 tensor or raises a clear error."""
    if isinstance(x, np.ndarray):
        raise TypeError(f"expected a torch.Tensor, got a numpy array of shape {x.shape}; use torch.from_numpy(x)")
    if not isinstance(x, Tensor):
        raise TypeError(f"expected a float torch.Tensor of shape (N, {channels}, H, W), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"expected a floating-point batch, got dtype {x.dtype}; convert images to float and normalise "
            "them (Preprocessing.eval_transform does both)"
        )
    if x.dim() != 4 or x.shape[1] != channels:
        hint = " (add a batch dimension with x.unsqueeze(0))" if x.dim() == 3 else ""
        raise ValueError(f"expected a batch of shape (N, {channels}, H, W), got {tuple(x.shape)}{hint}")
    if x.shape[0] == 0:
        raise ValueError("got an empty batch (N = 0)")
    if spatial is not None and tuple(x.shape[2:]) != tuple(spatial):
        raise ValueError(
            f"this compiled model takes {spatial[0]}x{spatial[1]} images, got {x.shape[2]}x{x.shape[3]}; "
            f"resize the input, or compile again with an example_input of that size"
        )
    if x.device.type != "cpu":
        x = x.cpu()
    return x.float().contiguous() if x.dtype != torch.float32 or not x.is_contiguous() else x


# --------------------------------------------------------------------------------------------------
# Runners
# --------------------------------------------------------------------------------------------------


# PyTorch and ONNX Runtime run large batches in chunks of about this many pixels (8 images at 224x224):
# a chunk's activations stay in the CPU caches, measured 1.2x faster than one batch of 32 on the 2-core
# machine of docs/deploy.md. OpenVINO uses the same size for the requests it queues over its streams.
MICRO_BATCH_PIXELS = 8 * 224 * 224


def default_max_batch(height: int, width: int) -> int:
    """The chunk size a batch of ``height`` x ``width`` images is split into (at least 1)."""
    return max(1, MICRO_BATCH_PIXELS // (height * width))


def _check_max_batch(max_batch: int | None) -> None:
    if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
        raise ValueError(f"max_batch must be an integer >= 1 or None, got {max_batch!r}")


class CompiledModel:
    """A callable inference engine: float NCHW tensor in, float32 logits tensor out.

    Batches larger than ``max_batch`` run in chunks (default :func:`default_max_batch` where the backend
    gains from it, else no chunks).
    """

    backend: str = ""
    precision: str = "fp32"
    chunks_by_default = True

    def __init__(
        self, channels: int, spatial: tuple[int, int] | None, threads: int | None, batch: int | None = None
    ) -> None:
        self.channels = channels
        self.spatial = spatial
        self.batch = batch
        self.threads = threads or torch.get_num_threads()
        self.max_batch: int | None = None
        self.auto_timings: dict[str, float] = {}
        self.class_names: list[str] | None = None
        self.preprocessing: Preprocessing | None = None

    def __call__(self, x: Tensor) -> Tensor:
        """Logits (N, num_classes) as a float32 tensor."""
        x = check_batch(x, self.channels, self.spatial)
        if self.batch is not None and x.shape[0] != self.batch:
            raise ValueError(
                f"this model was exported for batches of exactly {self.batch}, got {x.shape[0]}; "
                "export it with a dynamic batch (`--dynamic-batch` / dynamic_batch=True)"
            )
        limit = self.max_batch
        if limit is None and self.chunks_by_default:
            limit = default_max_batch(x.shape[2], x.shape[3])
        if self.batch is None and limit is not None and x.shape[0] > limit:
            return torch.cat([self._run(chunk) for chunk in x.split(limit)])
        return self._run(x)

    def set_max_batch(self, max_batch: int | None) -> None:
        """Chunk size for large batches (None: :func:`default_max_batch`)."""
        _check_max_batch(max_batch)
        self.max_batch = max_batch

    def _run(self, x: Tensor) -> Tensor:  # pragma: no cover - subclasses
        raise NotImplementedError

    @property
    def name(self) -> str:
        """``backend/precision``, e.g. ``onnxruntime/int8``."""
        return f"{self.backend}/{self.precision}"

    def __repr__(self) -> str:
        size = "any" if self.spatial is None else f"{self.spatial[0]}x{self.spatial[1]}"
        return f"{type(self).__name__}({self.name}, input 3x{size}, threads={self.threads})"


class TorchModel(CompiledModel):
    """PyTorch eager (or torch.compile) on a BN-folded, channels_last copy of the model."""

    backend = "torch"

    def __init__(
        self,
        model: nn.Module,
        precision: str = "fp32",
        channels_last: bool = True,
        torch_compile: bool = False,
        threads: int | None = None,
    ) -> None:
        super().__init__(_in_chans(model), None, threads)
        if precision not in SUPPORTED["torch"]:
            raise ValueError(
                f"backend 'torch' runs {' and '.join(SUPPORTED['torch'])}, not {precision!r}; "
                "for int8 use backend='onnxruntime' or 'openvino'"
            )
        self.precision = precision
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        folded = fold_batchnorm(model).to(dtype=self.dtype, memory_format=self.memory_format)
        for param in folded.parameters():
            param.requires_grad_(False)
        self.module: Callable[[Tensor], Tensor] = folded
        if torch_compile:
            self.module = torch.compile(folded, dynamic=False)

    def _run(self, x: Tensor) -> Tensor:
        with torch.inference_mode():
            x = x.to(dtype=self.dtype, memory_format=self.memory_format)
            return self.module(x).float()


class OnnxRuntimeModel(CompiledModel):
    """An ONNX Runtime CPU session (fp32 graph, or one quantized to int8 QOperator form)."""

    backend = "onnxruntime"

    def __init__(self, onnx_model: str | Path, precision: str = "fp32", threads: int | None = None) -> None:
        ort = _require("onnxruntime")
        channels, spatial, batch = _onnx_input_shape(onnx_model)
        super().__init__(channels, spatial, threads, batch)
        self.precision = precision
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(onnx_model), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types
            raise DeployError(f"onnxruntime cannot load {_describe(onnx_model)}: {_first_line(err)}") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def _run(self, x: Tensor) -> Tensor:
        (logits,) = self.session.run([self.output_name], {self.input_name: x.numpy()})
        return torch.from_numpy(logits)


class OpenVinoModel(CompiledModel):
    """An OpenVINO CPU compiled model, compiled once per input shape seen (cached).

    A batch of at least two images per thread runs on ``threads`` single-thread streams at once
    (OpenVINO's throughput mode: no synchronisation between threads inside a layer), as requests of at
    most :func:`default_max_batch` images (8 at 224x224; twice that in bf16/int8) queued over the streams.
    On the machine of docs/deploy.md that was 1.1-2x faster than one two-thread request at batch 8-32,
    and fp32 requests of 8 images were 9 % faster than 16 at batch 32 (bf16/int8: 16 as fast or 3 %
    faster than 8). Smaller batches run as one request on all threads (latency mode).
    """

    backend = "openvino"
    chunks_by_default = False

    def __init__(self, onnx_model: str | Path, precision: str = "fp32", threads: int | None = None) -> None:
        ov = _require("openvino")
        channels, spatial, batch = _onnx_input_shape(onnx_model)
        super().__init__(channels, spatial, threads, batch)
        self.precision = precision
        self.core = ov.Core()
        if precision == "bf16" and "BF16" not in self.core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            raise DeployError("openvino reports no bf16 support on this CPU; use precision='fp32' or 'int8'")
        try:
            self.model = self.core.read_model(str(onnx_model))
        except Exception as err:  # openvino raises RuntimeError subclasses with long messages
            raise DeployError(f"openvino cannot read {_describe(onnx_model)}: {_first_line(err)}") from None
        self.streams = self.threads
        # int8 layers run in int8 whatever the hint; the hint sets the precision of the rest.
        self.config = {
            "INFERENCE_NUM_THREADS": self.threads,
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        }
        self._requests: dict[tuple[str, tuple[int, ...]], list[Any]] = {}

    def _compiled_requests(self, mode: str, shape: tuple[int, ...]) -> list[Any]:
        requests = self._requests.get((mode, shape))
        if requests is None:
            model = self.model.clone()
            model.reshape({model.inputs[0].get_any_name(): list(shape)})
            if mode == "latency":
                config, count = {**self.config, "PERFORMANCE_HINT": "LATENCY"}, 1
            else:
                config = {**self.config, "PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": self.streams}
                count = self.streams
            compiled = self.core.compile_model(model, "CPU", config)
            requests = self._requests[(mode, shape)] = [compiled.create_infer_request() for _ in range(count)]
        return requests

    def _run(self, x: Tensor) -> Tensor:
        if self.streams > 1 and x.shape[0] >= 2 * self.streams:
            # Cache-sized requests: bf16/int8 activations take half the bytes (or less), so twice the images.
            limit = default_max_batch(x.shape[2], x.shape[3]) * (1 if self.precision == "fp32" else 2)
            per_request = min(-(-x.shape[0] // self.streams), limit)
            return self._run_streams(x.split(per_request))
        (request,) = self._compiled_requests("latency", tuple(x.shape))
        request.infer({0: x.numpy()})
        return torch.from_numpy(request.get_output_tensor(0).data.copy())

    def _run_streams(self, chunks: tuple[Tensor, ...]) -> Tensor:
        """Chunk ``i`` runs on request ``i % streams`` of its shape; a request is waited for before reuse."""
        outputs: list[Tensor | None] = [None] * len(chunks)
        in_flight: dict[int, tuple[Any, int]] = {}  # stream -> (request, chunk index)

        def collect(stream: int) -> None:
            request, index = in_flight.pop(stream)
            request.wait()
            outputs[index] = torch.from_numpy(request.get_output_tensor(0).data.copy())

        for i, chunk in enumerate(chunks):
            stream = i % self.streams
            if stream in in_flight:
                collect(stream)
            request = self._compiled_requests("throughput", tuple(chunk.shape))[stream]
            request.start_async({0: chunk.numpy()}, share_inputs=False)
            in_flight[stream] = (request, i)
        for stream in list(in_flight):
            collect(stream)
        return torch.cat(outputs)


# --------------------------------------------------------------------------------------------------
# ONNX export and loading
# --------------------------------------------------------------------------------------------------


def _check_output_path(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    if path.exists() and path.is_dir():
        raise IsADirectoryError(f"{path} is a directory; give a file name")
    if not path.parent.exists():
        raise FileNotFoundError(f"directory {path.parent} does not exist; create it first")


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    """A temporary file beside ``path`` that replaces it only if the block succeeds."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def model_metadata(
    model: nn.Module,
    input_size: tuple[int, int, int],
    dynamic_batch: bool,
    class_names: list[str] | None = None,
    preprocessing: Preprocessing | None = None,
    arch: str | None = None,
) -> dict[str, Any]:
    """What travels with an exported model: architecture, class names, preprocessing, input size."""
    num_classes = _num_classes(model)
    names = class_names if class_names is not None else getattr(model, "class_names", None)
    names = [str(n) for n in names] if names is not None else [str(i) for i in range(num_classes)]
    if num_classes is not None and len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for a model with {num_classes} outputs")
    prep = preprocessing or getattr(model, "preprocessing", None) or Preprocessing.for_size(input_size[1])
    return {
        "format_version": FORMAT_VERSION,
        "arch": arch or getattr(model, "arch", None) or type(model).__name__,
        "num_classes": num_classes,
        "class_names": names,
        "preprocessing": prep.to_dict(),
        "input_size": list(input_size),
        "dynamic_batch": dynamic_batch,
    }


def _num_classes(model: nn.Module) -> int | None:
    fc = getattr(model, "fc", None)
    return int(fc.out_features) if isinstance(fc, nn.Linear) else None


def _export_example(model: nn.Module, example_input: Tensor | None, img_size: int | None, batch: int) -> Tensor:
    if example_input is None:
        return default_example_input(model, batch, img_size)
    x = check_batch(example_input, _in_chans(model))
    if img_size is not None and tuple(x.shape[2:]) != (img_size, img_size):
        raise ValueError(f"example_input is {x.shape[2]}x{x.shape[3]} but img_size={img_size}; give one of them")
    return x


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    example_input: Tensor | None = None,
    img_size: int | None = None,
    dynamic_batch: bool = False,
    overwrite: bool = False,
    class_names: list[str] | None = None,
    preprocessing: Preprocessing | None = None,
    arch: str | None = None,
    fold_bn: bool = True,
    fuse_shuffle: bool = True,
) -> Path:
    """Export ``model`` to a single ONNX file with metadata (``shufflenet.*`` keys); returns the path.

    The input is named ``input`` (N, C, H, W) with H and W fixed (``example_input``'s size, else
    ``img_size``, else the model's preprocessing crop size); N is symbolic with ``dynamic_batch``.
    Channel shuffles come out as Reshape -> Transpose -> Reshape, except that with ``fuse_shuffle`` (the
    default) a v2 unit's concat + shuffle is one interleaving Unsqueeze -> Concat -> Reshape
    (:func:`prepare_for_inference`).
    """
    onnx = _require_onnx()
    path = Path(path)
    _check_output_path(path, overwrite)
    module = prepare_for_inference(model, fold_bn=fold_bn, fuse_shuffle=fuse_shuffle)
    # torch.export specialises a size-1 dimension, so a dynamic batch is traced with two images.
    x = _export_example(model, example_input, img_size, 2 if dynamic_batch else 1)
    if dynamic_batch and x.shape[0] == 1:
        x = x.expand(2, -1, -1, -1).contiguous()
    meta = model_metadata(model, tuple(x.shape[1:]), dynamic_batch, class_names, preprocessing, arch)
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=65536)},) if dynamic_batch else None
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "model.onnx"
        # The exporter prints progress lines and warns about deprecations; the library stays quiet.
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(
                    module,
                    (x,),
                    str(raw),
                    input_names=[ONNX_INPUT],
                    output_names=[ONNX_OUTPUT],
                    dynamic_shapes=dynamic_shapes,
                    dynamo=True,
                    external_data=False,
                    verbose=False,
                )
            except Exception as err:
                raise DeployError(f"ONNX export of {meta['arch']} failed: {_first_line(err)}") from err
        proto = onnx.load(str(raw))
    for node in proto.graph.node:
        # Stack traces and local file paths of the exporting machine do not belong in a shipped file.
        del node.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_PREFIX + key, json.dumps(value)
    proto.producer_name = "shufflenet"
    onnx.checker.check_model(proto)
    with _atomic_path(path) as tmp_path:
        onnx.save(proto, str(tmp_path))
    return path


def _load_onnx_proto(path: str | Path) -> Any:
    onnx = _require_onnx()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file {path} does not exist")
    if path.stat().st_size == 0:
        raise DeployError(f"ONNX file {path} is empty (0 bytes); export it again with `shufflenet export`")
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except Exception as err:  # DecodeError, ValidationError, ...
        raise DeployError(
            f"{path} is not a valid ONNX model ({_first_line(err)}); the file is corrupt or truncated, "
            "export it again with `shufflenet export`"
        ) from None
    if len(proto.graph.node) == 0:
        raise DeployError(f"{path} is an ONNX file with an empty graph; export it again")
    return proto


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The ``shufflenet.*`` metadata of an exported file (class_names, preprocessing as a Preprocessing, ...)."""
    proto = _load_onnx_proto(path)
    meta: dict[str, Any] = {}
    for entry in proto.metadata_props:
        if entry.key.startswith(METADATA_PREFIX):
            try:
                meta[entry.key[len(METADATA_PREFIX) :]] = json.loads(entry.value)
            except json.JSONDecodeError:
                raise DeployError(f"{path}: metadata key {entry.key!r} is not valid JSON") from None
    if "preprocessing" in meta:
        meta["preprocessing"] = Preprocessing.from_dict(meta["preprocessing"])
    return meta


def _onnx_input_shape(onnx_model: str | Path) -> tuple[int, tuple[int, int] | None, int | None]:
    """Channels, fixed (H, W) and fixed batch of the model's input (None where symbolic)."""
    proto = _load_onnx_proto(onnx_model)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        raise DeployError(f"{_describe(onnx_model)}: input has {len(dims)} dimensions, expected 4 (N, C, H, W)")
    values = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    channels = values[1] or 3
    spatial = (values[2], values[3]) if values[2] and values[3] else None
    return channels, spatial, values[0]


def load_onnx(
    path: str | Path,
    backend: str = "onnxruntime",
    precision: str = "fp32",
    calibration_data: Iterable[Tensor] | None = None,
    threads: int | None = None,
) -> CompiledModel:
    """A runner for an exported .onnx file; class names and preprocessing come from its metadata."""
    if backend == "auto":
        backend = "openvino" if precision == "bf16" else "onnxruntime"
        if not backend_available(backend):
            backend = next((b for b in available_backends() if b != "torch"), backend)
    _check_backend(backend)
    _check_precision(precision)
    if backend == "torch":
        raise ValueError("an .onnx file runs on backend 'onnxruntime' or 'openvino', not 'torch'")
    _check_supported(backend, precision)
    _require(backend)
    meta = read_onnx_metadata(path)
    source = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        if precision == "int8":
            source = quantize_onnx(
                path, Path(tmp) / "int8.onnx", _calibration_batches(calibration_data), _QUANT_FORMAT[backend]
            )
        runner = _make_onnx_runner(source, backend, precision, threads)
    runner.class_names = meta.get("class_names")
    runner.preprocessing = meta.get("preprocessing")
    return runner


def _make_onnx_runner(source: str | Path, backend: str, precision: str, threads: int | None) -> CompiledModel:
    if backend == "onnxruntime":
        return OnnxRuntimeModel(source, precision, threads)
    return OpenVinoModel(source, precision, threads)


# --------------------------------------------------------------------------------------------------
# Int8 quantization
# --------------------------------------------------------------------------------------------------

# ONNX Runtime runs the QOperator form (QLinearConv...) fastest; OpenVINO reads only the QDQ form.
_QUANT_FORMAT = {"onnxruntime": "qoperator", "openvino": "qdq"}


def _calibration_batches(calibration_data: Iterable[Tensor | np.ndarray] | None) -> list[np.ndarray]:
    """Materialise calibration batches as float32 NCHW arrays, with clear errors for bad data."""
    if calibration_data is None:
        raise ValueError(
            "precision='int8' needs calibration_data: an iterable of float NCHW batches of your own images "
            "(a few hundred images, preprocessed exactly as for inference)"
        )
    if isinstance(calibration_data, Tensor):
        calibration_data = [calibration_data]
    batches = []
    for i, batch in enumerate(calibration_data):
        if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
            batch = batch[0]  # (images, labels) from a DataLoader
        if isinstance(batch, np.ndarray):
            batch = torch.from_numpy(batch)
        try:
            batches.append(check_batch(batch, 3).numpy())
        except (TypeError, ValueError) as err:
            raise type(err)(f"calibration_data batch {i}: {err}") from None
    if not batches:
        raise ValueError("calibration_data is empty; give at least one batch of images for int8 calibration")
    return batches


def quantize_onnx(
    src: str | Path,
    dst: str | Path,
    calibration_data: Iterable[Tensor | np.ndarray],
    quant_format: str = "qdq",
    overwrite: bool = True,
) -> Path:
    """Post-training static int8 quantization of an fp32 ONNX file (u8 activations, per-channel s8 weights)."""
    _require("onnxruntime")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if quant_format not in ("qdq", "qoperator"):
        raise ValueError(f"quant_format must be 'qdq' or 'qoperator', got {quant_format!r}")
    dst = Path(dst)
    _check_output_path(dst, overwrite)
    batches = _calibration_batches(calibration_data)
    proto = _load_onnx_proto(src)
    input_name = proto.graph.input[0].name
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    fixed = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    for i, batch in enumerate(batches):
        for axis, want in enumerate(fixed):
            if want and batch.shape[axis] != want:
                raise ValueError(
                    f"calibration batch {i} has shape {tuple(batch.shape)} but {src} takes "
                    f"{tuple(d or 'N' for d in fixed)}; calibrate with images of the model's input size"
                )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._it, None)
            return None if batch is None else {input_name: batch}

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(src), str(prepared))
        with _atomic_path(dst) as tmp_path:
            quantize_static(
                str(prepared),
                str(tmp_path),
                Reader(),
                quant_format=QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
            )
    return dst


# --------------------------------------------------------------------------------------------------
# TorchScript
# --------------------------------------------------------------------------------------------------


def export_torchscript(
    model: nn.Module,
    path: str | Path,
    *,
    example_input: Tensor | None = None,
    img_size: int | None = None,
    overwrite: bool = False,
    class_names: list[str] | None = None,
    preprocessing: Preprocessing | None = None,
    arch: str | None = None,
) -> Path:
    """Trace the BN-folded model to a TorchScript file; metadata is stored as the extra file ``shufflenet.json``.

    Any batch size works; the input size is recorded in the metadata. Load with :func:`load_torchscript`
    or ``torch.jit.load(path, _extra_files={"shufflenet.json": ""})``.
    """
    path = Path(path)
    _check_output_path(path, overwrite)
    module = fold_batchnorm(model)
    x = _export_example(model, example_input, img_size, 1)
    meta = model_metadata(model, tuple(x.shape[1:]), True, class_names, preprocessing, arch)
    with warnings.catch_warnings():
        # The input check in forward() is constant-folded by tracing, which warns; shapes stay symbolic.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, x, check_trace=False)
        traced = torch.jit.freeze(traced)
        with _atomic_path(path) as tmp_path:
            torch.jit.save(traced, str(tmp_path), _extra_files={TORCHSCRIPT_META: json.dumps(meta)})
    return path


def load_torchscript(path: str | Path) -> tuple[torch.jit.ScriptModule, dict[str, Any]]:
    """A TorchScript file written by :func:`export_torchscript` and its metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TorchScript file {path} does not exist")
    extra = {TORCHSCRIPT_META: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as err:
        raise DeployError(f"{path} is not a readable TorchScript file ({_first_line(err)})") from None
    meta = json.loads(extra[TORCHSCRIPT_META] or "{}")
    if "preprocessing" in meta:
        meta["preprocessing"] = Preprocessing.from_dict(meta["preprocessing"])
    return module, meta


# --------------------------------------------------------------------------------------------------
# compile_for_inference
# --------------------------------------------------------------------------------------------------


def _check_supported(backend: str, precision: str) -> None:
    if precision not in SUPPORTED[backend]:
        others = [b for b in BACKENDS if precision in SUPPORTED[b]]
        raise ValueError(
            f"backend {backend!r} does not run precision {precision!r} (it runs {', '.join(SUPPORTED[backend])}); "
            f"{precision} runs on {', '.join(others)}"
        )


@dataclass
class _Candidate:
    backend: str
    runner: CompiledModel
    median_ms: float = float("inf")
    times: list[float] = field(default_factory=list)


def candidate_backends(precision: str) -> list[str]:
    """Installed backends that run ``precision`` (bf16 only where the CPU has native bf16)."""
    _check_precision(precision)
    names = [b for b in available_backends() if precision in SUPPORTED[b]]
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
    """A callable ``runner(x) -> logits`` for fast CPU inference of ``model`` (or an exported .onnx path).

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
    onnx_names = [n for n in names if n != "torch"]
    for name in onnx_names:
        _require(name)

    candidates: list[_Candidate] = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32_path = Path(tmp) / "model.onnx"
        if onnx_names:
            export_onnx(model, fp32_path, example_input=example[:1], dynamic_batch=True)
        for name in names:
            if name == "torch":
                runner: CompiledModel = TorchModel(model, precision, channels_last, torch_compile, threads)
            else:
                source = fp32_path
                if precision == "int8":
                    source = quantize_onnx(
                        fp32_path, Path(tmp) / f"int8-{name}.onnx", calibration_data, _QUANT_FORMAT[name]
                    )
                # Both runtimes read the file fully here, so the temporary directory can go afterwards.
                runner = _make_onnx_runner(source, name, precision, threads)
            candidates.append(_Candidate(name, runner))
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
    needed = [b for b in BACKENDS if precision in SUPPORTED[b] and b != "torch"]
    extras = " or ".join(f"pip install 'shufflenet[{_RUNTIMES[b][1]}]'" for b in needed)
    return f"precision={precision!r} needs one of the runtimes {', '.join(needed)}: {extras}"


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__


def _describe(source: str | Path) -> str:
    return str(source)


def agreement(reference: Tensor, other: Tensor) -> Mapping[str, float]:
    """Max abs difference and top-1 agreement (fraction) between two logit tensors of the same batch."""
    if reference.shape != other.shape:
        raise ValueError(f"logit shapes differ: {tuple(reference.shape)} vs {tuple(other.shape)}")
    diff = (reference.float() - other.float()).abs().max().item()
    top1 = (reference.argmax(1) == other.argmax(1)).float().mean().item()
    return {"max_abs_diff": diff, "top1_agreement": top1}
