"""The ncnn runtime: a folder written by :func:`~shufflenet.deploy.formats.ncnn.export_ncnn`, run by ncnn."""

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

PARAM_FILE = "model.ncnn.param"
BIN_FILE = "model.ncnn.bin"
META_FILE = "model.ncnn.json"
# ncnn switches to fp16/bf16 storage or arithmetic on CPUs that have it (ARMv8.2, AVX-512 FP16);
# precision "fp32" turns every one of these off so results do not depend on the CPU.
_REDUCED_PRECISION_OPTIONS = (
    "use_fp16_packed",
    "use_fp16_storage",
    "use_fp16_arithmetic",
    "use_bf16_storage",
    "use_bf16_packed",
)


def read_ncnn_metadata(export_dir: str | Path) -> dict[str, Any]:
    """The ``model.ncnn.json`` of an export folder (``preprocessing`` as a Preprocessing)."""
    path = Path(export_dir) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; give the folder `shufflenet export --format ncnn` wrote")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DeployError(f"{path} is not valid JSON ({err}); export the model again") from None
    for key in ("ncnn", "preprocessing", "input_size"):
        if key not in meta:
            raise DeployError(f"{path} has no {key!r} entry; export the model again with `shufflenet export`")
    meta["preprocessing"] = Preprocessing.from_dict(meta["preprocessing"])
    return meta


class NcnnModel(CompiledModel):
    """An ncnn ``Net`` on CPU; images of a batch run one after another (ncnn has no batch dimension)."""

    backend = "ncnn"
    chunks_by_default = False

    def __init__(self, export_dir: str | Path, precision: str = "fp32", threads: int | None = None) -> None:
        ncnn = require("ncnn", "backend 'ncnn'")
        if precision != "fp32":
            raise ValueError(
                f"backend 'ncnn' runs fp32 here, not {precision!r}: the ncnn2table / ncnn2int8 tools that make "
                "int8 ncnn models are not part of the PyPI ncnn and pnnx packages"
            )
        export_dir = Path(export_dir)
        meta = read_ncnn_metadata(export_dir)
        channels, height, width = meta["input_size"]
        super().__init__(channels, (height, width), threads)
        self.precision = precision
        self.net = ncnn.Net()
        self.net.opt.num_threads = self.threads
        for option in _REDUCED_PRECISION_OPTIONS:
            if hasattr(self.net.opt, option):
                setattr(self.net.opt, option, False)
        for name, loader in ((PARAM_FILE, self.net.load_param), (BIN_FILE, self.net.load_model)):
            path = export_dir / name
            if not path.is_file() or loader(str(path)) != 0:
                raise DeployError(f"ncnn cannot load {path}; the export is incomplete or corrupt, export it again")
        self._ncnn = ncnn
        self.input_blob = meta["ncnn"]["input_blob"]
        self.output_blob = meta["ncnn"]["output_blob"]
        self.class_names = meta.get("class_names")
        self.preprocessing = meta["preprocessing"]

    def _run(self, x: Tensor) -> Tensor:
        outputs = []
        for image in x.numpy():
            extractor = self.net.create_extractor()
            extractor.input(self.input_blob, self._ncnn.Mat(np.ascontiguousarray(image)))
            status, out = extractor.extract(self.output_blob)
            if status != 0:
                raise DeployError(f"ncnn failed to compute blob {self.output_blob!r} (status {status})")
            outputs.append(np.array(out).reshape(-1))
        return torch.from_numpy(np.stack(outputs))


def load_ncnn(export_dir: str | Path, precision: str = "fp32", threads: int | None = None) -> NcnnModel:
    """A runner for a folder written by :func:`export_ncnn`; class names and preprocessing from its JSON."""
    return NcnnModel(export_dir, precision, threads)
