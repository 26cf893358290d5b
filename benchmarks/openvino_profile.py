"""Where OpenVINO spends its time in ShuffleNetV2 1.0x: per-layer-type profile of both shuffle exports.

Exports the model twice, with each v2 unit's concat + channel shuffle as the paper writes it (Concat,
Reshape -> Transpose -> Reshape; ``fuse_shuffle=False``) and as one interleaving Concat (the default),
quantizes both to int8 the way ``compile_for_inference`` does, and runs each precision in one OpenVINO
request with ``PERF_COUNT`` on. Prints the median latency and, per (layer type, kernel), the mean time per
call, in one table per precision. One stream, ``--threads`` threads (default 1, so the kernel times add up
to the latency), every variant timed in interleaved rounds in this one process.

    .venv/bin/python benchmarks/openvino_profile.py [--batch 16] [--threads 1] [--rounds 5] [--top 8]
"""

from __future__ import annotations

import argparse
import collections
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from shufflenet import create_model, deploy
from shufflenet.cli.common import format_table

FORMS = {"transpose": False, "interleave": True}  # label -> fuse_shuffle
PRECISIONS = ("fp32", "bf16", "int8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=3, help="timed calls per variant and round")
    parser.add_argument("--top", type=int, default=8, help="layer types listed per variant")
    args = parser.parse_args()

    import openvino as ov

    torch.manual_seed(0)
    model = create_model("shufflenet_v2_x1_0").eval()
    calibration = [torch.randn(8, 3, 224, 224) for _ in range(4)]
    precisions = [p for p in PRECISIONS if p != "bf16" or deploy.cpu_has_bf16()]
    core = ov.Core()
    x = np.random.default_rng(0).standard_normal((args.batch, 3, 224, 224), dtype=np.float32)
    requests = {}
    with tempfile.TemporaryDirectory() as tmp:
        for form, fuse in FORMS.items():
            fp32 = deploy.export_onnx(model, Path(tmp) / f"{form}.onnx", dynamic_batch=True, fuse_shuffle=fuse)
            int8 = deploy.quantize_onnx(fp32, Path(tmp) / f"{form}_int8.onnx", calibration)
            for precision in precisions:
                net = core.read_model(str(int8 if precision == "int8" else fp32))
                net.reshape({net.inputs[0].get_any_name(): [args.batch, 3, 224, 224]})
                config = {
                    "INFERENCE_NUM_THREADS": args.threads,
                    "NUM_STREAMS": 1,
                    "PERF_COUNT": True,
                    "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                }
                request = core.compile_model(net, "CPU", config).create_infer_request()
                request.infer({0: x})
                requests[(precision, form)] = request

    times: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
    layers: dict[tuple[str, str], collections.Counter] = collections.defaultdict(collections.Counter)
    for _ in range(args.rounds):
        for key, request in requests.items():
            request.infer({0: x})
            for _ in range(args.calls):
                start = time.perf_counter()
                request.infer({0: x})
                times[key].append(time.perf_counter() - start)
                for info in request.profiling_info:
                    if info.status == info.Status.EXECUTED:
                        layers[key][f"{info.node_type} ({info.exec_type})"] += info.real_time.total_seconds()

    calls = args.rounds * args.calls
    print(f"# ShuffleNetV2 1.0x, 224x224, batch {args.batch}, {args.threads} thread(s), one OpenVINO stream")
    print(f"# OpenVINO {ov.__version__}; medians of {calls} calls per variant, interleaved")
    for precision in precisions:
        base = statistics.median(times[(precision, "transpose")])
        rows = []
        for form in FORMS:
            key = (precision, form)
            median = statistics.median(times[key])
            total = sum(layers[key].values())
            rows.append({"what": f"{form}: latency", "ms": 1e3 * median, "share": "", "speed-up": base / median})
            for name, seconds in layers[key].most_common(args.top):
                rows.append({"what": f"  {name}", "ms": 1e3 * seconds / calls, "share": f"{seconds / total:.0%}"})
        print(f"\n## {precision}")
        columns = [("what", "variant / layer type (kernel)"), ("ms", "ms"), ("share", "share")]
        print(format_table(rows, [*columns, ("speed-up", "x transpose")]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
