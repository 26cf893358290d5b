"""``quantize_run``: a checkpoint to an int8 file, calibrated on its training images, checked on its validation images.

The file (.onnx, or an OpenVINO IR .xml + .bin made by NNCF, :mod:`.ir`) carries the usual metadata plus
``int8`` (settings and CPU features, :mod:`.quantize`),
``int8_calibration`` (where the images came from), ``int8_accuracy`` (fp32 and int8 top-1 on the
validation images) and ``source_checkpoint`` (the fp32 checkpoint's path); compile_for_inference, eval,
predict and bench load it in place of a checkpoint (bench times it beside that checkpoint's fp32 runtimes).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from shufflenet.data import Sample, scan_image_folder
from shufflenet.deploy.calibration import CALIBRATION_SIZE, folder_samples, load_images, run_split, stratified_sample
from shufflenet.deploy.errors import DeployError
from shufflenet.deploy.export import (
    add_onnx_metadata,
    export_onnx,
    onnx_metadata_values,
    read_onnx_metadata,
)
from shufflenet.deploy.ir import IR_SUFFIX, is_ir, nncf_quantize, read_ir_model, save_ir
from shufflenet.deploy.quantize import _QUANT_FORMAT, _calibration_batches, choose_int8_settings, quantize_onnx
from shufflenet.deploy.select import load_onnx
from shufflenet.fileio import check_output_path


class AccuracyDropError(DeployError):
    """Int8 lost more top-1 than allowed; the message gives both accuracies and what to try."""


@dataclass
class Int8Result:
    """What quantizing wrote and how accurate it is."""

    path: Path
    backend: str
    settings: dict[str, Any]
    fp32_top1: float
    int8_top1: float
    val_images: int
    calibration: dict[str, Any]
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # unreadable images left out (warned)

    @property
    def drop(self) -> float:
        """Top-1 lost, in percentage points."""
        return 100 * (self.fp32_top1 - self.int8_top1)


def _top1(function: Any, batches: Sequence[Tensor], labels: Tensor) -> float:
    with torch.inference_mode():
        predicted = torch.cat([function(b).argmax(1) for b in batches])
    return (predicted == labels).float().mean().item()


def _labelled(samples: Sequence[Sample], names: Sequence[str], class_names: Sequence[str], where: str) -> list[Sample]:
    index = {name: i for i, name in enumerate(class_names)}
    unknown = sorted({names[label] for _, label in samples} - set(index))
    if unknown:
        raise ValueError(f"{where}: class folder(s) {unknown} are not classes of the model ({list(class_names)})")
    return [(path, index[names[label]]) for path, label in samples]


def quantize_model(
    model: nn.Module,
    backend: str,
    out: str | Path,
    calibration: Sequence[Tensor],
    val_batches: Sequence[Tensor],
    val_labels: Tensor,
    *,
    max_drop: float = 1.0,
    calibration_info: dict[str, Any] | None = None,
    overwrite: bool = False,
    accuracy_control: bool = False,
    source_checkpoint: str | Path | None = None,
) -> Int8Result:
    """Quantize ``model`` for ``backend``, check top-1 fp32 vs int8, write ``out`` unless it lost > ``max_drop``.

    ``out`` ending in ``.xml``: an OpenVINO IR quantized by NNCF (backend openvino; with ``accuracy_control``,
    NNCF keeps the layers that cost most accuracy in fp32 until the drop is within ``max_drop``); ``.onnx``:
    ONNX Runtime's quantizer. ``source_checkpoint`` (recorded in the metadata) is the fp32 checkpoint
    ``model`` came from: ``shufflenet bench --weights`` times the int8 file beside it.
    """
    out = Path(out)
    check_output_path(out, overwrite)
    ir = _check_int8_target(out, backend, accuracy_control)
    if len(val_labels) != sum(len(batch) for batch in val_batches):
        raise ValueError(
            f"{len(val_labels)} validation labels for {sum(len(b) for b in val_batches)} validation images"
        )
    fp32_top1 = _top1(model.eval(), val_batches, val_labels)
    with tempfile.TemporaryDirectory() as tmp:
        # Not verified on random pixels: the int8 file is measured on the validation images below.
        fp32 = Path(tmp) / "fp32.onnx"
        export_onnx(model, fp32, example_input=val_batches[0][:1], dynamic_batch=True, verify_export=False)
        control = (val_batches, val_labels, max_drop / 100) if accuracy_control else None
        int8 = _quantize(fp32, Path(tmp), backend, ir, calibration, control)
        int8_top1 = _top1(load_onnx(int8, backend, "int8"), val_batches, val_labels)
        settings = read_onnx_metadata(int8)["int8"]
        result = Int8Result(out, backend, settings, fp32_top1, int8_top1, len(val_labels), calibration_info or {})
        _check_drop(result, max_drop, accuracy_control)
        _write_int8(int8, out, result, source_checkpoint)
    return result


def _quantize(
    fp32: Path,
    folder: Path,
    backend: str,
    ir: bool,
    calibration: Sequence[Tensor],
    control: tuple[Sequence[Tensor], Tensor, float] | None,
) -> Path:
    """The int8 file in ``folder``: an NNCF IR (``ir``) or ONNX Runtime's quantization of the fp32 ONNX file."""
    if ir:
        return _nncf_ir(fp32, folder / "int8.xml", calibration, control)
    return quantize_onnx(fp32, folder / "int8.onnx", calibration, _QUANT_FORMAT[backend])


