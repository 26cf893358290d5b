"""The LiteRT runtime: a .tflite file written by :func:`~shufflenet.deploy.formats.litert.export_tflite`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from shufflenet.deploy.errors import DeployError
from shufflenet.deploy.formats.common import require
from shufflenet.deploy.runtimes.base import CompiledModel
from shufflenet.transforms import Preprocessing

METADATA_NAME = "shufflenet.json"
TFLITE_IDENTIFIER = b"TFL3"


def read_tflite_metadata(path: str | Path) -> dict[str, Any]:
    """Our metadata of a .tflite file (``preprocessing`` as a Preprocessing)."""
    from ai_edge_litert import schema_py_generated as schema

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"TFLite file {path} does not exist")
    data = path.read_bytes()
    if len(data) < 8 or data[4:8] != TFLITE_IDENTIFIER:
        raise DeployError(f"{path} is not a TFLite flatbuffer (no 'TFL3' identifier); export it again")
    model = schema.Model.GetRootAs(data, 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if entry.Name() == METADATA_NAME.encode():
            raw = model.Buffers(entry.Buffer()).DataAsNumpy().tobytes()
            meta = json.loads(raw)
            meta["preprocessing"] = Preprocessing.from_dict(meta["preprocessing"])
            return meta
    raise DeployError(f"{path} has no {METADATA_NAME!r} metadata; it was not written by `shufflenet export`")


class LiteRTModel(CompiledModel):
    """The LiteRT interpreter (XNNPACK CPU delegate) on a .tflite file; takes NCHW like every runner."""

    backend = "litert"
    chunks_by_default = False

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        require("ai_edge_litert", "backend 'litert'")
        from ai_edge_litert.interpreter import Interpreter

        meta = read_tflite_metadata(path)
        channels, height, width = meta["input_size"]
        super().__init__(channels, (height, width), threads)
        self.precision = meta.get("precision", "fp32")
        try:
            # From bytes, not the path: the file may be a temporary one (compile_for_inference) that goes away.
            self.interpreter = Interpreter(model_content=Path(path).read_bytes(), num_threads=self.threads)
        except Exception as err:  # the interpreter raises ValueError/RuntimeError with long messages
            raise DeployError(f"LiteRT cannot load {path}: {str(err).strip()[:300]}") from None
        self.interpreter.allocate_tensors()
        self.input_details = self.interpreter.get_input_details()[0]
        self.output_details = self.interpreter.get_output_details()[0]
        self.input_index = self.input_details["index"]
        self.output_index = self.output_details["index"]
        self.class_names = meta.get("class_names")
        self.preprocessing = meta["preprocessing"]

    def _run(self, x: Tensor) -> Tensor:
        outputs = []
        # The file is converted for one image (the reshapes of the channel shuffle hold batch 1), as phones run it.
        for image in x.permute(0, 2, 3, 1).contiguous().numpy():
            self.interpreter.set_tensor(self.input_index, _quantize(image[None], self.input_details))
            self.interpreter.invoke()
            outputs.append(_dequantize(self.interpreter.get_tensor(self.output_index)[0], self.output_details))
        return torch.from_numpy(np.stack(outputs))


def _quantize(x: np.ndarray, details: dict[str, Any]) -> np.ndarray:
    """Float input to the tensor's type: int8 models take ``round(x / scale) + zero_point``."""
    if details["dtype"] == np.float32:
        return x
    scale, zero_point = details["quantization"]
    info = np.iinfo(details["dtype"])
    return np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(details["dtype"])


def _dequantize(y: np.ndarray, details: dict[str, Any]) -> np.ndarray:
    if details["dtype"] == np.float32:
        return y.copy()
    scale, zero_point = details["quantization"]
    return ((y.astype(np.float32) - zero_point) * scale).astype(np.float32)


def load_tflite(path: str | Path, threads: int | None = None) -> LiteRTModel:
    """A runner for a .tflite written by :func:`export_tflite`; class names and preprocessing from its metadata."""
    return LiteRTModel(path, threads)
