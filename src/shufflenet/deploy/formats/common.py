"""What the mobile exporters share: the result they return, output checks, the verification batch."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from shufflenet.deploy.errors import DeployError
from shufflenet.deploy.inputs import _in_chans, agreement

# pip extra and module of each mobile tool.
EXTRAS = {
    "ncnn": "ncnn",
    "pnnx": "ncnn",
    "ai_edge_litert": "litert",
    "litert_torch": "litert",
    "coremltools": "coreml",
}
VERIFY_BATCH = 4
# fp32: an exported file must give PyTorch's logits up to float32 rounding in another order, measured
# ~1e-5 of the largest logit (ONNX, ncnn, TFLite; v1 and v2); a changed weight or op is far above 1e-3.
FP32_TOLERANCE = 1e-3
# int8: rounding flips the top-1 of images near a decision boundary, a broken file (wrong scale or ranges)
# the top-1 of most; on its calibration images the digits model's TFLite int8 agrees on 98%.
INT8_MIN_AGREEMENT = 0.9


class VerificationError(DeployError):
    """An exported file whose outputs disagree with PyTorch beyond the tolerance; it was not written."""


@dataclass
class ExportResult:
    """An export on disk and, where its runtime runs here, how it agrees with PyTorch."""

    path: Path
    files: list[Path] = field(default_factory=list)
    verification: Mapping[str, float] | None = None
    runtime: str | None = None
    note: str = ""


def require(module: str, what: str) -> Any:
    """Import ``module`` or raise an ImportError naming the pip extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        extra = EXTRAS.get(module, module)
        raise ImportError(f"{what} needs the {module} package: pip install 'shufflenet[{extra}]'") from err


def module_available(module: str) -> bool:
    """Whether ``module`` is installed here (found, not imported: coremltools prints notes on import)."""
    return importlib.util.find_spec(module) is not None


@contextlib.contextmanager
def staged_folder(path: Path) -> Iterator[Path]:
    """A folder path to write an export into; it replaces ``path`` (an existing one only then) once the block ends.

    The staged folder's parent is a private temporary folder beside ``path``, free for intermediate files.
    """
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.name}.") as tmp:
        staged = Path(tmp) / path.name
        yield staged
        if path.exists():
            shutil.rmtree(path)
        os.replace(staged, path)


@contextlib.contextmanager
def quiet(*loggers: str) -> Iterator[None]:
    """No prints, warnings or log lines below ERROR from a converter: the library stays quiet."""
    handles = [logging.getLogger(name) for name in loggers]
    levels = [logger.level for logger in handles]
    for logger in handles:
        logger.setLevel(logging.ERROR)
    try:
        out, err = contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO())
        with out, err, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(handles, levels, strict=True):
            logger.setLevel(level)


def verification_batch(model: nn.Module, img_size: int | tuple[int, int], seed: int = 0) -> Tensor:
    """A seeded batch of random 8-bit pixels put through the model's preprocessing (scale, order, mean/std).

    Inputs on the scale the model sees in use: a megvii v1 takes 0-255 BGR values, a torchvision v2
    ImageNet-normalised ones, and the check should exercise either.
    """
    generator = torch.Generator().manual_seed(seed)
    height, width = (img_size, img_size) if isinstance(img_size, int) else img_size
    shape = (VERIFY_BATCH, _in_chans(model), height, width)
    pixels = torch.randint(0, 256, shape, generator=generator).float() / 255
    preprocessing = getattr(model, "preprocessing", None)
    return preprocessing.normalize()(pixels) if preprocessing is not None else pixels


def verify(
    model: nn.Module, runner: Callable[[Tensor], Tensor], x: Tensor, precision: str = "fp32", what: str = "the export"
) -> dict[str, float]:
    """Compare ``runner`` with the PyTorch model on ``x``; raise :class:`VerificationError` beyond the tolerance.

    fp32: max |diff| relative to the largest PyTorch logit at most :data:`FP32_TOLERANCE`; int8: top-1
    agreement at least :data:`INT8_MIN_AGREEMENT` (``x`` then being the calibration images). Returns the
    numbers: ``max_abs_diff``, ``relative_diff``, ``top1_agreement``, ``images``.
    """
    with torch.inference_mode():
        expected = model.eval()(x)
    check = dict(agreement(expected, runner(x)))
    check["relative_diff"] = check["max_abs_diff"] / max(expected.abs().max().item(), 1e-12)
    check["images"] = len(x)
    numbers = (
        f"max abs diff {check['max_abs_diff']:.2e} ({check['relative_diff']:.1e} of the largest logit), "
        f"top-1 agreement {check['top1_agreement']:.1%} on {len(x)} images"
    )
    if precision == "int8" and check["top1_agreement"] < INT8_MIN_AGREEMENT:
        raise VerificationError(
            f"{what} disagrees with PyTorch: {numbers} (int8 needs {INT8_MIN_AGREEMENT:.0%} agreement on the "
            "calibration images); nothing was written. Calibrate on more images typical of the inputs, or export fp32"
        )
    if precision != "int8" and check["relative_diff"] > FP32_TOLERANCE:
        raise VerificationError(
            f"{what} disagrees with PyTorch: {numbers} (fp32 allows {FP32_TOLERANCE:g} of the largest logit); "
            "nothing was written. The converter changed the model: report it with the model name and package versions"
        )
    return check


def crop_size(model: nn.Module, img_size: int | None) -> int:
    """The square input size an export is written for (``img_size``, else the model's crop size)."""
    if img_size is not None:
        if img_size < 32:
            raise ValueError(f"img_size must be at least 32, got {img_size}")
        return img_size
    return int(getattr(getattr(model, "preprocessing", None), "crop_size", 224))
