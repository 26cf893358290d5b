"""Checkpoint files: safe reading, loading weights into a model, our self-describing checkpoints.

Files are read with ``torch.load(..., weights_only=True)`` or safetensors, never by unpickling code.
Foreign layouts (other projects' key names) are adapted here, at the boundary, by registered
``FormatAdapter`` s; the models are never bent to fit a file.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from shufflenet.fileio import atomic_path
from shufflenet.transforms import Preprocessing

CHECKPOINT_FORMAT = "shufflenet-checkpoint"
CHECKPOINT_VERSION = 1
CLASSIFIER_PREFIXES = ("fc.",)
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "model_ema", "state_dict_ema", "net")


class CheckpointError(ValueError):
    """A weights file that cannot be used as asked; the message names the file and key."""


@dataclass
class FormatAdapter:
    """Recognises one foreign checkpoint layout and converts it to our keys for a given model."""

    name: str
    detect: Callable[[Mapping[str, Any]], bool]
    convert: Callable[[Mapping[str, Any], nn.Module], tuple[dict[str, Tensor], Preprocessing | None]]


_ADAPTERS: list[FormatAdapter] = []


def register_adapter(adapter: FormatAdapter) -> None:
    """Add a foreign-format adapter (tried in registration order before the plain layout)."""
    _ADAPTERS.append(adapter)


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did: source format, keys re-initialised or ignored."""

    path: str
    source_format: str
    loaded: int
    reinitialized: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    preprocessing: Preprocessing | None = None

    def summary(self) -> str:
        """One line for logs."""
        text = f"loaded {self.loaded} tensors from {self.path} ({self.source_format})"
        if self.reinitialized:
            text += f"; re-initialised {', '.join(self.reinitialized)} (class count differs)"
        if self.ignored:
            text += f"; ignored {len(self.ignored)} extra keys"
        return text


def read_file(path: str | Path) -> dict[str, Any]:
    """Read a .pth/.pt/.safetensors file safely; returns the stored mapping (metadata under ``__metadata__``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"weights file {path} is empty (0 bytes); re-download or re-save it")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = next((line for line in str(err).splitlines() if "Unsupported global" in line), None)
        if detail is None:
            raise CheckpointError(f"{path} is not a readable PyTorch file (damaged, or not a checkpoint)") from None
        raise CheckpointError(
            f"{path} holds pickled Python objects beyond tensors and plain containers, which shufflenet "
            f"refuses to unpickle (it could run code). Re-save only the weights, e.g. "
            f"torch.save(model.state_dict(), ...), or use .safetensors. Detail: {detail.strip()}"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable PyTorch file ({str(err).splitlines()[0]})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a dict of tensors (a state_dict)")
    return obj


def _read_safetensors(path: Path) -> dict[str, Any]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            tensors: dict[str, Any] = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file ({err})") from None
    if "shufflenet" in metadata:
        checkpoint = json.loads(metadata["shufflenet"])
        checkpoint["state_dict"] = tensors
        return checkpoint
    tensors["__metadata__"] = metadata
    return tensors


def unwrap_state_dict(obj: Mapping[str, Any]) -> dict[str, Tensor]:
    """The tensors of a checkpoint: unwraps ``state_dict``/``model`` wrappers and ``module.`` prefixes."""
    for key in _WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and any(isinstance(v, Tensor) for v in inner.values()):
            obj = inner
            break
    state = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    for prefix in ("module.", "_orig_mod."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def load_pretrained(model: nn.Module, path: str | Path, strict_classifier: bool = False) -> LoadReport:
    """Load weights from ``path`` into ``model``; the classifier is re-initialised if its class count differs.

    Any other missing or mis-shaped key is an error naming the first bad key.
    """
    raw = read_file(path)
    preprocessing = None
    source = "state_dict"
    if raw.get("format") == CHECKPOINT_FORMAT:
        source = "shufflenet checkpoint"
        state = unwrap_state_dict(raw)
        for option, value in raw.get("model_kwargs", {}).items():
            if getattr(model, option, value) != value:
                raise CheckpointError(
                    f"{path} was saved from a model built with {option}={value!r}, this one has "
                    f"{option}={getattr(model, option)!r}; build it with create_model(..., {option}={value!r}) "
                    f"or use shufflenet.load_model({str(path)!r})"
                )
        if "preprocessing" in raw:
            preprocessing = Preprocessing.from_dict(raw["preprocessing"])
    else:
        _import_adapters()
        for adapter in _ADAPTERS:
            if adapter.detect(raw):
                try:
                    state, preprocessing = adapter.convert(raw, model)
                except CheckpointError as err:
                    if str(path) not in str(err):
                        err.args = (f"{path}: {err}", *err.args[1:])
                    raise
                source = adapter.name
                break
        else:
            state = unwrap_state_dict(raw)
    if not state:
        raise CheckpointError(f"{path} contains no tensors")
    report = LoadReport(path=str(path), source_format=source, loaded=0, preprocessing=preprocessing)
    own = model.state_dict()
    missing = [k for k in own if k not in state and not (k.startswith(CLASSIFIER_PREFIXES) and not strict_classifier)]
    if missing:
        raise CheckpointError(
            f"{path} has no key {missing[0]!r} that {type(model).__name__} needs ({len(missing)} missing); is it a "
            f"checkpoint for another architecture? (its first keys: {list(state)[:3]})"
        )
    for key, tensor in own.items():
        if key in state and state[key].shape != tensor.shape:
            if key.startswith(CLASSIFIER_PREFIXES) and not strict_classifier:
                report.reinitialized.append(key)
                continue
            raise CheckpointError(
                f"{path}: key {key!r} has shape {tuple(state[key].shape)}, the model expects "
                f"{tuple(tensor.shape)}; the file is for another architecture or width"
            )
    report.ignored = [key for key in state if key not in own]
    missing_classifier = [k for k in own if k.startswith(CLASSIFIER_PREFIXES) and k not in state]
    if report.reinitialized or missing_classifier:
        report.reinitialized = sorted(set(report.reinitialized) | set(missing_classifier))
    load = {k: v for k, v in state.items() if k in own and k not in report.reinitialized}
    model.load_state_dict(load, strict=False)
    report.loaded = len(load)
    return report


def _import_adapters() -> None:
    """Import the modules that register foreign-format adapters (kept lazy: they are rarely needed)."""
    try:
        import shufflenet.converters  # noqa: F401  (registers adapters on import)
    except ModuleNotFoundError as err:
        if err.name != "shufflenet.converters":
            raise


def save_checkpoint(path: str | Path, checkpoint: Mapping[str, Any]) -> Path:
    """Write ``checkpoint`` atomically (temp file + rename) so a crash never leaves half a file.

    ``.safetensors`` paths store the tensors there and everything else as JSON metadata (no optimizer).
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            meta = {k: v for k, v in checkpoint.items() if k not in ("state_dict", "optimizer", "scheduler", "rng")}
            tensors = {k: v.detach().cpu().contiguous() for k, v in checkpoint["state_dict"].items()}
            save_file(tensors, str(tmp), metadata={"shufflenet": json.dumps(meta)})
        else:
            torch.save(dict(checkpoint), tmp)
    return path


