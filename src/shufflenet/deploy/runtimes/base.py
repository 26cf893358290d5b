"""The interface every runtime implements: float NCHW tensor in, float32 logits out, large batches in chunks.

A runtime subclasses :class:`CompiledModel`, sets ``backend`` (its name in
:data:`shufflenet.deploy.backends.RUNTIMES`) and ``precision``, and implements ``_run(x)`` for a checked,
contiguous float32 CPU batch of at most ``max_batch`` images.
"""

from __future__ import annotations

import torch
from torch import Tensor

from shufflenet.deploy.inputs import check_batch
from shufflenet.transforms import Preprocessing

# PyTorch and ONNX Runtime run large batches in chunks of about this many pixels (8 images at 224x224):
# a chunk's activations stay in the CPU caches, measured 1.2x faster than one batch of 32 on the 2-core
# machine of docs/deploy.md. OpenVINO uses the same size for the requests it queues over its streams.
MICRO_BATCH_PIXELS = 8 * 224 * 224


def default_max_batch(height: int, width: int) -> int:
    """The chunk size a batch of ``height`` x ``width`` images is split into (at least 1)."""
    return max(1, MICRO_BATCH_PIXELS // (height * width))


def _check_max_batch(max_batch: int | None) -> None:
    if max_batch is not None and (isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1):
        raise ValueError(f"max_batch must be an integer >= 1 or None, got {max_batch!r}")


class CompiledModel:
    """A callable inference engine: float NCHW tensor in, float32 logits tensor out.

    Batches larger than ``max_batch`` run in chunks (default :func:`default_max_batch` where the backend
    gains from it, else no chunks).
    """

    backend: str = ""
    precision: str = "fp32"
    chunks_by_default = True

    def __init__(
        self, channels: int, spatial: tuple[int, int] | None, threads: int | None, batch: int | None = None
    ) -> None:
        self.channels = channels
        self.spatial = spatial
        self.batch = batch
        self.threads = threads or torch.get_num_threads()
        self.max_batch: int | None = None
        self.auto_timings: dict[str, float] = {}
        self.class_names: list[str] | None = None
        self.preprocessing: Preprocessing | None = None

    def __call__(self, x: Tensor) -> Tensor:
        """Logits (N, num_classes) as a float32 tensor."""
        x = check_batch(x, self.channels, self.spatial)
        if self.batch is not None and x.shape[0] != self.batch:
            raise ValueError(
                f"this model was exported for batches of exactly {self.batch}, got {x.shape[0]}; "
                "export it with a dynamic batch (`--dynamic-batch` / dynamic_batch=True)"
            )
        limit = self.max_batch
        if limit is None and self.chunks_by_default:
            limit = default_max_batch(x.shape[2], x.shape[3])
        if self.batch is None and limit is not None and x.shape[0] > limit:
            return torch.cat([self._run(chunk) for chunk in x.split(limit)])
        return self._run(x)

    def set_max_batch(self, max_batch: int | None) -> None:
        """Chunk size for large batches (None: :func:`default_max_batch`)."""
        _check_max_batch(max_batch)
        self.max_batch = max_batch

    def _run(self, x: Tensor) -> Tensor:  # pragma: no cover - subclasses
        raise NotImplementedError

    @property
    def name(self) -> str:
        """``backend/precision``, e.g. ``onnxruntime/int8``."""
        return f"{self.backend}/{self.precision}"

    def __repr__(self) -> str:
        size = "any" if self.spatial is None else f"{self.spatial[0]}x{self.spatial[1]}"
        return f"{type(self).__name__}({self.name}, input 3x{size}, threads={self.threads})"
