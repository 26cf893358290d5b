"""Mobile runtimes on this CPU: ncnn and LiteRT beside torch, onnxruntime and torchvision eager; int8 accuracy.

Sections (one process; candidates timed in interleaved rounds by shufflenet.bench, medians):

* speed     v2 1x and v1 g3 1x at 224, batches 1/8/32, fp32 of every installed runtime (ncnn, litert
            included) beside torchvision eager (v2) / our eager model (v1).
* quick     v2 1x fp32 only, a fixed number of interleaved rounds and no load rejection (busy machines).
* int8      TFLite int8 vs fp32 top-1 on the digits demo's validation images (``--weights`` from
            ``shufflenet demo``), calibrated on its training images; the issue asks for <= 1 point.

    python benchmarks/mobile.py [--sections speed,int8] [--threads 2] [--time 2] [--weights runs/demo/best.pt]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from shufflenet import bench, create_model, deploy
from shufflenet.checkpoints import load_model
from shufflenet.cli.common import format_table

BACKENDS = ["torch", "onnxruntime", "openvino", "ncnn", "litert"]


def speed(args: argparse.Namespace) -> None:
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = create_model(name).eval()
        result = bench.benchmark(
            model,
            model_name=name,
            batch_sizes=(1, 8, 32),
            threads=args.threads,
            backends=[b for b in BACKENDS if deploy.backend_available(b)],
            precisions=["fp32"],
            min_time_s=args.time,
            progress=lambda text: print(f"  {text}", file=sys.stderr),
        )
        print(f"\n{name}, 224x224, {args.threads} threads, {bench.cpu_model_name()}")
        print(format_table(bench.table_rows(result), bench.TABLE_COLUMNS))
        for label, reason in result.skipped.items():
            print(f"  skipped {label}: {reason}")


def quick(args: argparse.Namespace) -> None:
    """Median img/s of each runtime, interleaved rounds, no load rejection (for a busy machine)."""
    import statistics
    import time

    from torchvision.models import shufflenet_v2_x1_0

    torch.manual_seed(0)
    model = create_model("shufflenet_v2_x1_0").eval()
    baseline = shufflenet_v2_x1_0().eval()
    baseline.load_state_dict(model.state_dict())
    example = torch.randn(1, 3, 224, 224)
    runners = {"torchvision eager": lambda x: baseline(x)}
    for backend in [b for b in BACKENDS if deploy.backend_available(b)]:
        runners[backend] = deploy.compile_for_inference(model, backend, example_input=example, threads=args.threads)
    rows = []
    for batch in (1, 8, 32):
        x = torch.randn(batch, 3, 224, 224)
        times: dict[str, list[float]] = {name: [] for name in runners}
        with torch.inference_mode():
            for run in runners.values():
                run(x)  # warm-up
            for _ in range(args.rounds):
                for name, run in runners.items():
                    start = time.perf_counter()
                    run(x)
                    times[name].append(time.perf_counter() - start)
        base = batch / statistics.median(times["torchvision eager"])
        for name, values in times.items():
            ips = batch / statistics.median(values)
            rows.append({"runtime": name, "batch": batch, "img/s": f"{ips:.1f}", "x eager": f"{ips / base:.2f}"})
    print(f"\nshufflenet_v2_x1_0 fp32, 224x224, {args.threads} threads, {args.rounds} interleaved rounds, medians")
    print(format_table(rows, [(k, k) for k in ("runtime", "batch", "img/s", "x eager")]))


def int8(args: argparse.Namespace) -> None:
    from shufflenet.data import list_image_paths, load_image
    from shufflenet.deploy.formats.litert import export_tflite
    from shufflenet.deploy.runtimes.litert import load_tflite

    model = load_model(args.weights)
    root = Path(args.weights).parent / "data"
    transform = model.preprocessing.eval_transform()

    def load(split: str) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = [], []
        for index, name in enumerate(model.class_names):
            for path in list_image_paths([root / split / name]):
                images.append(transform(load_image(path)))
                labels.append(index)
        return torch.stack(images), torch.tensor(labels)

    train_x, _ = load("train")
    val_x, val_y = load("val")
    order = torch.randperm(len(train_x), generator=torch.Generator().manual_seed(0))
    calibration = list(train_x[order[: args.calibration]].split(32))
    with torch.inference_mode():
        reference = model(val_x)
    top1 = (reference.argmax(1) == val_y).float().mean().item()
    rows = [{"model": "PyTorch fp32", "top-1": f"{top1:.2%}", "agree": "100%"}]
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "int8"):
            path = export_tflite(
                model,
                Path(tmp) / f"{precision}.tflite",
                precision=precision,
                calibration_data=calibration if precision == "int8" else None,
                verify_export=False,
            ).path
            logits = load_tflite(path)(val_x)
            rows.append(
                {
                    "model": f"LiteRT {precision}",
                    "top-1": f"{(logits.argmax(1) == val_y).float().mean().item():.2%}",
                    "agree": f"{(logits.argmax(1) == reference.argmax(1)).float().mean().item():.2%}",
                    "max|diff|": f"{(logits - reference).abs().max().item():.1e}",
                    "size KiB": path.stat().st_size / 1024,
                }
            )
    print(f"\nint8 on {len(val_y)} validation images ({args.weights}), {args.calibration} calibration images")
    columns = [(k, k) for k in ("model", "top-1", "agree", "max|diff|", "size KiB")]
    print(format_table(rows, columns))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="speed,int8")
    parser.add_argument("--models", default="shufflenet_v2_x1_0,shufflenet_v1_g3_x1_0")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--time", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=7, help="quick: interleaved rounds per batch size")
    parser.add_argument("--weights", default="runs/demo/best.pt")
    parser.add_argument("--calibration", type=int, default=256, help="training images to calibrate int8 on")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sections = args.sections.split(",")
    if "int8" in sections:
        int8(args)
    if "speed" in sections:
        speed(args)
    if "quick" in sections:
        quick(args)


if __name__ == "__main__":
    main()
