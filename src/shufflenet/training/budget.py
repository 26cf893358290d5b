"""What a run's budget is made of, measured: the images' sizes (from their headers), the classes, and the time
one optimizer step takes on this machine (for ``--time-budget``). The rules that turn these into options live
as data in :mod:`shufflenet.training.recipes`."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import nn

from shufflenet.data import Sample
from shufflenet.data.file_list import as_file_list
from shufflenet.data.shards import ShardIndex
from shufflenet.models import create_model
from shufflenet.training.config import TrainConfig
from shufflenet.training.optim import build_optimizer

__all__ = ["ImageProbe", "clock", "measure_step_seconds", "probe_index", "probe_samples"]

# Images whose headers are read to find the size, spread over the classes: enough for a stable median, cheap on
# any folder.
PROBE_SAMPLE = 64
# The clock --time-budget measures steps with (tests replace it to set the measured speed).
clock = time.perf_counter


@dataclass(frozen=True)
class ImageProbe:
    """The training images' median short side (of ``sampled`` files) and the number of classes."""

    median_short_side: float
    sampled: int
    num_classes: int
    train_images: int


def probe_samples(samples: Sequence[Sample], num_classes: int, sample: int = PROBE_SAMPLE) -> ImageProbe:
    """The sizes of up to ``sample`` of the training files already listed (about as many of each class, evenly
    spread within it), read from their headers only (PIL opens lazily: nothing is decoded); files it cannot open
    are left out. Nothing is listed again: a folder of 100,000 images is walked once, by the data module."""
    files = as_file_list(samples)  # the labels as one array: no Path object per listed file
    labels = files.labels
    by_label = np.argsort(labels, kind="stable")  # each class's files together, in listing order
    _, first, counts = np.unique(labels, return_index=True, return_counts=True)
    ends = np.cumsum(counts)
    quota = max(1, -(-sample // max(num_classes, 1)))
    picked: list[int] = []
    for c in np.argsort(first):  # classes in the order they were listed
        members = by_label[ends[c] - counts[c] : ends[c]]
        picked.extend(members[:: max(1, len(members) // quota)][:quota].tolist())
    short_sides = []
    for index in picked[:sample]:
        try:
            with Image.open(files.name(index)) as image:
                short_sides.append(min(image.size))
        except OSError:  # a bad file is the data module's to report; the size comes from the others
            continue
    if not short_sides:
        raise ValueError(f"none of the {len(picked)} training images sampled could be opened; check the files")
    return ImageProbe(statistics.median(short_sides), len(short_sides), num_classes, len(samples))


def probe_index(index: ShardIndex) -> ImageProbe:
    """The training images' sizes as ``shufflenet shards`` measured them when it wrote the shards (its index)."""
    train_images = index.count("train")
    return ImageProbe(index.median_short_side or 0.0, train_images, len(index.class_names), train_images)


def measure_step_seconds(
    cfg: TrainConfig, num_classes: int, device: torch.device, steps: int = 3, warmup: int = 1
) -> float:
    """Median seconds of one training step (forward, backward, optimizer) of a throw-away copy of the run's
    model on a random batch of ``cfg.batch_size`` images of ``cfg.img_size`` pixels; the global RNG is left
    as it was, so the run that follows draws the same numbers as without the measurement."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        model = create_model(cfg.model, num_classes=num_classes, **({"small_input": True} if cfg.small_input else {}))
        memory_format = torch.channels_last if device.type in ("cpu", "cuda") else torch.contiguous_format
        model.to(device, memory_format=memory_format).train()
        optimizer = build_optimizer(model, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum)
        images = torch.randn(cfg.batch_size, 3, cfg.img_size, cfg.img_size, device=device)
        images = images.contiguous(memory_format=memory_format)
        targets = torch.randint(0, num_classes, (cfg.batch_size,), device=device)
        criterion = nn.CrossEntropyLoss()
        seconds = []
        for step in range(warmup + steps):
            started = clock()
            optimizer.zero_grad(set_to_none=True)
            criterion(model(images), targets).backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if step >= warmup:
                seconds.append(clock() - started)
    return statistics.median(seconds)
