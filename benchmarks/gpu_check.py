"""On a CUDA machine: bf16 AMP + channels_last training, exact --resume, DDP over NCCL (with --sync-bn) ending
with the same weights on every GPU, and throughput. Prints a table; skips with a message without a GPU.

    PYTHONPATH=src python benchmarks/gpu_check.py [--images 64] [--img-size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import shufflenet

WORKER = Path(__file__).resolve().parents[1] / "tests" / "training" / "ddp_worker.py"


def write_tree(root: Path, per_class: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for name, color in {"cat": (200, 40, 40), "dog": (40, 40, 200)}.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = (rng.random((size, size, 3)) * 80 + np.array(color) - 40).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def max_difference(a: Path, b: Path) -> float:
    x, y = (torch.load(p, weights_only=True, map_location="cpu") for p in (a, b))
    x, y = x.get("state_dict", x), y.get("state_dict", y)
    return max((x[k].float() - y[k].float()).abs().max().item() for k in x if x[k].is_floating_point())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="training images per class")
    parser.add_argument("--img-size", type=int, default=64)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible to PyTorch on this machine; nothing to check (skipped)")
        return 0
    gpus = torch.cuda.device_count()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        write_tree(base / "data" / "train", args.images, args.img_size + 8)
        write_tree(base / "data" / "val", 8, args.img_size + 8)
        options = {"data": str(base / "data"), "model": "shufflenet_v2_x0_5", "img_size": args.img_size}
        options.update(device="cuda", amp="bf16", channels_last=True, batch_size=32, lr=1e-3, workers=2)
        straight = shufflenet.train(out=str(base / "straight"), epochs=3, **options)
        ok = straight.stopped is None and all(np.isfinite(r["train_loss"]) for r in straight.history)
        speed = straight.history[-1]["train_img_per_s"]
        rows.append(("bf16 AMP + channels_last, 1 GPU", ok, f"{speed:.0f} img/s (epoch 3)"))
        # cuDNN may pick non-deterministic kernels: a resumed run must differ no more than two straight runs do.
        shufflenet.train(out=str(base / "again"), epochs=3, **options)
        shufflenet.train(out=str(base / "cut"), epochs=1, **options)
        shufflenet.train(out=str(base / "cut"), resume=True, epochs=3, device="cuda")
        noise = max_difference(base / "straight" / "last.pt", base / "again" / "last.pt")
        difference = max_difference(base / "straight" / "last.pt", base / "cut" / "last.pt")
        numbers = f"max |dw| {difference:.2e} (two straight runs: {noise:.2e})"
        rows.append(("resume after epoch 1 vs straight run", difference <= noise, numbers))
        if gpus >= 2:
            ddp = {**options, "out": str(base / "ddp"), "epochs": 1, "sync_bn": True}
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
            proc = subprocess.run([*command, str(WORKER), json.dumps(ddp)], capture_output=True, text=True)
            if proc.returncode:
                rows.append(("DDP nccl --sync-bn, 2 GPUs", False, proc.stderr.strip().splitlines()[-1][:80]))
            else:
                difference = max_difference(base / "ddp" / "rank0.pt", base / "ddp" / "rank1.pt")
                metrics = (base / "ddp" / "metrics.csv").read_text().splitlines()
                img_s = metrics[-1].split(",")[-1]
                rows.append(("DDP nccl --sync-bn, same weights on 2 GPUs", difference == 0.0, f"{img_s} img/s"))
        else:
            rows.append(("DDP nccl (needs 2 GPUs)", None, f"{gpus} GPU: skipped"))
    print(f"{torch.cuda.get_device_name(0)}, {gpus} GPU(s), torch {torch.__version__}, PID {os.getpid()}")
    print("| check | result | numbers |\n|---|---|---|")
    for name, ok, numbers in rows:
        print(f"| {name} | {'skipped' if ok is None else 'ok' if ok else 'FAILED'} | {numbers} |")
    return 0 if all(ok is not False for _, ok, _ in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
