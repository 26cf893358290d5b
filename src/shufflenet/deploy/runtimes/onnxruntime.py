"""The ONNX Runtime runtime: a CPU session over an exported (fp32 or int8) ONNX file."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from shufflenet.deploy.backends import _require
from shufflenet.deploy.errors import DeployError, _describe, _first_line
from shufflenet.deploy.export import _onnx_input_shape
from shufflenet.deploy.runtimes.base import CompiledModel


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
