"""Core ML: export to an ``.mlpackage`` (ML program) with coremltools; it converts on Linux but runs only on Apple.

The package takes an ``ImageType`` input, so the phone passes raw pixels (a ``CVPixelBuffer``/``CGImage``):
Core ML scales them by 1/255 (times the checkpoint's pixel scale) and orders the channels; the per-channel
mean/std is a first layer inside the model (Core ML's ImageType has one scale for all channels). The output
is a classifier: ``classLabel`` and ``classLabel_probs`` (softmax probabilities) over the class names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from shufflenet.deploy.errors import DeployError
from shufflenet.deploy.export import model_metadata
from shufflenet.deploy.folding import fold_batchnorm
from shufflenet.deploy.formats.common import (
    ExportResult,
    VerificationError,
    crop_size,
    quiet,
    require,
    staged_folder,
)
from shufflenet.fileio import check_output_path
from shufflenet.transforms import Preprocessing

INPUT_NAME = "image"
METADATA_KEY = "shufflenet.json"
_WEIGHTS = "Data/com.apple.CoreML/weights"  # where an .mlpackage keeps weight.bin


class _NormalizeAndSoftmax(nn.Module):
    """``softmax(model((x - mean) / std))``: the per-channel part of the preprocessing, and probabilities."""

    def __init__(self, model: nn.Module, preprocessing: Preprocessing) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(preprocessing.mean).reshape(1, 3, 1, 1))
        self.register_buffer("inv_std", 1 / torch.tensor(preprocessing.std).reshape(1, 3, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        """Probabilities of a batch scaled to [0, pixel_scale] in the model's channel order."""
        return self.model((x - self.mean) * self.inv_std).softmax(1)


def _coremltools(what: str) -> Any:
    """coremltools, imported without its notes about the macOS-only runtime and untested versions."""
    with quiet():
        return require("coremltools", what)


def export_coreml(
    model: nn.Module,
    path: str | Path,
    *,
    img_size: int | None = None,
    overwrite: bool = False,
    class_names: list[str] | None = None,
    preprocessing: Preprocessing | None = None,
    arch: str | None = None,
) -> ExportResult:
    """Write an ``.mlpackage`` (fp32 ML program, iOS 15+) with an ImageType input and class labels.

    Core ML does not run on Linux, so the result carries no verification; before the package is moved into
    place its layers and weights are read back and compared with the model (:func:`check_coreml_layers`).
    """
    ct = _coremltools("Core ML export")
    path = Path(path)
    if path.suffix != ".mlpackage":
        raise ValueError(f"a Core ML ML program is a folder ending in .mlpackage, got {path.name!r}")
    check_output_path(path, overwrite, directory=True)
    size = crop_size(model, img_size)
    meta = model_metadata(model, (3, size, size), False, class_names, preprocessing, arch)
    prep = Preprocessing.from_dict(meta["preprocessing"])
    wrapped = _NormalizeAndSoftmax(fold_batchnorm(model), prep).eval()
    image = ct.ImageType(
        name=INPUT_NAME,
        shape=(1, 3, size, size),
        scale=prep.pixel_scale / 255.0,
        bias=[0.0, 0.0, 0.0],
        color_layout=ct.colorlayout.BGR if prep.channel_order == "BGR" else ct.colorlayout.RGB,
    )
    with quiet():
        try:
            program = torch.export.export(wrapped, (torch.zeros(1, 3, size, size),)).run_decompositions({})
            mlmodel = ct.convert(
                program,
                inputs=[image],
                classifier_config=ct.ClassifierConfig(meta["class_names"]),
                convert_to="mlprogram",
                compute_precision=ct.precision.FLOAT32,
                minimum_deployment_target=ct.target.iOS15,
            )
        except Exception as err:
            raise DeployError(f"coremltools could not convert the model: {str(err).strip()[:300]}") from err
    mlmodel.short_description = f"{meta['arch']}: {len(meta['class_names'])} classes"
    mlmodel.user_defined_metadata[METADATA_KEY] = json.dumps(meta)
    with staged_folder(path) as staged:
        mlmodel.save(str(staged))
        layers = check_coreml_layers(model, staged, what=str(path))  # before the package is moved into place
    note = (
        f"spec checked: {layers['conv']} conv and {layers['linear']} linear layers with the model's weights; "
        "Core ML runs only on Apple platforms; not verified in a runtime here"
    )
    return ExportResult(path, [path], note=note)


