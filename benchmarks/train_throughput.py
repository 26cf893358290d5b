"""End-to-end training throughput on hymenoptera at 224: our default path vs a plain loop like the seed's.

Every configuration trains shufflenet_v2_x1_0 from random init (no pretrained ImageNet weights exist offline)
with Adam lr 1e-4, batch 32, RandomResizedCrop(224) + flip, validating every epoch. The baseline is the seed's
loop: torchvision's model, NCHW float32, torchvision ImageFolder + PIL decoding (with and without DataLoader
workers). Ours is ``shufflenet.train`` with its defaults (on a CPU: channels_last, float32, decoded images
cached in memory, no loader workers); the other rows switch one of those off.

All run in this one process and are interleaved: each round trains one more epoch of every configuration
(ours continues its run with --resume), in a rotating order, so that a busy machine slows all of them alike.
Printed: median train img/s (data loading included) and epoch wall time (train + val) over the rounds after
the first, and the val accuracy after the last round.

    .venv/bin/python benchmarks/train_throughput.py [--rounds 4] [--data PATH] [--only baseline,ours,...]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
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
    """``shufflenet.train`` with its defaults plus ``options``; each call trains one more epoch (--resume)."""

    def __init__(self, data: Path, **options: object) -> None:
        self.data, self.options = data, options
        self.out = Path(tempfile.mkdtemp(prefix="bench_train_")) / "run"
        self.epochs = 0

    def epoch(self) -> dict:
        self.epochs += 1
        resume = {"resume": True} if self.epochs > 1 else {"data": str(self.data)}
        result = shufflenet.train(out=str(self.out), epochs=self.epochs, **resume, **self.options)
        return result.history[-1]


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
    parser.add_argument("--rounds", type=int, default=4, help="epochs of each configuration (default 4)")
    parser.add_argument("--only", default=",".join(CONFIGS), help="comma-separated: " + ", ".join(CONFIGS))
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"{args.data} is not present")
    logging.basicConfig(level=logging.WARNING)
    names = args.only.split(",")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    runners = {name: CONFIGS[name][1](args.data) for name in names}
    rows: dict[str, list[dict]] = {name: [] for name in names}
    loads = []
    for round_index in range(args.rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            rows[name].append(runners[name].epoch())
        loads.append(os.getloadavg()[0])
        summary = ", ".join(f"{n} {rows[n][-1]['train_img_per_s']:.1f}" for n in names)
        print(f"round {round_index + 1}: train img/s {summary}; load {loads[-1]:.2f}", flush=True)

    def median(name: str, key: str) -> float:
        later = rows[name][1:] or rows[name]
        return statistics.median(r[key] for r in later)

    # Ratios are against the faster of the seed loops measured.
    seeds = [n for n in names if n.startswith("baseline")] or names[:1]
    reference = max(seeds, key=lambda n: median(n, "train_img_per_s"))
    print(f"\nload average (1 min) after each round: {', '.join(f'{x:.2f}' for x in loads)}")
    print(f"\n| configuration | train img/s | x {reference} | epoch s | val acc after {args.rounds} epochs |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        speed = median(name, "train_img_per_s")
        print(
            f"| {CONFIGS[name][0]} | {speed:.1f} | {speed / median(reference, 'train_img_per_s'):.2f} | "
            f"{median(name, 'epoch_seconds'):.1f} | {rows[name][-1]['val_acc']:.3f} |"
        )
    for runner in runners.values():
        if isinstance(runner, Ours):
            shutil.rmtree(runner.out.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
