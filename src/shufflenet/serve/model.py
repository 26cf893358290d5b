"""The served model: a checkpoint or exported file compiled for CPU inference, its card, its warm-up."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from shufflenet.deploy.runtimes.base import CompiledModel
from shufflenet.transforms import batch_normalizer, eval_transform

log = logging.getLogger("shufflenet.serve")


def cpu_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def runtime_threads(workers: int, cores: int | None = None) -> int:
    """Threads per worker's runtime so that workers x threads = cores (at least 1): no oversubscription."""
    return max(1, (cores or cpu_cores()) // max(1, workers))


@dataclass
class ServedModel:
    """The compiled runner with what the service tells about it (``card``) and its input transform."""

    runner: CompiledModel
    card: dict[str, Any]
    transform: Any = field(repr=False)
    normalize: Callable[[Tensor], Tensor] = field(repr=False)

    @property
    def class_names(self) -> list[str]:
        """The class names, index order."""
        return list(self.card["classes"])

    @property
    def draft_size(self) -> int:
        """JPEGs decode at reduced scale while both sides stay >= this (the resize target), as training does."""
        return self.runner.preprocessing.resize_size

    def probabilities(self, images: Tensor) -> Tensor:
        """Class probabilities (N, classes) of a uint8 NCHW batch made by :attr:`transform`."""
        return self.runner(self.normalize(images)).float().softmax(1)


def load_served_model(
    weights: str | Path, backend: str = "auto", threads: int = 1, batch_size: int = 16
) -> ServedModel:
    """Load a checkpoint (compiled with ``compile_for_inference``, ``auto`` = the timing race) or an exported file.

    The race times candidates on a batch of ``batch_size``, the size the batcher runs when busy.
    """
    from shufflenet.deploy import compile_for_inference
    from shufflenet.deploy.inputs import default_example_input

    torch.set_num_threads(threads)  # for the torch runtime and for the race
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"--weights {path} does not exist; pass RUN/best.pt or an exported .onnx / .xml")
    if path.suffix in (".onnx", ".xml"):
        from shufflenet.deploy.export import onnx_metadata_values

        runner = compile_for_inference(path, backend, threads=threads)
        meta = onnx_metadata_values(path)
        name, accuracy = meta.get("arch") or path.stem, meta.get("val_acc")
    else:
        from shufflenet.checkpoints import load_model

        model = load_model(path)
        example = default_example_input(model, batch_size=batch_size)
        runner = compile_for_inference(model, backend, example_input=example, threads=threads)
        name, accuracy = model.arch, model.checkpoint_meta.get("val_acc")
    if runner.backend != "torch":
        # torch only decodes and normalises here, image by image on the decoding threads: its own thread pool
        # would fight the runtime's threads for the same cores (and spin-wait after each call).
        torch.set_num_threads(1)
    if runner.class_names is None or runner.preprocessing is None:
        raise ValueError(f"{path} carries no class names or preprocessing; export it from one of our checkpoints")
    card = {
        "name": name,
        "weights": path.name,  # the file name only: the service never shows its own paths
        "classes": list(runner.class_names),
        "num_classes": len(runner.class_names),
        "preprocessing": runner.preprocessing.to_dict(),
        "backend": runner.backend,
        "precision": runner.precision,
        "runtime_threads": runner.threads,
        "auto_timings_ms": runner.auto_timings,
        "val_accuracy": float(accuracy) if accuracy is not None and accuracy >= 0 else None,
    }
    # uint8 per image (decode threads), normalised once per batch (inference thread): the same numbers as
    # preprocessing.eval_transform(), which resizes uint8 too, with a quarter of the bytes handed across.
    return ServedModel(runner, card, eval_transform(runner.preprocessing), batch_normalizer(runner.preprocessing))


def warm_up(served: ServedModel, batch_sizes: tuple[int, ...], rounds: int = 3) -> float:
    """Run each batch size a few times (first-call allocations, lazy kernels) and return the seconds it took."""
    started = time.perf_counter()
    size = served.runner.preprocessing.crop_size
    for batch in batch_sizes:
        example = torch.zeros(batch, 3, size, size, dtype=torch.uint8)
        for _ in range(rounds):
            with torch.inference_mode():
                served.probabilities(example)
    return time.perf_counter() - started