def _check_drop(result: Int8Result, max_drop: float, accuracy_control: bool) -> None:
    """The gate: raise :class:`AccuracyDropError` with both accuracies when int8 lost more than ``max_drop`` points."""
    if result.drop <= max_drop:
        return
    nncf_hint = (
        ""
        if accuracy_control
        else "let NNCF keep the sensitive layers in fp32 (--backend openvino --out FILE.xml --accuracy-control), "
    )
    raise AccuracyDropError(
        f"int8 top-1 {result.int8_top1:.4f} vs fp32 {result.fp32_top1:.4f} on {result.val_images} validation "
        f"images: {result.drop:.1f} points lost, more than --max-drop {max_drop:g}; nothing written to "
        f"{result.path}; calibrate on more or more typical images (--calibration DIR, --calibration-size), "
        f"{nncf_hint}or raise --max-drop"
    )


def _write_int8(int8: Path, out: Path, result: Int8Result, source_checkpoint: str | Path | None) -> None:
    """Move the checked int8 file to ``out`` with its accuracy, calibration and source checkpoint in the metadata."""
    accuracy = {"fp32_top1": result.fp32_top1, "int8_top1": result.int8_top1, "val_images": result.val_images}
    extra = {"int8_accuracy": accuracy, "int8_calibration": result.calibration}
    if source_checkpoint is not None:
        extra["source_checkpoint"] = str(Path(source_checkpoint).resolve())
    if is_ir(out):
        save_ir(read_ir_model(int8), out, extra)
    else:
        add_onnx_metadata(int8, extra)
        shutil.move(str(int8), str(out))


def _check_int8_target(out: Path, backend: str, accuracy_control: bool) -> bool:
    """Whether ``out`` is an OpenVINO IR; errors for names and options that do not go together."""
    if out.suffix not in (".onnx", IR_SUFFIX):
        raise ValueError(f"{out}: name the int8 file *.xml (OpenVINO IR by NNCF) or *.onnx")
    ir = is_ir(out)
    if ir and backend != "openvino":
        raise ValueError(f"{out}: an OpenVINO IR runs on backend 'openvino', not {backend!r}; or name it *.onnx")
    if accuracy_control and not ir:
        raise ValueError(
            f"{out}: --accuracy-control is NNCF's and writes an OpenVINO IR: --backend openvino --out FILE.xml"
        )
    return ir


def _nncf_ir(
    fp32: Path, dst: Path, calibration: Sequence[Tensor], control: tuple[Sequence[Tensor], Tensor, float] | None
) -> Path:
    """NNCF int8 of the fp32 ONNX file as an IR at ``dst``, metadata and settings in its rt_info."""
    settings = choose_int8_settings("openvino", tool="nncf")
    if control is not None:
        settings = replace(
            settings, reason=settings.reason + f"; accuracy control: max drop {100 * control[2]:g} points"
        )
    batches = _calibration_batches(calibration)
    int8 = nncf_quantize(fp32, batches, settings, control)
    meta = onnx_metadata_values(fp32)
    meta["int8"] = {**settings.to_dict(), "accuracy_control": control is not None}
    return save_ir(int8, dst, meta)


def quantize_run(
    weights: str | Path,
    backend: str,
    out: str | Path,
    *,
    calibration_dir: str | Path | None = None,
    calibration_size: int = CALIBRATION_SIZE,
    val_dir: str | Path | None = None,
    max_drop: float = 1.0,
    seed: int = 0,
    overwrite: bool = False,
    accuracy_control: bool = False,
) -> Int8Result:
    """Quantize the checkpoint ``weights``: calibration from its run's training split (or ``calibration_dir``).

    The accuracy check runs on the run's validation split (or ``val_dir``, a class-per-folder tree).
    """
    from shufflenet.checkpoints import load_model

    model = load_model(weights, device="cpu")
    split = None if calibration_dir is not None and val_dir is not None else run_split(weights)
    if calibration_dir is not None:
        pool, source = folder_samples(calibration_dir), str(calibration_dir)
    else:
        pool, source = split[1], f"training split of {Path(weights).resolve().parent / 'split.json'}"
    chosen = stratified_sample(pool, calibration_size, seed)
    calibration = load_images(chosen, model.preprocessing, what="calibration images")
    if val_dir is not None:
        samples, names = scan_image_folder(val_dir)
        val = _labelled(samples, names, model.class_names, str(val_dir))
    else:
        names = split[0]
        val = _labelled(split[2], names, model.class_names, "split.json")
    validation = load_images(val, model.preprocessing, 64, what="validation images")
    info = {"source": source, "images": sum(len(b) for b in calibration.batches), "seed": seed, "stratified": True}
    result = quantize_model(
        model,
        backend,
        out,
        calibration.batches,
        validation.batches,
        validation.labels,
        max_drop=max_drop,
        calibration_info=info,
        overwrite=overwrite,
        accuracy_control=accuracy_control,
        source_checkpoint=weights,
    )
    return replace(result, skipped=calibration.skipped + validation.skipped)
