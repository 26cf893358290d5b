"""End-to-end training throughput on hymenoptera at 224: our default path vs a plain loop like the seed's.

Every configuration trains shufflenet_v2_x1_0 from random init (no pretrained ImageNet weights exist offline)
with Adam lr 1e-4, batch 32, RandomResizedCrop(224) + flip, validating every epoch. The baseline is the seed's
loop: torchvision's model, NCHW float32, torchvision ImageFolder + PIL decoding (with and without DataLoader
workers). Ours is ``shufflenet.train`` with its defaults (on a CPU: channels_last, float32, decoded images
cached in memory, no loader workers); the other rows switch one of those off.

All run in this one process: each block trains every configuration for --epochs epochs (a whole run, set-up
included), in a rotating order, and the blocks repeat, so a machine that gets busier or quieter affects all
configurations alike. Printed: median train img/s (data loading included) and epoch wall time (train + val)
over all epochs but each run's first, and the val accuracy of each configuration's last run.

    .venv/bin/python benchmarks/train_throughput.py [--epochs 3] [--blocks 2] [--threads N] [--only baseline,ours,...]

On a machine that other jobs keep busy, two OpenMP threads per process stall each other (see
docs/training.md); ``--threads 1`` measures all configurations under the same, stable setting.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision import transforms

import shufflenet

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera_data"


class Baseline:
    """The seed's plain loop (torchvision model, NCHW, ImageFolder + PIL), one epoch per call."""

    def __init__(self, data: Path, workers: int, seed: int = 0) -> None:
        torch.manual_seed(seed)
        normalize = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        train_tf = transforms.Compose(
            [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.ToTensor(), normalize]
        )
        val_tf = transforms.Compose(
            [transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(), normalize]
        )
        self.train_set = torchvision.datasets.ImageFolder(str(data / "train"), train_tf)
        self.val_set = torchvision.datasets.ImageFolder(str(data / "val"), val_tf)
        loader = torch.utils.data.DataLoader
        self.train_loader = loader(self.train_set, batch_size=32, shuffle=True, num_workers=workers)
        self.val_loader = loader(self.val_set, batch_size=32, shuffle=False, num_workers=workers)
        self.model = torchvision.models.shufflenet_v2_x1_0(num_classes=len(self.train_set.classes))
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.loss_fn = nn.CrossEntropyLoss()

    def run(self, epochs: int) -> list[dict]:
        return [self.epoch() for _ in range(epochs)]

    def epoch(self) -> dict:
        start = time.perf_counter()
        self.model.train()
        seen = 0
        for images, labels in self.train_loader:
            loss = self.loss_fn(self.model(images), labels)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            seen += len(labels)
        train_seconds = time.perf_counter() - start
        self.model.eval()
        correct = 0
        with torch.no_grad():
            for images, labels in self.val_loader:
                correct += (self.model(images).argmax(1) == labels).sum().item()
        return {
            "train_img_per_s": seen / train_seconds,
            "epoch_seconds": time.perf_counter() - start,
            "val_acc": correct / len(self.val_set),
        }


class Ours:
    """``shufflenet.train`` with its defaults plus ``options``."""

    def __init__(self, data: Path, **options: object) -> None:
        self.data, self.options = data, options

    def run(self, epochs: int) -> list[dict]:
        with tempfile.TemporaryDirectory(prefix="bench_train_") as out:
            return shufflenet.train(data=str(self.data), out=out + "/run", epochs=epochs, **self.options).history


CONFIGS = {
    "baseline": ("seed loop: torchvision, NCHW, ImageFolder+PIL, 2 workers", lambda d: Baseline(d, workers=2)),
    "baseline0": ("seed loop, 0 workers", lambda d: Baseline(d, workers=0)),
    "ours": ("shufflenet train defaults", lambda d: Ours(d)),
    "ours_nchw": ("ours, --no-channels-last", lambda d: Ours(d, channels_last=False)),
    "ours_nocache": ("ours, --no-cache-images", lambda d: Ours(d, cache_images=False)),
    "ours_nocache_w1": ("ours, --no-cache-images --workers 1", lambda d: Ours(d, cache_images=False, workers=1)),
    "ours_bf16": ("ours, --amp bf16", lambda d: Ours(d, amp="bf16")),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (default 3)")
    parser.add_argument("--blocks", type=int, default=2, help="runs of each configuration (default 2)")
    parser.add_argument("--threads", type=int, help="torch threads for every configuration (default: torch's)")
    parser.add_argument("--only", default=",".join(CONFIGS), help="comma-separated: " + ", ".join(CONFIGS))
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"{args.data} is not present")
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.only.split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    speeds: dict[str, list[float]] = {name: [] for name in names}
    epoch_seconds: dict[str, list[float]] = {name: [] for name in names}
    accuracy: dict[str, float] = {}
    loads = []
    for block in range(args.blocks):
        order = names[block % len(names) :] + names[: block % len(names)]
        for name in order:
            rows = CONFIGS[name][1](args.data).run(args.epochs)
            later = rows[1:] or rows
            speeds[name] += [r["train_img_per_s"] for r in later]
            epoch_seconds[name] += [r["epoch_seconds"] for r in later]
            accuracy[name] = rows[-1]["val_acc"]
            loads.append(os.getloadavg()[0])
            print(f"block {block + 1} {name}: {[round(r['train_img_per_s'], 1) for r in rows]} img/s", flush=True)

    # Ratios are against the faster of the seed loops measured.
    seeds = [n for n in names if n.startswith("baseline")] or names[:1]
    reference = max(seeds, key=lambda n: statistics.median(speeds[n]))
    base = statistics.median(speeds[reference])
    print(f"\nload average (1 min) after each run: {', '.join(f'{x:.2f}' for x in loads)}")
    print(f"\n| configuration | train img/s | x {reference} | epoch s | val acc after {args.epochs} epochs |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        speed = statistics.median(speeds[name])
        print(
            f"| {CONFIGS[name][0]} | {speed:.1f} | {speed / base:.2f} | "
            f"{statistics.median(epoch_seconds[name]):.1f} | {accuracy[name]:.3f} |"
        )


if __name__ == "__main__":
    main()
