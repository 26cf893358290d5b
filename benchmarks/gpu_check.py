"""On a CUDA machine: bf16 AMP + channels_last training, exact --resume, DDP over NCCL (with --sync-bn) ending
with the same weights on every GPU; then the input path: train img/s from a JPEG folder through each
--input-pipeline (workers, device, gpu-decode) and from shards, the loader alone (decode to normalised batches
on the GPU, no model) and the model alone (synthetic batches already on the GPU), and which one bounds the
step. Prints two tables; skips with a message without a GPU.

    PYTHONPATH=src python benchmarks/gpu_check.py [--images 64] [--img-size 64] [--speed-images 2048]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import shufflenet

WORKER = Path(__file__).resolve().parents[1] / "tests" / "training" / "ddp_worker.py"
PIPELINES = ("workers", "device", "gpu-decode")


def write_tree(root: Path, per_class: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for name, color in {"cat": (200, 40, 40), "dog": (40, 40, 200)}.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = (rng.random((size, size, 3)) * 80 + np.array(color) - 40).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")


def write_photo_tree(root: Path, images: int, classes: int = 10) -> None:
    """JPEGs of 400x300 (about ImageNet's mean size), smooth colour fields with noise, ``classes`` folders."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (classes, 8, 8, 3), dtype=np.uint8)
    for i in range(images):
        label = i % classes
        folder = root / f"class_{label:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        field = Image.fromarray(base[label]).resize((400, 300), Image.Resampling.BILINEAR)
        noise = rng.integers(-20, 21, (300, 400, 3))
        pixels = np.clip(np.asarray(field, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:06d}.jpg", quality=90)


def loader_rate(options: dict, run: Path, batches: int) -> float:
    """Images/s of the training loader alone: workers, transfer and the device half of the pipeline, no model."""
    from shufflenet.data.shards import is_shard_dir
    from shufflenet.training import TrainConfig
    from shufflenet.training.distributed import Distributed
    from shufflenet.training.loaders import build_data
    from shufflenet.training.shard_data import build_shard_data

    cfg = TrainConfig(out=str(run), **options).validate()
    run.mkdir(parents=True, exist_ok=True)
    dist = Distributed.from_environment(cfg.device)
    data = (build_shard_data if is_shard_dir(cfg.data) else build_data)(cfg, dist, run, split_existed=False)
    data.sampler.set_epoch(0)
    count, started = 0, None
    for step, (images, _) in enumerate(data.train_loader):
        batch = data.normalize(images.to(dist.device, non_blocking=True, memory_format=torch.channels_last))
        if step == 1:  # after the workers' start and the first batch
            torch.cuda.synchronize()
            started = time.perf_counter()
        elif step > 1:
            count += len(batch)
        if step == batches:
            break
    torch.cuda.synchronize()
    return count / (time.perf_counter() - started)


def model_rate(model_name: str, size: int, batch: int, steps: int, compile: bool) -> float:
    """Images/s of training steps alone (bf16 autocast, channels_last) on uint8 batches already on the GPU."""
    from shufflenet.models import create_model
    from shufflenet.transforms import Preprocessing, batch_normalizer

    model = create_model(model_name, num_classes=1000).cuda().to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if compile else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    normalize = batch_normalizer(Preprocessing.for_size(size))
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, device="cuda")
    images = images.contiguous(memory_format=torch.channels_last)
    targets = torch.randint(0, 1000, (batch,), device="cuda")
    for step in range(steps + 5):
        if step == 5:
            torch.cuda.synchronize()
            started = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(step_model(normalize(images)).float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - started)


def shards_command_exists() -> bool:
    """Whether this checkout has `shufflenet shards` (issue 20's WebDataset work)."""
    probe = [sys.executable, "-m", "shufflenet", "shards", "--help"]
    return subprocess.run(probe, capture_output=True).returncode == 0


def speed_rows(args: argparse.Namespace, base: Path) -> list[tuple[str, str, str]]:
    """(source, what, img/s) rows: training, loader alone and model alone, and the verdict per pipeline."""
    folder = base / "photos"
    write_photo_tree(folder, args.speed_images)
    workers = max(1, min(8, (os.cpu_count() or 2) - 1))
    common = {"data": str(folder), "model": args.speed_model, "img_size": 224, "batch_size": args.speed_batch}
    common.update(device="cuda", amp="bf16", channels_last=True, workers=workers, recipe="finetune", lr=1e-3)
    common.update(val_split=0.05, cache_images=False)
    rows = []
    model_alone = model_rate(args.speed_model, 224, args.speed_batch, 30, compile=False)
    rows.append(("synthetic uint8 on the GPU", "model alone (bf16, channels_last)", f"{model_alone:.0f}"))
    compiled = model_rate(args.speed_model, 224, args.speed_batch, 30, compile=True)
    rows.append(("synthetic uint8 on the GPU", "model alone, torch.compile", f"{compiled:.0f}"))
    sources = [(f"folder, --input-pipeline {name}", {**common, "input_pipeline": name}) for name in PIPELINES]
    if shards_command_exists():
        # The same split as the folder runs (val_split 0.05, the default seed), re-encoded to a short side <= 256.
        shards = base / "shards"
        command = [sys.executable, "-m", "shufflenet", "shards", "--data", str(folder), "--out", str(shards)]
        subprocess.run([*command, "--max-size", "256", "--val-split", "0.05"], check=True, capture_output=True)
        shard_options = {**common, "data": str(shards), "input_pipeline": "workers"}
        sources.append(("shards (max side 256), workers pipeline", shard_options))
    else:
        rows.append(("shards", "skipped", "no `shufflenet shards` in this checkout"))
    for source, options in sources:
        tag = source.replace(" ", "_").replace(",", "").replace("-", "")
        loader = loader_rate(options, base / f"loader_{tag}", batches=args.speed_batches)
        trained = shufflenet.train(out=str(base / f"train_{tag}"), epochs=2, **options)
        train = trained.history[-1]["train_img_per_s"]
        bound = "loader" if loader < model_alone else "GPU"
        rows.append((source, "loader alone (to normalised GPU batches)", f"{loader:.0f}"))
        rows.append(
            (source, f"training, epoch 2 ({bound}-bound: loader {loader / model_alone:.2f}x model)", f"{train:.0f}")
        )
    return rows


def max_difference(a: Path, b: Path) -> float:
    x, y = (torch.load(p, weights_only=True, map_location="cpu") for p in (a, b))
    x, y = x.get("state_dict", x), y.get("state_dict", y)
    return max((x[k].float() - y[k].float()).abs().max().item() for k in x if x[k].is_floating_point())


def check_rows(args: argparse.Namespace, base: Path, gpus: int) -> list[tuple[str, bool | None, str]]:
    """(check, ok, numbers): bf16 + channels_last training, exact resume, DDP with --sync-bn on 2 GPUs."""
    rows = []
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
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="training images per class")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--speed-images", type=int, default=2048, help="400x300 JPEGs for the input-path speeds")
    parser.add_argument("--speed-model", default="shufflenet_v2_x1_0")
    parser.add_argument("--speed-batch", type=int, default=256)
    parser.add_argument("--speed-batches", type=int, default=6, help="batches timed for the loader alone")
    parser.add_argument("--skip-checks", action="store_true", help="only the input-path speeds")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible to PyTorch on this machine; nothing to check (skipped)")
        return 0
    gpus = torch.cuda.device_count()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [] if args.skip_checks else check_rows(args, Path(tmp), gpus)
        speeds = speed_rows(args, Path(tmp))
    print(f"{torch.cuda.get_device_name(0)}, {gpus} GPU(s), torch {torch.__version__}, PID {os.getpid()}")
    print("| check | result | numbers |\n|---|---|---|")
    for name, ok, numbers in rows:
        print(f"| {name} | {'skipped' if ok is None else 'ok' if ok else 'FAILED'} | {numbers} |")
    print(f"\n{args.speed_images} JPEGs of 400x300, {args.speed_model} at 224 px, batch {args.speed_batch}, bf16:")
    print("| source | measured | img/s |\n|---|---|---|")
    for source, what, rate in speeds:
        print(f"| {source} | {what} | {rate} |")
    return 0 if all(ok is not False for _, ok, _ in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
