"""Int8 accuracy and speed per CPU kind: fp32 vs int8 top-1 and img/s for onnxruntime and openvino.

Native (this CPU):
    .venv/bin/python benchmarks/int8_per_cpu.py measure --run runs/demo [--out /tmp/int8]
quantizes RUN/best.pt with `shufflenet quantize` settings for each backend and tool (ONNX Runtime's quantizer,
and NNCF to an OpenVINO IR; calibrated on the run's
training split), prints top-1 and throughput (batch 64, median of interleaved rounds, same process), and
saves the validation images (val_x.npy, val_y.npy) and int8 files for the emulated check.

AVX2 without VNNI, emulated (accuracy only; TCG is far too slow to time):
    .venv/bin/python benchmarks/int8_per_cpu.py quantize-avx2 --run runs/demo --out /tmp/int8
    qemu-x86_64 -cpu Haswell .venv/bin/python benchmarks/int8_per_cpu.py ort-accuracy --out /tmp/int8
The first writes the file the product makes on an AVX2 CPU (7-bit weights) beside the full-range one; the
second runs both in onnxruntime on the emulated CPU (numpy + onnxruntime only, no torch). The same for NNCF:
    .venv/bin/python benchmarks/int8_per_cpu.py nncf-avx2 --run runs/demo --out /tmp/int8
    qemu-x86_64 -cpu Haswell .venv/bin/python benchmarks/int8_per_cpu.py ov-accuracy --out /tmp/int8
(OpenVINO IRs with and without NNCF's overflow fix, run one image at a time by OpenVINO on the emulated CPU).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np


def _val(run: Path, out: Path):
    import torch

    from shufflenet.checkpoints import load_model
    from shufflenet.deploy.calibration import load_images, run_split

    model = load_model(run / "best.pt", device="cpu")
    _, _, val = run_split(run / "best.pt")
    images = load_images(val, model.preprocessing, 64, "validation images")  # labels of the images read
    x = torch.cat(images.batches)
    y = images.labels.numpy()
    np.save(out / "val_x.npy", x.numpy())
    np.save(out / "val_y.npy", y)
    return model, x, y


def _throughput(function, x, rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(0, len(x), 64):
            function(x[i : i + 64])
        times.append(time.perf_counter() - start)
    return len(x) / statistics.median(times)


def measure(run: Path, out: Path) -> None:
    import torch

    from shufflenet import deploy

    model, x, y = _val(run, out)
    features = deploy.cpu_features()
    print(f"CPU: {deploy.describe_cpu(features)}")
    rows = []
    for backend, suffix in (("onnxruntime", ".onnx"), ("openvino", ".onnx"), ("openvino", ".xml")):
        path = out / f"int8-{backend}{suffix}"  # .xml: OpenVINO IR by NNCF; .onnx: ONNX Runtime's quantizer
        result = deploy.quantize_run(run / "best.pt", backend, path, max_drop=100, overwrite=True)
        fp32 = deploy.compile_for_inference(model, backend, "fp32", example_input=x[:1])
        int8 = deploy.compile_for_inference(path, backend)
        speeds = {"fp32": [], "int8": []}
        for _ in range(9):  # interleaved, so a shared CPU's load hits both alike
            for name, runner in (("fp32", fp32), ("int8", int8)):
                speeds[name].append(_throughput(runner, x, 1))
        fp32_top1 = (torch.cat([fp32(x[i : i + 64]) for i in range(0, len(x), 64)]).argmax(1).numpy() == y).mean()
        rows.append(
            (
                f"{backend} ({result.settings['tool']})",
                fp32_top1,
                result.int8_top1,
                *(statistics.median(speeds[k]) for k in ("fp32", "int8")),
            )
        )
    print(
        f"{'backend (tool)':37s} {'fp32 top-1':>10s} {'int8 top-1':>10s} {'fp32 img/s':>10s} {'int8 img/s':>10s} ratio"
    )
    for backend, a, b, s32, s8 in rows:
        print(f"{backend:37s} {a:10.3f} {b:10.3f} {s32:10.0f} {s8:10.0f} {s8 / s32:5.2f}x")


def quantize_avx2(run: Path, out: Path) -> None:
    from shufflenet import deploy
    from shufflenet.deploy.calibration import CALIBRATION_SIZE, load_batches, run_split, stratified_sample

    model, _, _ = _val(run, out)
    calibration = load_batches(stratified_sample(run_split(run / "best.pt")[1], CALIBRATION_SIZE), model.preprocessing)
    fp32 = deploy.export_onnx(model, out / "fp32.onnx", dynamic_batch=True, overwrite=True)
    for reduce_range in (False, True):
        name = "int8-7bit.onnx" if reduce_range else "int8-8bit.onnx"
        deploy.quantize_onnx(fp32, out / name, calibration, "qoperator", reduce_range=reduce_range)
    print(f"wrote {out}/fp32.onnx, int8-8bit.onnx, int8-7bit.onnx, val_x.npy, val_y.npy")


def nncf_avx2(run: Path, out: Path) -> None:
    from dataclasses import replace

    from shufflenet import deploy
    from shufflenet.deploy.calibration import CALIBRATION_SIZE, load_batches, run_split, stratified_sample
    from shufflenet.deploy.ir import nncf_quantize, save_ir

    model, _, _ = _val(run, out)
    calibration = load_batches(stratified_sample(run_split(run / "best.pt")[1], CALIBRATION_SIZE), model.preprocessing)
    fp32 = deploy.export_onnx(model, out / "fp32.onnx", dynamic_batch=True, overwrite=True)
    avx2 = deploy.choose_int8_settings("openvino", {"avx2": True}, tool="nncf")  # what an AVX2 CPU gets
    for name, settings in (("nncf-fix", avx2), ("nncf-nofix", replace(avx2, overflow_fix="disable"))):
        save_ir(nncf_quantize(fp32, [b.numpy() for b in calibration], settings), out / f"int8-{name}.xml", {})
    print(f"wrote {out}/int8-nncf-fix.xml (overflow fix, chosen for AVX2), int8-nncf-nofix.xml, val_x/y.npy")


def ov_accuracy(out: Path) -> None:
    import openvino as ov
    from numpy._core._multiarray_umath import __cpu_features__ as cpu

    x, y = np.load(out / "val_x.npy"), np.load(out / "val_y.npy")
    print("numpy CPUID:", ", ".join(k for k in ("AVX2", "AVX512F", "AVX512VNNI") if cpu.get(k)) or "none")
    core = ov.Core()
    reference = None
    for name in ("fp32.onnx", "int8-nncf-nofix.xml", "int8-nncf-fix.xml"):
        compiled = core.compile_model(
            str(out / name), "CPU", {"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32"}
        )
        logits = np.concatenate([compiled(x[i : i + 1])[0] for i in range(len(x))])
        reference = logits if reference is None else reference
        agree = (logits.argmax(1) == reference.argmax(1)).mean()
        print(f"{name:20s} top-1 {(logits.argmax(1) == y).mean():.3f}  agreement with fp32 {agree:.3f}", flush=True)


def ort_accuracy(out: Path) -> None:
    import onnxruntime as ort
    from numpy._core._multiarray_umath import __cpu_features__ as cpu

    x, y = np.load(out / "val_x.npy"), np.load(out / "val_y.npy")
    print("numpy CPUID:", ", ".join(k for k in ("AVX2", "AVX512F", "AVX512VNNI") if cpu.get(k)) or "none")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    reference = None
    for name in ("fp32", "int8-8bit", "int8-7bit"):
        session = ort.InferenceSession(str(out / f"{name}.onnx"), options, providers=["CPUExecutionProvider"])
        logits = np.concatenate([session.run(None, {"input": x[i : i + 64]})[0] for i in range(0, len(x), 64)])
        reference = logits if reference is None else reference
        agree = (logits.argmax(1) == reference.argmax(1)).mean()
        print(f"{name:10s} top-1 {(logits.argmax(1) == y).mean():.3f}  agreement with fp32 {agree:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["measure", "quantize-avx2", "ort-accuracy", "nncf-avx2", "ov-accuracy"])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/int8"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.command == "measure":
        measure(args.run, args.out)
    elif args.command == "quantize-avx2":
        quantize_avx2(args.run, args.out)
    elif args.command == "nncf-avx2":
        nncf_avx2(args.run, args.out)
    elif args.command == "ov-accuracy":
        ov_accuracy(args.out)
    else:
        ort_accuracy(args.out)


if __name__ == "__main__":
    main()
