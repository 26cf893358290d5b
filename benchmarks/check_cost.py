"""What the ranks' stop/NaN check costs per training step, on CPU processes with gloo.

Every ``check_every`` steps the loop moves the pending losses to the host and all-reduces a 2-number vote
(shufflenet/training/loop.py::_check). On a GPU the host sync is the cost (the default there is 16); this
script measures the all-reduce side on CPU: 2 gloo processes train shufflenet_v2_x0_5 under DDP at 32 px,
batch 8, 1 thread each, and time steps with a check every 1, 4, 16 steps and never.

    PYTHONPATH=src python benchmarks/check_cost.py [--steps 60] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.distributed as torch_dist
import torch.multiprocessing as mp
from torch import nn

from shufflenet.models import create_model
from shufflenet.training.distributed import Distributed
from shufflenet.training.loop import _check
from shufflenet.training.signals import StopRequest

INTERVALS = (1, 4, 16, 0)  # 0: never


def worker(rank: int, world: int, steps: int, repeats: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29533", RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", rank=rank, world_size=world)
    dist = Distributed(torch.device("cpu"), rank, world, "gloo")
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(create_model("shufflenet_v2_x0_5", num_classes=10))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.randn(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, 10, (8,))
    stop = StopRequest()
    timings: dict[int, list[float]] = {n: [] for n in INTERVALS}
    for _ in range(repeats):
        for every in INTERVALS:
            pending, counts, sums = [], [], torch.zeros(3, dtype=torch.float64)
            torch_dist.barrier()
            started = time.perf_counter()
            for step in range(1, steps + 1):
                loss = nn.functional.cross_entropy(model(images), targets)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                pending.append(torch.stack([loss.detach(), loss.detach()]))
                counts.append(len(targets))
                if every and step % every == 0:
                    _check(pending, counts, sums, step, stop, dist)
                    pending, counts = [], []
            timings[every].append((time.perf_counter() - started) / steps * 1000)
    if rank == 0:
        results.update({n: statistics.median(t) for n, t in timings.items()})
    torch_dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(worker, args=(2, args.steps, args.repeats, results), nprocs=2)
        results = dict(results)
    base = results[0]
    print(f"2 gloo processes, shufflenet_v2_x0_5, 32 px, batch 8 per process, {args.steps} steps x {args.repeats}")
    print("| check every | ms per step (median) | vs never |\n|---|---:|---:|")
    for every in INTERVALS:
        label = "never" if every == 0 else f"{every} step" + ("s" if every > 1 else "")
        print(f"| {label} | {results[every]:.2f} | {results[every] / base:.3f} |")


if __name__ == "__main__":
    main()
