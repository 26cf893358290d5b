"""What a run's budget is made of, measured: the images' sizes (from their headers), the classes, and the time
one optimizer step takes on this machine (for ``--time-budget``). The rules that turn these into options live
as data in :mod:`shufflenet.training.recipes`."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch import nn

from shufflenet.data import detect_layout, scan_image_folder
from shufflenet.data.shards import is_shard_dir, read_index
from shufflenet.models import create_model
from shufflenet.training.config import TrainConfig
from shufflenet.training.optim import build_optimizer

__all__ = ["ImageProbe", "clock", "measure_step_seconds", "probe_images"]

# Images whose headers are read to find the size: enough for a stable median, cheap on any folder.
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


def probe_images(data_dir: str | Path, sample: int = PROBE_SAMPLE) -> ImageProbe:
    """Read the sizes of up to ``sample`` training images, spread over the classes, from their headers only
    (PIL opens lazily: nothing is decoded); files it cannot open are left out."""
    root = Path(data_dir)
    if is_shard_dir(root):  # shufflenet shards measured the images when it wrote them
        index = read_index(root)
        side = index.median_short_side or 0.0
        return ImageProbe(side, index.count("train"), len(index.class_names), index.count("train"))
    if detect_layout(root) == "train/val":
        root = root / "train"
    samples, class_names = scan_image_folder(root)
    every = max(1, len(samples) // sample)
    short_sides = []
    for path, _ in samples[::every][:sample]:
        try:
            with Image.open(path) as image:
                short_sides.append(min(image.size))
        except OSError:  # a bad file is the data module's to report; the size comes from the others
            continue
    if not short_sides:
        raise ValueError(f"{data_dir}: none of {len(samples)} images could be opened; check the files")
    return ImageProbe(statistics.median(short_sides), len(short_sides), len(class_names), len(samples))


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