def make_checkpoint(
    model: nn.Module,
    arch: str,
    class_names: list[str] | None = None,
    preprocessing: Preprocessing | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A self-describing checkpoint: architecture, classes, preprocessing and weights (plus ``extra``)."""
    model = getattr(model, "module", model)  # DDP
    model = getattr(model, "_orig_mod", model)  # torch.compile
    num_classes = model.fc.out_features
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for a model with {num_classes} outputs")
    return {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "arch": arch,
        "num_classes": num_classes,
        "class_names": list(class_names) if class_names else [str(i) for i in range(num_classes)],
        "model_kwargs": dict(model_kwargs or {}),
        "preprocessing": (preprocessing or Preprocessing()).to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        **extra,
    }


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read one of our checkpoints and check it is complete; errors name the file and missing key."""
    raw = read_file(path)
    if raw.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a shufflenet checkpoint (no 'format': {CHECKPOINT_FORMAT!r}); for a plain or "
            f"foreign state_dict use create_model(name, weights=...) or `shufflenet convert`"
        )
    for key in ("arch", "num_classes", "state_dict"):
        if key not in raw:
            raise CheckpointError(f"{path} is missing key {key!r}; the file is incomplete or damaged")
    return raw


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model stored in one of our checkpoints, in eval mode.

    The model carries ``arch``, ``class_names`` and ``preprocessing`` (a :class:`Preprocessing`).
    """
    from shufflenet.models import create_model

    checkpoint = load_checkpoint(path)
    try:
        model = create_model(
            checkpoint["arch"], num_classes=checkpoint["num_classes"], **checkpoint.get("model_kwargs", {})
        )
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None
    state = unwrap_state_dict(checkpoint)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        first = (missing or unexpected)[0]
        raise CheckpointError(f"{path}: weights do not match {checkpoint['arch']} (first bad key {first!r})")
    model.arch = checkpoint["arch"]
    model.class_names = list(checkpoint.get("class_names") or range(checkpoint["num_classes"]))
    model.preprocessing = Preprocessing.from_dict(checkpoint.get("preprocessing", {}))
    model.checkpoint_meta = {
        k: v for k, v in checkpoint.items() if k not in ("state_dict", "optimizer", "scheduler", "rng")
    }
    return model.to(device).eval()
