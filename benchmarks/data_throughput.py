"""Data start-up and decode throughput at ImageNet scale, on synthetic JPEG folders made from real photos.

Three measurements, each printed as a table:

* ``build``: a class-per-folder tree of N JPEGs (random crops of the hymenoptera photos, short side 160-320 px,
  100 classes, train/ + val/), for the start-up timing.
* ``startup``: ``python -m shufflenet train`` from the command to its "first step after N s" line (train.log),
  and the RSS of the main process and of its loader workers at that moment; the run is stopped right after.
* ``memory``: what the file list costs each loader worker once it has read every sample (an epoch's worth, no
  decoding) and run Python's garbage collector: private (unshared) and resident memory of the trainer and
  of each worker, from /proc/PID/smaps_rollup. RSS counts pages a forked worker still shares with the trainer;
  the private part is what each worker really adds.
* ``decode``: images/s through one loader process (one core) for the training pipeline (decode with PIL draft,
  RandomResizedCrop, flip) at 224 and 64 px, from the folder; with and without draft.
* ``shards``: folder vs WebDataset shards (``shufflenet shards``, original bytes and re-encoded with the short
  side <= the resize size) in images/s per core, the same images through the same pipeline in one loader
  process, at 224 and 64 px; and from that the cores that feed one GPU training ShuffleNet v2 1x at
  ``--gpu-img-s`` images/s (an assumption unless you pass benchmarks/gpu_check.py's number).

    .venv/bin/python benchmarks/data_throughput.py build --out /tmp/synth10k --images 10000
    .venv/bin/python benchmarks/data_throughput.py startup --data /tmp/synth10k [--workers 2]
    .venv/bin/python benchmarks/data_throughput.py memory --data /tmp/synth10k [--workers 2]
    .venv/bin/python benchmarks/data_throughput.py decode --data /tmp/synth10k [--images 400]
    .venv/bin/python benchmarks/data_throughput.py shards --data /tmp/synth3k [--images 400] [--gpu-img-s N]

Timings are medians of repeated runs in one process where a ratio matters (draft vs no draft); on a shared
machine quote ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

DEFAULT_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "hymenoptera_data"
FIRST_STEP = re.compile(r"first step after ([0-9.]+) s")


def build(out: Path, images: int, photos: Path, classes: int = 100, val_fraction: float = 0.02) -> None:
    """Write ``images`` JPEG crops of the real photos as ``out/{train,val}/class_NNN/*.jpg``."""
    sources = sorted(photos.rglob("*.jpg"))
    if not sources:
        raise SystemExit(f"no photos under {photos}")
    rng = random.Random(0)
    decoded = [Image.open(p).convert("RGB") for p in sources]
    started = time.perf_counter()
    for i in range(images):
        subset = "val" if (i // classes) % round(1 / val_fraction) == 0 else "train"  # every class in both
        folder = out / subset / f"class_{i % classes:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        photo = decoded[i % len(decoded)]
        w, h = photo.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        short = rng.randint(160, 320)
        scale = short / min(cw, ch)
        crop = photo.crop((x, y, x + cw, y + ch)).resize((round(cw * scale), round(ch * scale)))
        crop.save(folder / f"{i:07d}.jpg", quality=85)
        if (i + 1) % 10000 == 0:
            print(f"  {i + 1} images, {time.perf_counter() - started:.0f} s", file=sys.stderr)
    print(f"wrote {images} JPEGs under {out} in {time.perf_counter() - started:.0f} s")


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def _memory_mib(pid: int) -> dict[str, float]:
    """Resident, proportional and private (unshared) memory of a process, in MiB."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                fields[name] = int(rest.split()[0]) / 1024
    private = fields["Private_Clean"] + fields["Private_Dirty"]
    return {"rss": fields["Rss"], "pss": fields["Pss"], "private": private}


class _ReadEverySample(torch.utils.data.Dataset):
    """Item k reads the (path, label) of samples [k * chunk, (k + 1) * chunk), as a loader worker does over an
    epoch, then runs the garbage collector (which a long-lived worker does now and then)."""

    def __init__(self, dataset: torch.utils.data.Dataset, chunk: int = 2048) -> None:
        self.dataset, self.chunk = dataset, chunk

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.chunk)

    def __getitem__(self, k: int) -> int:
        import gc

        samples = self.dataset.samples
        # as the dataset reads an item: FileList.name (a str) where it exists, the stored Path before
        name = samples.name if hasattr(samples, "name") else (lambda i: str(samples[i][0]))
        chunk = range(k * self.chunk, min(len(samples), (k + 1) * self.chunk))
        total = sum(
            len(name(i)) + int(samples.labels[i] if hasattr(samples, "labels") else samples[i][1]) for i in chunk
        )
        gc.collect()
        return total


def memory(data: Path, workers: int) -> dict[str, float]:
    """Trainer and loader-worker memory (MiB) after the workers read every training sample of ``data``."""
    import gc

    from shufflenet.data import build_datasets
    from shufflenet.transforms import Preprocessing

    started = time.perf_counter()
    bundle = build_datasets(data, Preprocessing.for_size(224), draft=True)
    listed = time.perf_counter() - started
    gc.collect()
    reader = _ReadEverySample(bundle.train)
    loader = torch.utils.data.DataLoader(reader, batch_size=None, num_workers=workers, persistent_workers=True)
    assert sum(loader) > 0
    main = _memory_mib(os.getpid())
    per_worker = [_memory_mib(pid) for pid in _children(os.getpid())]
    del loader
    return {
        "files": len(bundle.train) + len(bundle.val),
        "listed_s": listed,
        "main_rss": main["rss"],
        "main_private": main["private"],
        "worker_rss": max(w["rss"] for w in per_worker),
        "worker_private": max(w["private"] for w in per_worker),
        "total_pss": main["pss"] + sum(w["pss"] for w in per_worker),  # the machine's memory, shared pages once
    }


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(c) for c in f.read().split()]
    except OSError:
        return []


def startup(data: Path, workers: int, img_size: int) -> dict[str, float]:
    """Command -> first step (s), and RSS (MiB) of the trainer and of each loader worker then."""
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        command = [sys.executable, "-m", "shufflenet", "train", "--data", str(data), "--out", str(run)]
        command += ["--model", "shufflenet_v2_x0_5", "--img-size", str(img_size), "--batch-size", "32"]
        command += ["--epochs", "1", "--device", "cpu", "--workers", str(workers), "--threads", "1", "--quiet"]
        command += ["--no-cache-images"]
        started = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        log = run / "train.log"
        found = None
        while proc.poll() is None and time.perf_counter() - started < 600:
            if log.is_file():
                found = FIRST_STEP.search(log.read_text())
                if found:
                    break
            time.sleep(0.05)
        seen = time.perf_counter() - started
        if found is None:
            proc.kill()
            raise SystemExit(f"no first step: {proc.communicate()[1][-2000:]}")
        main_rss = _rss_kib(proc.pid) / 1024
        worker_rss = [_rss_kib(c) / 1024 for c in _children(proc.pid)]
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    return {
        "first_step_s": float(found.group(1)),
        "seen_s": seen,
        "main_rss_mib": main_rss,
        "worker_rss_mib": max(worker_rss, default=0.0),
    }


def decode_rate(data: Path, img_size: int, draft: bool, images: int) -> float:
    """Training images/s through one process: decode (draft or not), RandomResizedCrop, flip, collate."""
    from shufflenet.data import ImageFolderDataset, scan_image_folder
    from shufflenet.transforms import Preprocessing, train_transform

    samples, classes = scan_image_folder(data / "train")
    samples = random.Random(0).sample(samples, min(images, len(samples)))
    pre = Preprocessing.for_size(img_size)
    dataset = ImageFolderDataset(samples, classes, train_transform(pre), pre.resize_size if draft else None)
    loader = torch.utils.data.DataLoader(dataset, batch_size=32, num_workers=0)
    started = time.perf_counter()
    count = sum(len(labels) for _, labels in loader)
    return count / (time.perf_counter() - started)


# ShuffleNet v2 1x training images/s on one GPU when none is measured: an ASSUMPTION (bf16, channels_last, batch
# 256 on an A100/H100-class card), to be replaced by benchmarks/gpu_check.py's number (--gpu-img-s).
ASSUMED_GPU_IMG_S = 3000.0


def write_bench_shards(data: Path, out: Path, max_size: int | None) -> float:
    """``shufflenet shards`` of ``data`` into ``out`` (one process); returns images written per second."""
    from shufflenet.data.shards import write_shards

    started = time.perf_counter()
    index = write_shards(data, out, shard_images=200, max_size=max_size, workers=1)
    return index.count("train") / (time.perf_counter() - started)


def shard_sources(shards: list, images: int) -> tuple[list, list[str]]:
    """The first shards holding >= ``images`` samples, and their samples' source files (the .txt entries)."""
    import tarfile

    chosen, sources = [], []
    for shard in shards:
        if len(sources) >= images:
            break
        chosen.append(shard)
        with tarfile.open(shard.path) as tar:
            sources += [tar.extractfile(m).read().decode() for m in tar if m.name.endswith(".txt")]
    return chosen, sources


def shards_vs_folder_rate(source: str, data: Path, shards: list, names: list[str], img_size: int) -> float:
    """Training images/s in one process (no loader workers) from the folder files ``names`` or ``shards``."""
    from shufflenet.data import ImageFolderDataset
    from shufflenet.data.shard_streams import ShardTrainStream
    from shufflenet.training.loaders import SeededSamples
    from shufflenet.transforms import Preprocessing, train_transform

    pre = Preprocessing.for_size(img_size)
    transform = train_transform(pre)
    if source == "folder":  # as train --data DIR reads it: each image's augmentation seeded, shuffled order
        samples = [(data / name, 0) for name in names]
        dataset = SeededSamples(ImageFolderDataset(samples, ["x"], transform, pre.resize_size), seed=0)
        keys = [(0, int(i)) for i in torch.randperm(len(samples))]
        loader = torch.utils.data.DataLoader(dataset, batch_size=32, num_workers=0, sampler=keys)
    else:
        stream = ShardTrainStream(shards, transform, 32, draft_size=pre.resize_size)
        loader = torch.utils.data.DataLoader(stream, batch_size=32, num_workers=0)
    started = time.perf_counter()
    count = sum(len(labels) for _, labels in loader)
    return count / (time.perf_counter() - started)


def shards_table(data: Path, images: int, repeats: int, gpu_img_s: float | None) -> None:
    """Print folder vs shards images/s per core at 224 and 64 px, and the cores one GPU needs."""
    from shufflenet.data.shards import read_index
    from shufflenet.transforms import Preprocessing

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        wrote = {"shards": write_bench_shards(data, Path(tmp) / "full", None)}
        full, names = shard_sources(read_index(Path(tmp) / "full").shards["train"], images)
        for size in (224, 64):
            max_size = Preprocessing.for_size(size).resize_size
            smaller = f"shards --max-size {max_size}"
            wrote[smaller] = write_bench_shards(data, Path(tmp) / smaller, max_size)
            # the same images: the re-encoded shards hold the same samples in the same order
            chosen = {"folder": [], "shards": full, smaller: read_index(Path(tmp) / smaller).shards["train"]}
            chosen[smaller] = chosen[smaller][: len(full)]
            rates: dict[str, list[float]] = {name: [] for name in chosen}
            for _ in range(repeats):  # interleaved, so a busier moment hits every variant alike
                for name, shards in chosen.items():
                    source = "folder" if name == "folder" else "shards"
                    rates[name].append(shards_vs_folder_rate(source, data, shards, names, size))
            folder = statistics.median(rates["folder"])
            for name in chosen:
                rate = statistics.median(rates[name])
                rows.append((size, name, rate, rate / folder, wrote.get(name)))
    gpu = gpu_img_s or ASSUMED_GPU_IMG_S
    label = "measured (--gpu-img-s)" if gpu_img_s else "ASSUMED: pass gpu_check.py's as --gpu-img-s"
    print(f"{len(names)} training images per measurement, one loader process, torch threads 1")
    print(
        f"| size | source | img/s per core (median of {repeats}) | vs folder | cores for {gpu:.0f} img/s ({label}) "
        "| writing, img/s per core |"
    )
    print("|---|---|---|---|---|---|")
    for size, name, rate, ratio, written in rows:
        writing = f"{written:.0f}" if written else "-"
        print(f"| {size} | {name} | {rate:.0f} | {ratio:.2f}x | {math.ceil(gpu / rate)} | {writing} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--images", type=int, default=10000)
    b.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS)
    s = sub.add_parser("startup")
    s.add_argument("--data", type=Path, required=True, help="a folder, or shards from shufflenet shards")
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--img-size", type=int, default=224)
    s.add_argument("--repeats", type=int, default=2)
    m = sub.add_parser("memory")
    m.add_argument("--data", type=Path, required=True)
    m.add_argument("--workers", type=int, default=2)
    d = sub.add_parser("decode")
    d.add_argument("--data", type=Path, required=True)
    d.add_argument("--images", type=int, default=400)
    d.add_argument("--repeats", type=int, default=3)
    w = sub.add_parser("shards")
    w.add_argument("--data", type=Path, required=True, help="a folder made by build (train/ + val/)")
    w.add_argument("--images", type=int, default=400, help="images read per measurement")
    w.add_argument("--repeats", type=int, default=3)
    w.add_argument("--gpu-img-s", type=float, help=f"measured GPU train img/s (default {ASSUMED_GPU_IMG_S:g}: assumed)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.command == "build":
        build(args.out, args.images, args.photos)
    elif args.command == "shards":
        shards_table(args.data, args.images, args.repeats, args.gpu_img_s)
    elif args.command == "startup":
        rows = [startup(args.data, args.workers, args.img_size) for _ in range(args.repeats)]
        if (args.data / "index.json").is_file():  # shards: their index counts the images
            from shufflenet.data.shards import read_index

            index = read_index(args.data)
            files = index.count("train") + index.count("val")
        else:
            files = sum(1 for _ in args.data.rglob("*.jpg"))
        print("| images | first step (s, median) | trainer RSS (MiB) | loader worker RSS (MiB) |")
        print("|---|---|---|---|")
        med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
        print(f"| {files} | {med['first_step_s']:.1f} | {med['main_rss_mib']:.0f} | {med['worker_rss_mib']:.0f} |")
    elif args.command == "memory":
        row = memory(args.data, args.workers)
        print(
            "| files | listed (s) | trainer RSS / private (MiB) | each worker RSS / private (MiB) | total PSS (MiB) |"
        )
        print("|---|---|---|---|---|")
        print(
            f"| {row['files']} | {row['listed_s']:.1f} | {row['main_rss']:.0f} / {row['main_private']:.0f} "
            f"| {row['worker_rss']:.0f} / {row['worker_private']:.0f} | {row['total_pss']:.0f} |"
        )
    else:
        print("| size | draft | img/s, one process (median) |")
        print("|---|---|---|")
        for size in (224, 64):
            rates = {True: [], False: []}
            for _ in range(args.repeats):  # interleaved, so a busier moment hits both alike
                for draft in (True, False):
                    rates[draft].append(decode_rate(args.data, size, draft, args.images))
            for draft in (True, False):
                print(f"| {size} | {'on' if draft else 'off'} | {statistics.median(rates[draft]):.0f} |")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
