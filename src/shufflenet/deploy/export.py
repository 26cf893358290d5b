"""ONNX and TorchScript export with the ``shufflenet.*`` metadata, and reading exported files back."""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from shufflenet.deploy.backends import _require, _require_onnx, backend_available
from shufflenet.deploy.errors import DeployError, _describe, _first_line
from shufflenet.deploy.folding import fold_batchnorm, prepare_for_inference
from shufflenet.deploy.formats.common import verification_batch, verify
from shufflenet.deploy.inputs import _in_chans, check_batch, default_example_input
from shufflenet.deploy.ir import ir_metadata, is_ir, read_ir_model
from shufflenet.fileio import atomic_path, check_output_path
from shufflenet.transforms import Preprocessing

ONNX_INPUT = "input"
ONNX_OUTPUT = "logits"
METADATA_PREFIX = "shufflenet."
TORCHSCRIPT_META = "shufflenet.json"
FORMAT_VERSION = 1


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
    verify_export: bool = True,
) -> Path:
    """Export ``model`` to a single ONNX file with metadata (``shufflenet.*`` keys); returns the path.

    The input is named ``input`` (N, C, H, W) with H and W fixed (``example_input``'s size, else
    ``img_size``, else the model's preprocessing crop size); N is symbolic with ``dynamic_batch``.
    Channel shuffles come out as Reshape -> Transpose -> Reshape, except that with ``fuse_shuffle`` (the
    default) a v2 unit's concat + shuffle is one interleaving Unsqueeze -> Concat -> Reshape
    (:func:`prepare_for_inference`).

    With ``verify_export`` (and onnxruntime installed) the graph runs in onnxruntime against PyTorch on a
    seeded batch before the file is written (:func:`~shufflenet.deploy.formats.common.verify`): beyond the
    tolerance a :class:`VerificationError` with the numbers and no file; within it the numbers go into the
    metadata as ``verification``.
    """
    onnx = _require_onnx()
    path = Path(path)
    check_output_path(path, overwrite)
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
    proto.producer_name = "shufflenet"
    onnx.checker.check_model(proto)
    if verify_export and backend_available("onnxruntime"):
        batch = verification_batch(model, tuple(x.shape[2:]))
        meta["verification"] = {"runtime": "onnxruntime", **verify(model, _OnnxBytes(proto), batch, what=str(path))}
    _set_metadata(proto, meta)
    with atomic_path(path) as tmp_path:
        onnx.save(proto, str(tmp_path))
    return path


class _OnnxBytes:
    """An onnxruntime session over an in-memory ONNX proto, one image at a time (a fixed batch of 1 runs too)."""

    def __init__(self, proto: Any) -> None:
        ort = _require("onnxruntime")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def __call__(self, x: Tensor) -> Tensor:
        """Logits of the batch ``x``."""
        logits = [self.session.run(None, {ONNX_INPUT: image[None].numpy()})[0] for image in x]
        return torch.from_numpy(np.concatenate(logits))


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


def _set_metadata(proto: Any, values: dict[str, Any]) -> None:
    """Set ``values`` as ``shufflenet.*`` entries (JSON) of an ONNX ``proto``, replacing entries of the same keys."""
    entries = {e.key: e.value for e in proto.metadata_props}
    entries.update({METADATA_PREFIX + key: json.dumps(value) for key, value in values.items()})
    del proto.metadata_props[:]
    for key, value in entries.items():
        proto.metadata_props.add(key=key, value=value)


def add_onnx_metadata(path: str | Path, values: dict[str, Any]) -> None:
    """Add ``values`` to the ``shufflenet.*`` metadata of the ONNX file at ``path`` (same keys are replaced)."""
    onnx = _require_onnx()
    proto = onnx.load(str(path))
    _set_metadata(proto, values)
    onnx.save(proto, str(path))


def _metadata_values(proto: Any, where: str | Path) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for entry in proto.metadata_props:
        if entry.key.startswith(METADATA_PREFIX):
            try:
                meta[entry.key[len(METADATA_PREFIX) :]] = json.loads(entry.value)
            except json.JSONDecodeError:
                raise DeployError(f"{where}: metadata key {entry.key!r} is not valid JSON") from None
    return meta


def onnx_metadata_values(path: str | Path) -> dict[str, Any]:
    """The ``shufflenet.*`` metadata of an exported file as plain JSON values (an IR's from its rt_info)."""
    if is_ir(path):
        return ir_metadata(read_ir_model(path), path)
    return _metadata_values(_load_onnx_proto(path), path)


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The ``shufflenet.*`` metadata of an exported file (class_names, preprocessing as a Preprocessing, ...).

    An OpenVINO IR (``.xml``, :mod:`.ir`) gives the same keys from its rt_info.
    """
    meta = onnx_metadata_values(path)
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
    verify_export: bool = True,
) -> Path:
    """Trace the BN-folded model to a TorchScript file; metadata is stored as the extra file ``shufflenet.json``.

    Any batch size works; the input size is recorded in the metadata. Load with :func:`load_torchscript`
    or ``torch.jit.load(path, _extra_files={"shufflenet.json": ""})``. With ``verify_export`` the frozen
    module (what is saved) is compared with PyTorch first, as :func:`export_onnx` does.
    """
    path = Path(path)
    check_output_path(path, overwrite)
    module = fold_batchnorm(model)
    x = _export_example(model, example_input, img_size, 1)
    meta = model_metadata(model, tuple(x.shape[1:]), True, class_names, preprocessing, arch)
    with warnings.catch_warnings():
        # The input check in forward() is constant-folded by tracing, which warns; shapes stay symbolic.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, x, check_trace=False)
        traced = torch.jit.freeze(traced)
        if verify_export:
            batch = verification_batch(model, tuple(x.shape[2:]))
            meta["verification"] = {"runtime": "torchscript", **verify(model, traced, batch, what=str(path))}
        with atomic_path(path) as tmp_path:
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
