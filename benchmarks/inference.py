"""CPU inference speed and reduced-precision accuracy: every backend/precision vs torchvision eager.

Sections (all in this one process, candidates timed in interleaved rounds, see shufflenet.bench):

* accuracy  Fine-tune shufflenet_v2_x1_0 (random init: no ImageNet weights offline) on hymenoptera
            (or sklearn digits), or load ``--weights``; then top-1 accuracy of every backend/precision on
            the validation images and its top-1 agreement with our fp32 model. Int8 is calibrated on
            ``--calib`` training images (eval transform). The checkpoint is cached under runs/deploy/.
* speed     shufflenet_v2_x1_0 at 224, batches 1/8/32, every backend/precision beside torchvision eager
            (the trained weights when the accuracy section ran); the issue's targets checked.
* v1        shufflenet_v1_g3_x1_0 and v2 1.0x, every backend/precision of both interleaved, batches 1, 32.
* sizes     v2 1.0x throughput vs input size (128-320) at batch 8, fp32 and int8 of the ONNX runtimes.

    .venv/bin/python benchmarks/inference.py [--sections accuracy,speed,v1,sizes] [--threads 2]
        [--time 2] [--weights RUN/best.pt] [--data hymenoptera|digits] [--epochs 25] [--json out.json]

Check ``uptime`` first: other processes on the cores distort absolute numbers (ratios less so).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torchvision.transforms import v2 as T

from shufflenet import bench, create_model, deploy
from shufflenet.checkpoints import load_model, make_checkpoint, save_checkpoint
from shufflenet.cli.common import format_table
from shufflenet.transforms import Preprocessing

ROOT = Path(__file__).resolve().parents[1]
HYMENOPTERA = ROOT.parent / "shared" / "data" / "hymenoptera_data"
CACHE = ROOT / "runs" / "deploy"
V2 = "shufflenet_v2_x1_0"
V1 = "shufflenet_v1_g3_x1_0"


def say(text: str) -> None:
    print(text, flush=True)


# ---------------------------------------------------------------------------------------------- data


def load_hymenoptera(prep: Preprocessing) -> tuple[list[Tensor], Tensor, Tensor, Tensor, list[str]]:
    """Train images (uint8, shorter side resize_size) + labels, val batch (normalised) + labels, classes."""
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p.name for p in (HYMENOPTERA / "train").iterdir() if p.is_dir())
    resize = T.Compose([T.ToImage(), T.Resize(prep.resize_size, antialias=True)])
    evaluate = prep.eval_transform()
    train, train_labels, val, val_labels = [], [], [], []
    for split in ("train", "val"):
        for label, name in enumerate(classes):
            for path in sorted((HYMENOPTERA / split / name).iterdir()):
                try:
                    with Image.open(path) as image:
                        image = image.convert("RGB")
                except (UnidentifiedImageError, OSError):
                    continue  # the data set ships one bad file
                if split == "train":
                    train.append(resize(image))
                    train_labels.append(label)
                else:
                    val.append(evaluate(image))
                    val_labels.append(label)
    return train, torch.tensor(train_labels), torch.stack(val), torch.tensor(val_labels), classes


def load_digits(prep: Preprocessing) -> tuple[list[Tensor], Tensor, Tensor, Tensor, list[str]]:
    """sklearn's 8x8 digits, upscaled to the crop size; 2/3 train, 1/3 val (fixed split)."""
    from sklearn.datasets import load_digits as sk_digits

    digits = sk_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).div(16).unsqueeze(1).expand(-1, 3, -1, -1)
    images = nn.functional.interpolate(images, size=(prep.crop_size, prep.crop_size), mode="bilinear")
    labels = torch.tensor(digits.target)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    cut = 2 * len(order) // 3
    to_uint8 = (images * 255).round().to(torch.uint8)
    train = [to_uint8[i] for i in order[:cut]]
    val = prep.normalize()(images[order[cut:]])
    return train, labels[order[:cut]], val, labels[order[cut:]], [str(d) for d in range(10)]


def augment(images: list[Tensor], prep: Preprocessing, generator: torch.Generator, digits: bool = False) -> Tensor:
    """RandomResizedCrop (+ flip, not for digits) on cached uint8 images, then normalise."""
    ops = T.Compose(
        [
            T.RandomResizedCrop(prep.crop_size, scale=(0.6, 1.0) if digits else (0.25, 1.0), antialias=True),
            T.RandomHorizontalFlip(0.0 if digits else 0.5),
            T.ToDtype(torch.float32, scale=True),
        ]
    )
    torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
    return prep.normalize()(torch.stack([ops(image) for image in images]))


