"""Where ShuffleNetV2+ spends its CPU time, beside its share of FLOPs and MAC: does G4 hold for SE and h-swish?

Runs a V2+ model (BatchNorm folded, as deployed; eval mode, channels_last unless ``--nchw``, one thread by
default) under torch.profiler and sums each ATen operator's own CPU time into parts of the network:
convolutions, the squeeze-excitation (its global mean, its two 1x1 convs on 1x1 maps, hard-sigmoid and the
scaling multiply), h-swish, ReLU, the concat + channel shuffle copies, the head's linear layers and the global
pool. FLOPs and MAC per part come from shufflenet.analysis. Time shares are ratios measured in one process, so
they survive a busy machine better than absolute speeds (the run's load average is printed).

    .venv/bin/python benchmarks/v2_plus_cost.py [--model shufflenet_v2_plus_small] [--batch 8] [--calls 20]
"""

from __future__ import annotations

import argparse
import collections
import os

import torch
from torch.profiler import ProfilerActivity, profile

from shufflenet import create_model
from shufflenet.analysis import analyze
from shufflenet.cli.common import format_table
from shufflenet.deploy.folding import fold_batchnorm

PARTS = ("convolutions", "SE", "h-swish", "ReLU", "concat + shuffle", "linear", "global pool", "other")


def time_part(name: str, shapes: list) -> str:
    """The part of the network an ATen operator (with its input shapes) belongs to."""
    spatial = list(shapes[0][2:]) if shapes and len(shapes[0]) == 4 else None
    if "conv" in name:
        return "SE" if spatial == [1, 1] else "convolutions"
    if "hardswish" in name:
        return "h-swish"
    if "hardsigmoid" in name or name == "aten::mul":
        return "SE"
    if name in ("aten::mean", "aten::sum", "aten::div_"):  # a mean runs as sum, then div_
        return "global pool" if shapes and shapes[0][1:] == [1280, *shapes[0][2:]] and spatial != [1, 1] else "SE"
    if "relu" in name or "clamp_min" in name:
        return "ReLU"
    if name in ("aten::cat", "aten::clone", "aten::copy_", "aten::reshape", "aten::chunk", "aten::split"):
        return "concat + shuffle"
    if name in ("aten::linear", "aten::addmm", "aten::mm", "aten::matmul"):
        return "linear"
    return "other"


def count_part(layer_name: str, layer_type: str) -> str:
    """The part of the network an analysis row (a module) belongs to."""
    if "head_se" in layer_name or ".squeeze" in layer_name or ".expand" in layer_name or layer_type == "SqueezeExcite":
        return "SE"
    return {
        "Conv2d": "convolutions",
        "Hardswish": "h-swish",
        "ReLU": "ReLU",
        "PlusUnit": "concat + shuffle",
        "Linear": "linear",
        "ShuffleNetV2Plus": "global pool",
    }.get(layer_type, "other")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shufflenet_v2_plus_small")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--nchw", action="store_true", help="contiguous NCHW instead of channels_last (the default)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = fold_batchnorm(create_model(args.model)).eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    stats = analyze(model, (args.size, args.size))
    if not args.nchw:  # as training and the torch backend run on CPUs (much faster depthwise convs)
        model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    flops, mac = collections.Counter(), collections.Counter()
    for layer in stats.layers:
        flops[count_part(layer.name, layer.type)] += layer.flops
        mac[count_part(layer.name, layer.type)] += layer.mac
    load_before = os.getloadavg()[0]
    with torch.inference_mode():
        for _ in range(3):
            model(x)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            for _ in range(args.calls):
                model(x)
    seconds = collections.Counter()
    for event in prof.key_averages(group_by_input_shape=True):
        seconds[time_part(event.key, event.input_shapes)] += event.self_cpu_time_total / 1e6
    total_time, total_flops, total_mac = sum(seconds.values()), sum(flops.values()), sum(mac.values())
    rows = [
        {
            "part": part,
            "time": 100 * seconds[part] / total_time,
            "flops": 100 * flops[part] / total_flops,
            "mac": 100 * mac[part] / total_mac,
            "time_per_flops": seconds[part] / total_time / (flops[part] / total_flops) if flops[part] else None,
        }
        for part in PARTS
        if seconds[part] or flops[part] or mac[part]
    ]
    columns = [("part", "part"), ("time", "time %"), ("flops", "FLOPs %"), ("mac", "MAC %")]
    print(format_table(rows, [*columns, ("time_per_flops", "time share / FLOPs share")]))
    per_image_ms = 1e3 * total_time / (args.calls * args.batch)
    print(
        f"\n{args.model}, batch {args.batch} at {args.size}x{args.size}, {args.threads} thread(s), BN folded, "
        f"{'NCHW' if args.nchw else 'channels_last'}: "
        f"{per_image_ms:.2f} ms of operator time per image; {stats.mflops:.1f} MFLOPs, {stats.mmac:.1f} M MAC; "
        f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after ({os.cpu_count()} CPUs)."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
