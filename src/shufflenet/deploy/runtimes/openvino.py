"""The OpenVINO runtime: an exported ONNX file compiled per input shape, batches spread over streams."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from shufflenet.deploy.backends import _require
from shufflenet.deploy.errors import DeployError, _describe, _first_line
from shufflenet.deploy.export import _onnx_input_shape
from shufflenet.deploy.runtimes.base import CompiledModel, default_max_batch


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
