"""ncnn: export to ``model.ncnn.param`` + ``model.ncnn.bin`` with pnnx, and run them with ncnn's Python API.

The export folder holds three files: the param (graph), the bin (weights, BN folded) and
``model.ncnn.json``: class names, the input size, input/output blob names and the preprocessing in ncnn's
own convention: ``Mat::from_pixels(..., PIXEL_RGB or PIXEL_BGR)`` gives 0-255 values, then
``substract_mean_normalize(mean_vals, norm_vals)`` computes ``(pixel - mean) * norm`` per channel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from shufflenet.deploy import CompiledModel, DeployError, fold_batchnorm, model_metadata
from shufflenet.mobile.common import ExportResult, check_output, crop_size, require, verification_batch, verify
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


def ncnn_preprocessing(preprocessing: Preprocessing) -> dict[str, Any]:
    """The preprocessing in ncnn's 0-255 convention: ``(pixel - mean_vals) * norm_vals``, channel order."""
    scale = preprocessing.pixel_scale
    return {
        "pixel_format": preprocessing.channel_order,
        "mean_vals": [m * 255.0 / scale for m in preprocessing.mean],
        "norm_vals": [scale / (255.0 * s) for s in preprocessing.std],
        "resize_size": preprocessing.resize_size,
        "crop_size": preprocessing.crop_size,
    }


def _pnnx_binary() -> Path:
    pnnx = require("pnnx", "ncnn export")
    binary = Path(pnnx.__file__).parent / "pnnx"
    if not binary.is_file():
        raise DeployError(f"the pnnx package has no converter binary at {binary}; reinstall it: pip install pnnx")
    return binary


def _convert(module: nn.Module, x: Tensor, workdir: Path) -> tuple[Path, Path]:
    """Trace ``module`` on ``x`` and convert the TorchScript file with pnnx; returns (param, bin)."""
    traced_path = workdir / "model.pt"
    with warnings.catch_warnings():
        # The input check in forward() is constant-folded by tracing, which warns; shapes are fixed anyway.
        warnings.simplefilter("ignore")
        torch.jit.trace(module, x, check_trace=False).save(str(traced_path))
    shape = "[" + ",".join(str(d) for d in x.shape) + "]"
    outputs = {
        "ncnnparam": workdir / PARAM_FILE,
        "ncnnbin": workdir / BIN_FILE,
        "ncnnpy": workdir / "model_ncnn.py",
        "pnnxparam": workdir / "model.pnnx.param",
        "pnnxbin": workdir / "model.pnnx.bin",
        "pnnxpy": workdir / "model_pnnx.py",
        "pnnxonnx": workdir / "model.pnnx.onnx",
    }
    # fp16=0: pnnx stores weights as fp16 by default, which alone costs ~1e-4 on the logits.
    command = [str(_pnnx_binary()), str(traced_path), f"inputshape={shape}", "fp16=0"]
    command += [f"{key}={value}" for key, value in outputs.items()]
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not outputs["ncnnparam"].is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise DeployError(f"pnnx could not convert the model (exit {done.returncode}): {' | '.join(tail)}")
    return outputs["ncnnparam"], outputs["ncnnbin"]


def export_ncnn(
    model: nn.Module,
    out_dir: str | Path,
    *,
    img_size: int | None = None,
    overwrite: bool = False,
    class_names: list[str] | None = None,
    preprocessing: Preprocessing | None = None,
    arch: str | None = None,
    verify_export: bool = True,
) -> ExportResult:
    """Write ``out_dir`` with the ncnn param/bin (via pnnx) and a JSON of class names and preprocessing.

    With ``verify_export`` (and the ncnn package installed) the files are loaded in ncnn and compared
    with PyTorch on a seeded batch: ``result.verification`` holds max abs diff and top-1 agreement.
    """
    out_dir = Path(out_dir)
    check_output(out_dir, overwrite, directory=True)
    size = crop_size(model, img_size)
    module = fold_batchnorm(model)
    meta = model_metadata(model, (3, size, size), False, class_names, preprocessing, arch)
    prep = Preprocessing.from_dict(meta["preprocessing"])
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}.") as tmp:
        param, weights = _convert(module, torch.zeros(1, 3, size, size), Path(tmp))
        meta["ncnn"] = {**_blob_names(param), **ncnn_preprocessing(prep)}
        staging = Path(tmp) / "export"
        staging.mkdir()
        os.replace(param, staging / PARAM_FILE)
        os.replace(weights, staging / BIN_FILE)
        (staging / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)  # overwrite=True; replaced only once the new export is complete
        os.replace(staging, out_dir)
    result = ExportResult(out_dir, [out_dir / PARAM_FILE, out_dir / BIN_FILE, out_dir / META_FILE])
    if verify_export:
        result.runtime = "ncnn"
        result.verification = verify(model, load_ncnn(out_dir), verification_batch(model, size))
    return result


def _blob_names(param: Path) -> dict[str, str]:
    """Input and output blob names of a param file: the Input layer's top and the last layer's first top.

    A layer line reads ``type name bottom_count top_count bottoms... tops... key=value...``.
    """
    layers = [line.split() for line in param.read_text().splitlines()[2:] if line.strip()]
    inputs = [fields[4] for fields in layers if fields[0] == "Input"]
    if not inputs:
        raise DeployError(f"{param} has no Input layer; the pnnx conversion went wrong")
    last = layers[-1]
    return {"input_blob": inputs[0], "output_blob": last[4 + int(last[2])]}


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