def center(images: list[Tensor], prep: Preprocessing) -> Tensor:
    """Eval crop of cached uint8 images, normalised (calibration inputs)."""
    crop = T.Compose([T.CenterCrop(prep.crop_size), T.ToDtype(torch.float32, scale=True)])
    return prep.normalize()(torch.stack([crop(image) for image in images]))


# ---------------------------------------------------------------------------------------------- training


def fine_tune(data: str, epochs: int, threads: int) -> tuple[nn.Module, dict[str, Any]]:
    """A minimal training loop (AdamW, cosine, bf16 autocast where native); returns the eval model."""
    prep = Preprocessing()
    loader = load_hymenoptera if data == "hymenoptera" else load_digits
    train, train_labels, val, val_labels, classes = loader(prep)
    say(f"[train] {data}: {len(train)} train / {len(val)} val images, classes {classes}")
    torch.manual_seed(0)
    model = create_model(V2, num_classes=len(classes)).to(memory_format=torch.channels_last)
    batch = 32
    steps = epochs * -(-len(train) // batch)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.15)
    generator = torch.Generator().manual_seed(0)
    use_bf16 = deploy.cpu_has_bf16()
    started = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train), generator=generator)
        losses = []
        for start in range(0, len(order), batch):
            index = order[start : start + batch]
            if len(index) < 2:
                continue
            x = augment([train[i] for i in index], prep, generator, data == "digits")
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                loss = nn.functional.cross_entropy(model(x), train_labels[index], label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        if epoch % 5 == 4 or epoch == epochs - 1:
            model.eval()
            with torch.inference_mode():
                accuracy = (model(val).argmax(1) == val_labels).float().mean().item()
            say(f"[train] epoch {epoch + 1}/{epochs} loss {sum(losses) / len(losses):.3f} val top-1 {accuracy:.1%}")
    model = model.to(memory_format=torch.contiguous_format).eval()
    model.arch, model.class_names, model.preprocessing = V2, classes, prep
    info = {"data": data, "epochs": epochs, "train_images": len(train), "minutes": (time.perf_counter() - started) / 60}
    return model, info


def trained_model(args: argparse.Namespace) -> tuple[nn.Module, dict[str, Any]]:
    """``--weights``, else the cached fine-tuned checkpoint, else fine-tune now (and cache it)."""
    if args.weights:
        return load_model(args.weights), {"weights": str(args.weights)}
    cache = CACHE / f"{V2}_{args.data}_e{args.epochs}.pt"
    if cache.exists() and not args.retrain:
        say(f"[train] using cached {cache.relative_to(ROOT)} (--retrain to train again)")
        model = load_model(cache)
        return model, dict(model.checkpoint_meta.get("fine_tune", {}), weights=str(cache.relative_to(ROOT)))
    model, info = fine_tune(args.data, args.epochs, args.threads)
    ckpt = make_checkpoint(model, V2, model.class_names, model.preprocessing, fine_tune=info)
    save_checkpoint(cache, ckpt)
    return model, info


# ---------------------------------------------------------------------------------------------- sections


def accuracy_section(model: nn.Module, args: argparse.Namespace) -> dict[str, Any]:
    """Top-1 accuracy and agreement with fp32 of every backend/precision on the validation images."""
    prep = model.preprocessing
    loader = load_hymenoptera if args.data == "hymenoptera" else load_digits
    train, _, val, val_labels, classes = loader(prep)
    if list(model.class_names) != classes:
        raise SystemExit(f"the model's classes {model.class_names} are not the {args.data} classes {classes}")
    generator = torch.Generator().manual_seed(1)
    picks = torch.randperm(len(train), generator=generator)[: args.calib]
    calibration = list(center([train[i] for i in picks], prep).split(32))
    with torch.inference_mode():
        reference = model(val)
    rows = [_accuracy_row("torch eager (reference)", reference, reference, val_labels)]
    for backend in deploy.available_backends():
        for precision in deploy.SUPPORTED[backend]:
            if precision == "bf16" and not deploy.cpu_has_bf16():
                continue
            runner = deploy.compile_for_inference(
                model, backend, precision, example_input=val[:1], calibration_data=calibration
            )
            logits = torch.cat([runner(chunk) for chunk in val.split(32)])
            rows.append(_accuracy_row(f"{backend} {precision}", logits, reference, val_labels))
    top2 = reference.topk(2, dim=1).values
    margin = top2[:, 0] - top2[:, 1]
    close = {t: (margin < t).float().mean().item() * 100 for t in (0.1, 0.25)}
    say(f"\n## Accuracy on {len(val_labels)} {args.data} val images (int8 calibrated on {len(picks)} train images)")
    say(
        f"fp32 top-1 margin (top1 - top2 logit): median {margin.median().item():.2f}; "
        f"{close[0.1]:.1f}% of images below 0.1, {close[0.25]:.1f}% below 0.25"
    )
    say(
        format_table(
            rows,
            [
                ("label", "backend"),
                ("top1", "top-1 %"),
                ("delta", "delta vs fp32 (pts)"),
                ("agreement", "top-1 agreement %"),
                ("max_abs_diff", "max|diff| logits"),
            ],
        )
    )
    return {
        "data": args.data,
        "val_images": len(val_labels),
        "calibration_images": len(picks),
        "margin_median": margin.median().item(),
        "pct_margin_below": close,
        "rows": rows,
    }


def _accuracy_row(label: str, logits: Tensor, reference: Tensor, labels: Tensor) -> dict[str, Any]:
    top1 = (logits.argmax(1) == labels).float().mean().item() * 100
    ref_top1 = (reference.argmax(1) == labels).float().mean().item() * 100
    check = deploy.agreement(reference, logits)
    return {
        "label": label,
        "top1": top1,
        "delta": top1 - ref_top1,
        "agreement": check["top1_agreement"] * 100,
        "max_abs_diff": f"{check['max_abs_diff']:.1e}",
    }


def run_bench(model: nn.Module, name: str, args: argparse.Namespace, **kwargs: Any) -> bench.BenchResult:
    progress = (lambda text: print(f"[bench] {text}", file=sys.stderr, flush=True)) if args.verbose else None
    return bench.benchmark(
        model,
        model_name=name,
        threads=args.threads,
        min_time_s=args.time,
        rounds=args.rounds,
        progress=progress,
        **kwargs,
    )


def print_bench(title: str, result: bench.BenchResult) -> None:
    say(f"\n## {title}  (load average at end {result.machine['load_avg_1_5_15']})")
    say(format_table(bench.table_rows(result), bench.TABLE_COLUMNS))
    for label, why in result.skipped.items():
        say(f"skipped {label}: {why}")


def targets(result: bench.BenchResult) -> dict[str, Any]:
    """The issue's targets, from one benchmark run: ratios of medians (and of the fastest calls)."""
    checks: dict[str, Any] = {}

    def ratio(slow: bench.BenchRow, fast: bench.BenchRow) -> tuple[float, float]:
        return round(slow.median_ms / fast.median_ms, 2), round(slow.min_ms / fast.min_ms, 2)

    for batch, need in ((1, 3.5), (32, 2.8)):
        rows = [r for r in result.rows if r.batch_size == batch]
        base = next((r for r in rows if r.label == bench.BASELINE_LABEL), None)
        if base is None:
            continue
        fp32 = [r for r in rows if r.precision == "fp32" and r.backend != "eager"]
        best = min(fp32, key=lambda r: r.median_ms)
        median, fastest = ratio(base, best)
        checks[f"fp32 best vs torchvision, batch {batch}"] = {
            "best": best.label,
            "speedup": median,
            "speedup_of_fastest_calls": fastest,
            "target": need,
            "met": median >= need and best.max_abs_diff <= 1e-3,
            "max_abs_diff_vs_torchvision": best.max_abs_diff,
        }
        reduced = [r for r in rows if r.precision in ("bf16", "int8")]
        if batch == 32 and reduced:
            fast = min(reduced, key=lambda r: r.median_ms)
            median, fastest = ratio(best, fast)
            checks["reduced precision vs fp32 best, batch 32"] = {
                "best": fast.label,
                "speedup": median,
                "speedup_of_fastest_calls": fastest,
                "target": 1.8,
                "met": median >= 1.8,
            }
    say("\n## Targets (ratios of medians from the run above; in brackets: ratio of the fastest calls)")
    for name, check in checks.items():
        verdict = "MET" if check["met"] else "NOT MET"
        say(
            f"{name}: {check['best']} {check['speedup']}x [{check['speedup_of_fastest_calls']}x] "
            f"(target {check['target']}x) {verdict}"
        )
    return checks


def v1_section(v2: nn.Module, args: argparse.Namespace) -> list[dict[str, Any]]:
    """v1 g=3 1.0x and v2 1.0x, every backend/precision of both timed together (interleaved) at 224."""
    candidates: dict[str, Any] = {}
    for name, net in ((V1, create_model(V1).eval()), (V2, v2)):
        eager = copy.deepcopy(net).eval()
        candidates[f"{name} eager"] = lambda x, m=eager: m(x)
        runners, _ = bench.build_candidates(net, 224, threads=args.threads)
        candidates.update({f"{name} {label}": runner for label, runner in runners.items()})
    rows = []
    for batch in (1, 32):
        x = torch.randn(batch, 3, 224, 224)
        with torch.inference_mode():
            timings = bench.time_interleaved(candidates, x, min_time_s=args.time, rounds=args.rounds)
        for label, timing in timings.items():
            rows.append(
                {
                    "label": label,
                    "batch": batch,
                    "median_ms": timing.median_ms,
                    "min_ms": timing.min_ms,
                    "img_per_s": timing.throughput,
                    "others": f"{timing.others_cpu or 0:.0%}" + ("" if timing.clean else " (!)"),
                }
            )
    say(f"\n## {V1} beside {V2}, 224x224, {args.threads} threads, interleaved in one run")
    columns = [("label", "model / backend"), ("batch", "batch"), ("median_ms", "median ms"), ("min_ms", "min ms")]
    say(format_table(rows, [*columns, ("img_per_s", "img/s"), ("others", "others CPU")]))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default="accuracy,speed,v1,sizes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--time", type=float, default=2.0, help="seconds of timing per candidate and shape")
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds (more spreads load spikes)")
    parser.add_argument("--weights", type=Path, help="our checkpoint of a trained shufflenet_v2_x1_0")
    parser.add_argument("--data", choices=["hymenoptera", "digits"], default=None)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--retrain", action="store_true")
    parser.add_argument("--calib", type=int, default=128, help="calibration images for int8")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--sizes", default="128,160,224,288")
    parser.add_argument("--torch-compile", action="store_true", help="add a torch.compile row (slow to build)")
    parser.add_argument("--json", type=Path, help="write every table as JSON")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    args.data = args.data or ("hymenoptera" if HYMENOPTERA.is_dir() else "digits")
    sections = args.sections.split(",")
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    machine = bench.machine_info(args.threads)
    say(
        f"# {machine['cpu']}, {machine['logical_cpus']} logical CPUs, {args.threads} threads, "
        f"native bf16 {machine['cpu_bf16']}"
    )
    say(f"# load average at start {machine['load_avg_1_5_15']}; versions {machine['versions']}")
    report: dict[str, Any] = {"machine": machine, "args": {k: str(v) for k, v in vars(args).items()}}

    model = create_model(V2).eval()
    if "accuracy" in sections or args.weights:
        model, info = trained_model(args)
        report["model"] = info
        if "accuracy" in sections:
            report["accuracy"] = accuracy_section(model, args)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if "speed" in sections:
        result = run_bench(model, V2, args, batch_sizes=batch_sizes, torch_compile=args.torch_compile)
        weights = "trained weights" if "model" in report else "random weights"
        print_bench(f"{V2} 224x224, {args.threads} threads ({weights})", result)
        report["speed"] = result.to_dict()
        report["targets"] = targets(result)
    if "v1" in sections:
        report["v1"] = v1_section(model, args)
    if "sizes" in sections:
        rows = []
        for size in (int(s) for s in args.sizes.split(",")):
            result = run_bench(
                model,
                V2,
                args,
                batch_sizes=[8],
                img_size=size,
                backends=["onnxruntime", "openvino"],
                precisions=["fp32", "int8", "bf16"],
            )
            rows.extend(result.rows)
        combined = bench.BenchResult(rows=rows, machine=bench.machine_info(args.threads), settings={})
        table = [
            {
                "label": r.label,
                "img_size": r.img_size,
                "median_ms": r.median_ms,
                "img_per_s": r.img_per_s,
                "x": r.speedup_vs_baseline,
                "others": f"{r.others_cpu or 0:.0%}" + ("" if r.clean else " (!)"),
            }
            for r in rows
        ]
        say(f"\n## {V2} throughput vs input size, batch 8 (load average {combined.machine['load_avg_1_5_15']})")
        columns = [("label", "backend"), ("img_size", "size"), ("median_ms", "median ms"), ("img_per_s", "img/s")]
        say(format_table(table, [*columns, ("x", "x tv"), ("others", "others CPU")]))
        report["sizes"] = combined.to_dict()
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
        say(f"\nwrote {args.json}")
    say(f"# load average at end {[round(v, 2) for v in os.getloadavg()]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
