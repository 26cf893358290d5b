"""ncnn: export to ``model.ncnn.param`` + ``model.ncnn.bin`` with pnnx, verified in ncnn's Python API.

The export folder holds three files: the param (graph), the bin (weights, BN folded) and
``model.ncnn.json``: class names, the input size, input/output blob names and the preprocessing in ncnn's
own convention: ``Mat::from_pixels(..., PIXEL_RGB or PIXEL_BGR)`` gives 0-255 values, then
``substract_mean_normalize(mean_vals, norm_vals)`` computes ``(pixel - mean) * norm`` per channel.
"""

from __future__ import annotations

import json
import os
import subprocess
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from shufflenet.deploy.errors import DeployError
from shufflenet.deploy.export import model_metadata
from shufflenet.deploy.folding import fold_batchnorm
from shufflenet.deploy.formats.common import (
    ExportResult,
    crop_size,
    require,
    staged_folder,
    verification_batch,
    verify,
)
from shufflenet.deploy.runtimes.ncnn import BIN_FILE, META_FILE, PARAM_FILE, load_ncnn
from shufflenet.fileio import check_output_path
from shufflenet.transforms import Preprocessing


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

    With ``verify_export`` the files are loaded in ncnn and compared with PyTorch on a seeded batch before
    they are moved into place (:func:`~shufflenet.deploy.formats.common.verify`: a
    :class:`VerificationError` beyond the tolerance, and nothing written); ``result.verification`` holds the numbers.
    """
    out_dir = Path(out_dir)
    check_output_path(out_dir, overwrite, directory=True)
    size = crop_size(model, img_size)
    module = fold_batchnorm(model)
    meta = model_metadata(model, (3, size, size), False, class_names, preprocessing, arch)
    prep = Preprocessing.from_dict(meta["preprocessing"])
    result = ExportResult(out_dir, [out_dir / PARAM_FILE, out_dir / BIN_FILE, out_dir / META_FILE])
    with staged_folder(out_dir) as staging:
        param, weights = _convert(module, torch.zeros(1, 3, size, size), staging.parent)
        meta["ncnn"] = {**_blob_names(param), **ncnn_preprocessing(prep)}
        staging.mkdir()
        os.replace(param, staging / PARAM_FILE)
        os.replace(weights, staging / BIN_FILE)
        (staging / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if verify_export:  # before the folder is moved into place: a file that disagrees is never written
            result.runtime = "ncnn"
            result.verification = verify(model, load_ncnn(staging), verification_batch(model, size), what=str(out_dir))
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
