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

Layout: :mod:`.backends` (the runtime registry, availability, CPU features), :mod:`.folding`,
:mod:`.export`, :mod:`.quantize`, :mod:`.runtimes` (one module per runtime, one interface in
:mod:`.runtimes.base`) and :mod:`.select` (``compile_for_inference`` and the ``auto`` race). A new
runtime is one module under ``runtimes/`` and one line in :data:`.backends.RUNTIMES`.
"""

from shufflenet.deploy.backends import (
    BACKENDS,
    PRECISIONS,
    RUNTIMES,
    SUPPORTED,
    Runtime,
    available_backends,
    backend_available,
    cpu_has_bf16,
    install_hint,
    runner_class,
)
from shufflenet.deploy.cpu import FEATURES, cpu_features, describe_cpu, has_bf16, has_vnni
from shufflenet.deploy.errors import DeployError, _first_line
from shufflenet.deploy.export import (
    FORMAT_VERSION,
    METADATA_PREFIX,
    ONNX_INPUT,
    ONNX_OUTPUT,
    TORCHSCRIPT_META,
    export_onnx,
    export_torchscript,
    load_torchscript,
    model_metadata,
    read_onnx_metadata,
)
from shufflenet.deploy.folding import fold_batchnorm, prepare_for_inference
from shufflenet.deploy.inputs import _in_chans, agreement, check_batch, default_example_input
from shufflenet.deploy.int8 import AccuracyDropError, Int8Result, quantize_model, quantize_run
from shufflenet.deploy.quantize import Int8Settings, choose_int8_settings, quantize_onnx
from shufflenet.deploy.runtimes.base import MICRO_BATCH_PIXELS, CompiledModel, default_max_batch
from shufflenet.deploy.runtimes.onnxruntime import OnnxRuntimeModel
from shufflenet.deploy.runtimes.openvino import OpenVinoModel
from shufflenet.deploy.runtimes.torch import TorchModel
from shufflenet.deploy.select import candidate_backends, compile_for_inference, load_onnx

__all__ = [
    "BACKENDS",
    "FEATURES",
    "FORMAT_VERSION",
    "METADATA_PREFIX",
    "MICRO_BATCH_PIXELS",
    "ONNX_INPUT",
    "ONNX_OUTPUT",
    "PRECISIONS",
    "RUNTIMES",
    "SUPPORTED",
    "TORCHSCRIPT_META",
    "AccuracyDropError",
    "CompiledModel",
    "DeployError",
    "Int8Result",
    "Int8Settings",
    "OnnxRuntimeModel",
    "OpenVinoModel",
    "Runtime",
    "TorchModel",
    "_first_line",  # shufflenet.bench uses these two private helpers
    "_in_chans",
    "agreement",
    "available_backends",
    "backend_available",
    "candidate_backends",
    "check_batch",
    "choose_int8_settings",
    "compile_for_inference",
    "cpu_features",
    "cpu_has_bf16",
    "default_example_input",
    "default_max_batch",
    "describe_cpu",
    "export_onnx",
    "export_torchscript",
    "fold_batchnorm",
    "has_bf16",
    "has_vnni",
    "install_hint",
    "load_onnx",
    "load_torchscript",
    "model_metadata",
    "prepare_for_inference",
    "quantize_model",
    "quantize_onnx",
    "quantize_run",
    "read_onnx_metadata",
    "runner_class",
]
