"""Checkpoint files: safe reading, atomic saving and our self-describing checkpoint format.

Files are read with ``torch.load(..., weights_only=True)`` or safetensors, never by unpickling code.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from shufflenet.fileio import atomic_path
from shufflenet.transforms import Preprocessing

CHECKPOINT_FORMAT = "shufflenet-checkpoint"
CHECKPOINT_VERSION = 1
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "model_ema", "state_dict_ema", "net")
# Training state that a checkpoint may carry but that is not part of the model (nor of safetensors metadata).
TRAINING_STATE_KEYS = ("state_dict", "optimizer", "scheduler", "rng")


class CheckpointError(ValueError):
    """A weights file that cannot be used as asked; the message names the file and key."""


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


def save_checkpoint(path: str | Path, checkpoint: Mapping[str, Any]) -> Path:
    """Write ``checkpoint`` atomically (temp file + rename) so a crash never leaves half a file.

    ``.safetensors`` paths store the tensors there and everything else as JSON metadata (no optimizer).
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            meta = {k: v for k, v in checkpoint.items() if k not in TRAINING_STATE_KEYS}
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


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