# Weights are stored as float32 (compute_precision FLOAT32): equal to the folded model's up to nothing.
WEIGHT_TOLERANCE = 1e-6


def check_coreml_layers(model: nn.Module, path: str | Path, what: str | None = None) -> dict[str, int]:
    """The check that runs on Linux: the package's conv and linear ops match the BN-folded model's layers.

    As many ops as the model has Conv2d / Linear layers, in the same order, each with the same weight
    (max |diff| at most :data:`WEIGHT_TOLERANCE` of the layer's largest weight); a
    :class:`~.common.VerificationError` otherwise. Returns the layer counts.
    """
    ct = _coremltools("checking a Core ML package")
    from coremltools.converters.mil.frontend.milproto.load import load as load_program

    what = what or str(path)
    spec = ct.utils.load_spec(str(path))
    program = load_program(
        model_spec=spec, specification_version=spec.specificationVersion, file_weights_dir=str(Path(path) / _WEIGHTS)
    )
    ops = list(program.functions["main"].operations)
    folded = fold_batchnorm(model)
    counts = {}
    for op_type, layer_type in (("conv", nn.Conv2d), ("linear", nn.Linear)):
        package = [op.weight.val for op in ops if op.op_type == op_type]
        source = [m.weight.detach().numpy() for m in folded.modules() if isinstance(m, layer_type)]
        if len(package) != len(source):
            raise VerificationError(
                f"{what} has {len(package)} {op_type} layers, the model {len(source)}; nothing was written"
            )
        for i, (got, want) in enumerate(zip(package, source, strict=True)):
            diff = float(abs(got - want).max()) if got.shape == want.shape else float("inf")
            if diff > WEIGHT_TOLERANCE * max(float(abs(want).max()), 1e-12):
                raise VerificationError(
                    f"{what}: {op_type} layer {i} differs from the model's (shape {tuple(got.shape)} vs "
                    f"{tuple(want.shape)}, max abs diff {diff:.2e}); nothing was written"
                )
        counts[op_type] = len(package)
    return counts


def read_coreml_metadata(path: str | Path) -> dict[str, Any]:
    """Our metadata, the input (name, scale, bias, colour layout, size) and class labels of an .mlpackage."""
    ct = _coremltools("reading a Core ML package")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Core ML package {path} does not exist")
    spec = ct.utils.load_spec(str(path))
    raw = spec.description.metadata.userDefined.get(METADATA_KEY)
    if raw is None:
        raise DeployError(f"{path} has no {METADATA_KEY!r} metadata; it was not written by `shufflenet export`")
    meta = json.loads(raw)
    meta["preprocessing"] = Preprocessing.from_dict(meta["preprocessing"])
    image = spec.description.input[0].type.imageType
    meta["coreml"] = {
        "input_name": spec.description.input[0].name,
        "width": image.width,
        "height": image.height,
        "color_space": ct.proto.FeatureTypes_pb2.ImageFeatureType.ColorSpace.Name(image.colorSpace),
    }
    meta["coreml"]["class_labels"], meta["coreml"]["pixel_scale"] = _program_facts(spec)
    return meta


def _program_facts(spec: Any) -> tuple[list[str], float]:
    """Class labels (the ``classify`` op) and the input pixel scale (the ``image__scaled__`` multiply, else 1)."""
    labels: list[str] = []
    scale = 1.0
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                if op.type == "classify":
                    values = op.inputs["classes"].arguments[0].value.immediateValue.list.values
                    labels = [v.immediateValue.tensor.strings.values[0] for v in values]
                if op.type == "const" and op.outputs[0].name == f"{INPUT_NAME}__scaled___y_0":
                    value = op.attributes["val"].immediateValue.tensor
                    scale = float((value.floats.values or value.halfs.values or [1.0])[0])
    return labels, scale
