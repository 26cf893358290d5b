"""The ShuffleNet V2 paper's four guidelines (Ma et al. 2018, Sec. 2), measured on this machine.

The paper validates each guideline with a micro-benchmark: a small block stacked 10 times on a 56x56 input,
FLOPs held fixed across the rows of an experiment, run at channel multipliers x1/x2/x4 (Tables 1-4); Table 8
then compares whole networks. This module rebuilds those benchmarks as data (:func:`experiment_specs`), builds
them (:func:`build_model`), counts FLOPs and MAC with :mod:`shufflenet.analysis` (:func:`count_spec`), times
them (:func:`run_guidelines`) and compares the trends with the paper's GPU and ARM columns (:func:`verdicts`).

Choices the paper leaves open (documented in docs/guidelines.md):

* Blocks are bare convolutions without bias or BatchNorm (the paper runs with BN fused away); G1-G3 have no
  activation, so FLOPs and MAC are exactly the paper's formulas.
* G3's parallel blocks feed the same input to k 1x1 convs of c -> c/k channels and concatenate them (equal FLOPs
  without changing c); series blocks use k convs of c/sqrt(k) channels.
* G4's bottleneck is ResNet's: c -> c/4 (1x1), c/4 -> c/4 (3x3), c/4 -> c (1x1), ReLU after each conv (the last
  after the shortcut add).
* Rows of one experiment are timed round-robin, repeat by repeat, so that load from other processes falls on all
  rows alike; throughput is the median over repeats with the interquartile range as spread.
"""

from __future__ import annotations

import logging
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from statistics import median, quantiles
from typing import Any

import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor, nn

from shufflenet import tables
from shufflenet.analysis import analyze, mac_lower_bound

logger = logging.getLogger(__name__)

EXPERIMENTS: tuple[str, ...] = ("G1", "G2", "G3", "G4", "v1_vs_v2")
PROFILES: tuple[str, ...] = ("arm", "gpu")
TITLES: dict[str, str] = {
    "G1": "equal channel width minimises MAC",
    "G2": "excessive group convolution increases MAC",
    "G3": "network fragmentation reduces parallelism",
    "G4": "element-wise operations are not negligible",
    "v1_vs_v2": "ShuffleNet v2 is faster than v1 (g=3) at equal width",
}
DEFAULT_BATCH_SIZE = 8  # the paper's GPU batch (Fig. 1); big enough that per-call overhead does not dominate

G4_ROWS: dict[tuple[bool, bool], str] = {
    (True, True): "ReLU+shortcut",
    (True, False): "ReLU only",
    (False, True): "shortcut only",
    (False, False): "no ReLU/shortcut",
}
G3_ROWS: dict[str, tuple[str, int]] = {  # name -> (arrangement, number of 1x1 convs)
    "1-fragment": ("series", 1),
    "2-fragment-series": ("series", 2),
    "4-fragment-series": ("series", 4),
    "2-fragment-parallel": ("parallel", 2),
    "4-fragment-parallel": ("parallel", 4),
}

# The paper's claims as (faster row, slower row) pairs; the first of each list is the headline comparison.
CLAIMS: dict[str, list[tuple[str, str]]] = {
    "G1": [("1:1", "1:12"), ("1:1", "1:2"), ("1:2", "1:6"), ("1:6", "1:12")],
    "G2": [("g=1", "g=8"), ("g=1", "g=2"), ("g=2", "g=4"), ("g=4", "g=8")],
    "G3": [
        ("1-fragment", "4-fragment-parallel"),
        ("1-fragment", "2-fragment-series"),
        ("2-fragment-series", "4-fragment-series"),
        ("1-fragment", "2-fragment-parallel"),
        ("2-fragment-parallel", "4-fragment-parallel"),
    ],
    "G4": [("no ReLU/shortcut", "ReLU+shortcut"), ("shortcut only", "ReLU+shortcut"), ("ReLU only", "ReLU+shortcut")],
}


@dataclass(frozen=True)
class BenchSpec:
    """One row of one experiment at one channel multiplier: what to build and what the paper measured there.

    ``kind`` is ``pair`` (G1: c1 -> c2 -> c1), ``group`` (G2), ``series`` / ``parallel`` (G3), ``bottleneck``
    (G4) or ``model`` (a registered network, v1_vs_v2). For v1_vs_v2, ``multiplier`` is the model width.
    """

    experiment: str
    name: str
    multiplier: float
    kind: str
    channels: tuple[int, ...] = ()
    groups: int = 1
    convs: int = 1
    relu: bool = False
    shortcut: bool = False
    model: str = ""
    input_size: int = tables.V2_GUIDELINE_INPUT_SIZE
    paper_gpu: float | None = None
    paper_arm: float | None = None
    paper_mflops: float | None = None

    @property
    def in_chans(self) -> int:
        """Channels of the input tensor."""
        return 3 if self.kind == "model" else self.channels[0]

    @property
    def label(self) -> str:
        """Short description of the widths (e.g. ``22/44``, ``c=90 g=2``, ``3x45``)."""
        if self.kind == "pair":
            return "/".join(map(str, self.channels))
        if self.kind == "group":
            return f"c={self.channels[0]} g={self.groups}"
        if self.kind == "series":
            return f"{self.convs}x{self.channels[0]}" if self.convs > 1 else f"c={self.channels[0]}"
        if self.kind == "parallel":
            return f"{self.channels[0]}->{self.convs}x{self.channels[1]}"
        if self.kind == "bottleneck":
            return f"{self.channels[0]}-{self.channels[1]}-{self.channels[0]}"
        return f"{self.model.split('_')[1]} x{self.multiplier:g}"


@dataclass
class GuidelineConfig:
    """Settings of one run; :meth:`quick` gives the ~1 minute variant (x1 only, fewer and shorter repeats)."""

    device: str = "cpu"
    profile: str | None = None  # paper widths to use: "arm" or "gpu"; None picks by device
    multipliers: tuple[float, ...] = tables.V2_GUIDELINE_MULTIPLIERS
    model_widths: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)
    experiments: tuple[str, ...] = EXPERIMENTS
    batch_size: int = DEFAULT_BATCH_SIZE
    repeats: int = 7
    warmup: int = 3
    min_time: float = 0.3  # seconds per timed repeat; short calls are looped until they take this long
    threads: int | None = None  # torch intra-op threads; None keeps torch's setting
    mkldnn: bool = True  # False switches PyTorch's oneDNN CPU kernels off (convs then run as plain GEMMs)
    input_size: int = tables.V2_GUIDELINE_INPUT_SIZE
    model_input_size: int = 224
    blocks: int = tables.V2_GUIDELINE_BLOCKS
    tolerance: float = 0.03  # a claim holds when the faster row wins by more than this (or the noise)

    @classmethod
    def quick(cls, **overrides: Any) -> GuidelineConfig:
        """The quick variant: x1 only, width 1.0 only, 3 repeats of at least 0.1 s."""
        base = {"multipliers": (1,), "model_widths": (1.0,), "repeats": 3, "warmup": 2, "min_time": 0.1}
        return cls(**{**base, **overrides})

    def resolved_profile(self) -> str:
        """The width profile in effect: the GPU widths on CUDA, the (smaller) ARM widths otherwise."""
        profile = self.profile or ("gpu" if str(self.device).startswith("cuda") else "arm")
        if profile not in PROFILES:
            raise ValueError(f"profile {profile!r} is not one of {PROFILES}")
        return profile


# ---------------------------------------------------------------- definitions as data


def _paper(figures: dict[str, tuple], multiplier: float) -> tuple[float | None, float | None]:
    mults = tables.V2_GUIDELINE_MULTIPLIERS
    if multiplier not in mults:
        return None, None
    i = mults.index(multiplier)
    return figures["gpu"][i], figures["arm"][i]


def _scale(channels: int, multiplier: float) -> int:
    return max(1, round(channels * multiplier))


def _divisible(channels: int, groups: int, dense_channels: int) -> int:
    """``channels`` rounded to a multiple of ``groups``, to the side whose FLOPs are nearer the dense row's."""
    if channels % groups == 0:
        return channels
    low = channels // groups * groups
    return min((low, low + groups), key=lambda c: abs(c * c / groups - dense_channels**2))


def experiment_specs(
    experiment: str,
    profile: str = "arm",
    multipliers: Sequence[float] = tables.V2_GUIDELINE_MULTIPLIERS,
    input_size: int = tables.V2_GUIDELINE_INPUT_SIZE,
    model_widths: Sequence[float] = (0.5, 1.0, 1.5, 2.0),
    model_input_size: int = 224,
) -> list[BenchSpec]:
    """The rows of ``experiment`` (one of :data:`EXPERIMENTS`) at each multiplier, widths from the paper."""
    if profile not in PROFILES:
        raise ValueError(f"profile {profile!r} is not one of {PROFILES}")
    specs: list[BenchSpec] = []
    if experiment == "v1_vs_v2":
        return _model_specs(model_widths, model_input_size)
    for m in multipliers:
        if experiment == "G1":
            for name, row in tables.V2_TABLE1_G1.items():
                c1, c2 = (_scale(c, m) for c in row[f"{profile}_channels"])
                gpu, arm = _paper(row, m)
                specs.append(BenchSpec("G1", name, m, "pair", (c1, c2), paper_gpu=gpu, paper_arm=arm))
        elif experiment == "G2":
            row1 = tables.V2_TABLE2_G2[1]
            for g, row in tables.V2_TABLE2_G2.items():
                c = _divisible(_scale(row[f"{profile}_channels"], m), g, _scale(row1[f"{profile}_channels"], m))
                gpu, arm = _paper(row, m)
                specs.append(BenchSpec("G2", f"g={g}", m, "group", (c,), groups=g, paper_gpu=gpu, paper_arm=arm))
        elif experiment == "G3":
            c = _scale(tables.V2_TABLE3_CHANNELS[profile][0], m)
            for name, (arrangement, k) in G3_ROWS.items():
                gpu, arm = _paper(tables.V2_TABLE3_G3[name], m)
                # Equal FLOPs: k series convs of width c/sqrt(k); k parallel convs of c -> c/k, concatenated.
                channels = (round(c / math.sqrt(k)),) if arrangement == "series" else (c, c // k)
                specs.append(BenchSpec("G3", name, m, arrangement, channels, convs=k, paper_gpu=gpu, paper_arm=arm))
        elif experiment == "G4":
            c = _scale(tables.V2_TABLE4_CHANNELS[0], m)
            for (relu, shortcut), name in G4_ROWS.items():
                gpu, arm = _paper(tables.V2_TABLE4_G4[(relu, shortcut)], m)
                spec = BenchSpec("G4", name, m, "bottleneck", (c, max(1, c // 4)), relu=relu, shortcut=shortcut)
                specs.append(replace(spec, paper_gpu=gpu, paper_arm=arm))
        else:
            raise ValueError(f"unknown experiment {experiment!r}; choose from {EXPERIMENTS}")
    return [replace(s, input_size=input_size) for s in specs]


def _model_specs(widths: Sequence[float], input_size: int) -> list[BenchSpec]:
    from shufflenet.models import list_models, model_info

    by_width: dict[str, dict[float, str]] = {"v1": {}, "v2": {}}
    for name in list_models("shufflenet_v1_g3_*"):
        by_width["v1"][model_info(name).width_mult] = name
    for name in list_models("shufflenet_v2_*"):
        by_width["v2"][model_info(name).width_mult] = name
    specs = []
    for width in widths:
        if width not in by_width["v1"] or width not in by_width["v2"]:
            both = sorted(set(by_width["v1"]) & set(by_width["v2"]))
            raise ValueError(f"no ShuffleNet v1 g=3 / v2 pair at width {width}; the registry has both at {both}")
        for family in ("v1", "v2"):  # v1 first: v2's relative throughput is then its speed-up over v1
            name = by_width[family][width]
            paper = tables.V2_TABLE8_SHUFFLENET.get(name, {})
            specs.append(
                BenchSpec(
                    "v1_vs_v2",
                    name,
                    width,
                    "model",
                    model=name,
                    input_size=input_size,
                    paper_gpu=paper.get("gpu"),
                    paper_arm=paper.get("arm"),
                    paper_mflops=paper.get("mflops"),
                )
            )
    return specs


# ---------------------------------------------------------------- builders


def _conv(c_in: int, c_out: int, kernel: int = 1, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, groups=groups, bias=False)


class ParallelConvs(nn.Module):
    """G3's parallel block: the same input through several 1x1 convs, outputs concatenated."""

    def __init__(self, c_in: int, c_branch: int, branches: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(_conv(c_in, c_branch) for _ in range(branches))

    def forward(self, x: Tensor) -> Tensor:
        """Run every branch on ``x`` and concatenate along channels."""
        return torch.cat([branch(x) for branch in self.branches], dim=1)


class Bottleneck(nn.Module):
    """ResNet's bottleneck unit (1x1, 3x3, 1x1) with ReLU and the identity shortcut each switchable (G4)."""

    def __init__(self, channels: int, mid: int, relu: bool = True, shortcut: bool = True) -> None:
        super().__init__()
        self.conv1 = _conv(channels, mid)
        self.conv2 = _conv(mid, mid, kernel=3)
        self.conv3 = _conv(mid, channels)
        self.relu = nn.ReLU(inplace=True) if relu else nn.Identity()
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        """conv-ReLU-conv-ReLU-conv (+ x) -ReLU, without the parts switched off."""
        out = self.relu(self.conv1(x))
        out = self.relu(self.conv2(out))
        out = self.conv3(out)
        if self.shortcut:
            out += x
        return self.relu(out)


def _block(spec: BenchSpec) -> nn.Module:
    if spec.kind == "pair":
        c1, c2 = spec.channels
        return nn.Sequential(_conv(c1, c2), _conv(c2, c1))
    if spec.kind == "group":
        c = spec.channels[0]
        return _conv(c, c, groups=spec.groups)
    if spec.kind == "series":
        c = spec.channels[0]
        return nn.Sequential(*(_conv(c, c) for _ in range(spec.convs)))
    if spec.kind == "parallel":
        return ParallelConvs(spec.channels[0], spec.channels[1], spec.convs)
    if spec.kind == "bottleneck":
        return Bottleneck(spec.channels[0], spec.channels[1], relu=spec.relu, shortcut=spec.shortcut)
    raise ValueError(f"unknown benchmark kind {spec.kind!r} in {spec}")


def build_model(spec: BenchSpec, blocks: int = tables.V2_GUIDELINE_BLOCKS) -> nn.Module:
    """The network to time for ``spec``: its block stacked ``blocks`` times, or the registered model."""
    if spec.kind == "model":
        from shufflenet.models import create_model

        return create_model(spec.model)
    return nn.Sequential(*(_block(spec) for _ in range(blocks)))


def count_spec(spec: BenchSpec, blocks: int = tables.V2_GUIDELINE_BLOCKS) -> dict[str, Any]:
    """Params, FLOPs and MAC per image (shufflenet.analysis, on the meta device) and the 1x1-conv MAC bound.

    ``mac_bound`` sums the paper's Eq. 1 bound over the convolutions; it is given only for blocks made of 1x1
    convolutions (G1-G3), where it is a true lower bound.
    """
    with torch.device("meta"):
        model = build_model(spec, blocks)
    stats = analyze(model, (spec.input_size, spec.input_size), batch_size=1, in_chans=spec.in_chans)
    bound = None
    if spec.kind in ("pair", "group", "series", "parallel"):
        bound = sum(mac_lower_bound(spec.input_size, spec.input_size, layer.flops) for layer in stats.layers)
    return {"params": stats.params, "flops": stats.flops, "mac": stats.mac, "mac_bound": bound}


# ---------------------------------------------------------------- measurement


def _check_device(device: str) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r} requested but CUDA is not available here (torch {torch.__version__}, "
            f"torch.cuda.is_available() is False); run with --device cpu"
        )
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not supported; use cpu or cuda")
    return dev


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_calls(model: nn.Module, x: Tensor, iters: int, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        model(x)
    _sync(device)
    return time.perf_counter() - start


def measure_group(
    models: Sequence[nn.Module],
    inputs: Sequence[Tensor],
    device: torch.device,
    repeats: int,
    warmup: int,
    min_time: float,
) -> list[list[float]]:
    """Images/s samples for each model, timed round-robin so that background load hits every model alike.

    Each model is warmed up, its calls per repeat are chosen so one repeat lasts ``min_time``, then each repeat
    times every model once, starting the round at a different model each time.
    """
    iters = []
    with torch.inference_mode():
        for model, x in zip(models, inputs, strict=True):
            for _ in range(warmup):
                model(x)
            once = _time_calls(model, x, 1, device)
            iters.append(max(1, min(10_000, math.ceil(min_time / max(once, 1e-6)))))
        samples: list[list[float]] = [[] for _ in models]
        for r in range(repeats):
            order = list(range(len(models)))
            order = order[r % len(order) :] + order[: r % len(order)]
            for i in order:
                elapsed = _time_calls(models[i], inputs[i], iters[i], device)
                samples[i].append(inputs[i].shape[0] * iters[i] / elapsed)
    return samples


def _summary(samples: list[float]) -> dict[str, float]:
    mid = median(samples)
    q1, _, q3 = quantiles(samples, n=4, method="inclusive") if len(samples) > 1 else (mid, mid, mid)
    return {
        "images_per_s": mid,
        "images_per_s_q1": q1,
        "images_per_s_q3": q3,
        "spread_pct": 100 * (q3 - q1) / mid if mid else 0.0,
        "images_per_s_best": max(samples),  # the least disturbed repeat, for runs on a busy machine
    }


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """CPU model, core count, torch version and threads, GPU name, and the load average now."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def _run_experiment(
    experiment: str, config: GuidelineConfig, device: torch.device, progress: Callable[[str], None] | None
) -> list[dict[str, Any]]:
    specs = experiment_specs(
        experiment,
        config.resolved_profile(),
        config.multipliers,
        config.input_size,
        config.model_widths,
        config.model_input_size,
    )
    rows: list[dict[str, Any]] = []
    groups: dict[float, list[BenchSpec]] = {}
    for spec in specs:
        groups.setdefault(spec.multiplier, []).append(spec)
    for multiplier, group in groups.items():
        torch.manual_seed(0)
        models = [build_model(s, config.blocks).to(device).eval() for s in group]
        inputs = [torch.randn(config.batch_size, s.in_chans, s.input_size, s.input_size, device=device) for s in group]
        if progress:
            progress(f"{experiment} x{multiplier:g}: timing {len(group)} rows")
        samples = measure_group(models, inputs, device, config.repeats, config.warmup, config.min_time)
        del models, inputs
        base = None
        for spec, sample in zip(group, samples, strict=True):
            row: dict[str, Any] = {
                "experiment": experiment,
                "name": spec.name,
                "multiplier": spec.multiplier,
                "widths": spec.label,
                "channels": list(spec.channels),
                "groups": spec.groups,
                "input_size": spec.input_size,
                **count_spec(spec, config.blocks),
                **_summary(sample),
                "samples": [round(s, 3) for s in sample],
                "paper_gpu": spec.paper_gpu,
                "paper_arm": spec.paper_arm,
            }
            if spec.kind == "model":
                row["paper_mflops"] = spec.paper_mflops
            row["mflops"] = row["flops"] / 1e6
            row["mmac"] = row["mac"] / 1e6
            row["mac_vs_bound"] = row["mac"] / row["mac_bound"] if row["mac_bound"] else None
            if base is None:
                base = row
            row["relative"] = row["images_per_s"] / base["images_per_s"]
            for platform_ in ("gpu", "arm"):
                ours, first = row[f"paper_{platform_}"], base[f"paper_{platform_}"]
                row[f"paper_{platform_}_relative"] = ours / first if ours and first else None
            rows.append(row)
            if progress:
                progress(
                    f"  {spec.name:<22} {row['mflops']:9.1f} MFLOPs {row['mmac']:9.2f} M MAC "
                    f"{row['images_per_s']:10.1f} img/s ±{row['spread_pct']:.1f}%"
                )
    return rows


def run_guidelines(config: GuidelineConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the selected experiments; JSON-ready results with one list of rows per experiment and verdicts.

    ``progress`` (optional) receives one line per experiment group and per timed row.
    """
    device = _check_device(config.device)
    unknown = [e for e in config.experiments if e not in EXPERIMENTS]
    if unknown:
        raise ValueError(f"unknown experiment(s) {unknown}; choose from {EXPERIMENTS}")
    if config.batch_size < 1 or config.repeats < 1:
        raise ValueError(f"batch_size and repeats must be >= 1, got {config.batch_size} and {config.repeats}")
    old_threads = torch.get_num_threads()
    old_benchmark = torch.backends.cudnn.benchmark
    old_mkldnn = torch.backends.mkldnn.enabled
    started = time.time()
    try:
        if config.threads:
            torch.set_num_threads(config.threads)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # the paper lets cuDNN pick its fastest algorithms
        before = machine_info(config.device)
        results: dict[str, Any] = {}
        torch.backends.mkldnn.enabled = config.mkldnn
        for experiment in EXPERIMENTS:
            if experiment in config.experiments:
                results[experiment] = _run_experiment(experiment, config, device, progress)
        after = machine_info(config.device)
    finally:
        torch.set_num_threads(old_threads)
        torch.backends.cudnn.benchmark = old_benchmark
        torch.backends.mkldnn.enabled = old_mkldnn
    settings = {**asdict(config), "profile": config.resolved_profile()}
    settings["machine"] = before
    settings["loadavg_after"] = after["loadavg"]
    settings["seconds"] = round(time.time() - started, 1)
    return {"settings": settings, **results, "verdicts": verdicts(results, config.tolerance)}


# ---------------------------------------------------------------- verdicts


def _status(ratio: float | None, tol: float) -> str | None:
    if ratio is None:
        return None
    if ratio >= 1 + tol:
        return "holds"
    if ratio <= 1 - tol:
        return "reversed"
    return "tie"


def _overall(statuses: list[str]) -> str:
    holds, reversed_ = statuses.count("holds"), statuses.count("reversed")
    if statuses and holds == len(statuses):
        return "agrees"
    if reversed_ > holds or holds == 0:
        return "disagrees"
    return "partly agrees"


def _claims_for(experiment: str, rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    if experiment == "v1_vs_v2":
        names = list(dict.fromkeys(r["name"] for r in rows))
        return [(v2, v1) for v1, v2 in zip(names[0::2], names[1::2], strict=True)]
    return CLAIMS[experiment]


@dataclass
class Verdict:
    """How the paper's claims for one experiment fare on this machine (and in the paper's own columns)."""

    experiment: str
    title: str
    verdict: str
    holds: int
    ties: int
    reversed: int
    paper_gpu_verdict: str
    paper_arm_verdict: str
    headline: str = ""  # the first claim, e.g. "1:1 faster than 1:12"
    headline_holds: int = 0  # at how many multipliers (v1_vs_v2: widths) the headline claim holds
    headline_total: int = 0
    claims: list[dict[str, Any]] = field(default_factory=list)
    text: str = ""


def verdicts(results: dict[str, Any], tolerance: float = 0.03) -> dict[str, dict[str, Any]]:
    """Per experiment: each claim 'row A is faster than row B' checked on the measurements and the paper.

    A claim holds when A's median beats B's by more than ``tolerance`` (or by more than the two rows' mean
    interquartile spread, if larger), is reversed when B wins by that much, and is a tie otherwise. The same
    rule (with ``tolerance`` alone) is applied to the paper's GPU and ARM columns.
    """
    out: dict[str, dict[str, Any]] = {}
    for experiment in EXPERIMENTS:
        rows = results.get(experiment)
        if not rows:
            continue
        claims = []
        for multiplier in dict.fromkeys(r["multiplier"] for r in rows):
            by_name = {r["name"]: r for r in rows if r["multiplier"] == multiplier}
            for faster, slower in _claims_for(experiment, rows):
                if faster not in by_name or slower not in by_name:
                    continue
                a, b = by_name[faster], by_name[slower]
                tol = max(tolerance, (a["spread_pct"] + b["spread_pct"]) / 200)
                ratio = a["images_per_s"] / b["images_per_s"]
                claim = {"faster": faster, "slower": slower, "multiplier": multiplier, "ratio": ratio, "tol": tol}
                claim["status"] = _status(ratio, tol)
                for platform_ in ("gpu", "arm"):
                    pa, pb = a[f"paper_{platform_}"], b[f"paper_{platform_}"]
                    paper_ratio = pa / pb if pa and pb else None
                    claim[f"paper_{platform_}_ratio"] = paper_ratio
                    claim[f"paper_{platform_}_status"] = _status(paper_ratio, tolerance)
                claims.append(claim)
        statuses = [c["status"] for c in claims]
        verdict = Verdict(
            experiment=experiment,
            title=TITLES[experiment],
            verdict=_overall(statuses),
            holds=statuses.count("holds"),
            ties=statuses.count("tie"),
            reversed=statuses.count("reversed"),
            paper_gpu_verdict=_overall([c["paper_gpu_status"] for c in claims if c["paper_gpu_status"]]),
            paper_arm_verdict=_overall([c["paper_arm_status"] for c in claims if c["paper_arm_status"]]),
            claims=claims,
        )
        heads = _headline_claims(experiment, claims)
        verdict.headline_holds = sum(c["status"] == "holds" for c in heads)
        verdict.headline_total = len(heads)
        verdict.headline = (
            "v2 faster than v1 (g=3)"
            if experiment == "v1_vs_v2"
            else f"{heads[0]['faster']} faster than {heads[0]['slower']}"
        )
        verdict.text = _verdict_text(verdict)
        out[experiment] = asdict(verdict)
    return out


def _ratio_text(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def _headline_claims(experiment: str, claims: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if experiment == "v1_vs_v2" or not claims:
        return claims  # one claim per width, each a headline
    first = (claims[0]["faster"], claims[0]["slower"])
    return [c for c in claims if (c["faster"], c["slower"]) == first]


def _verdict_text(v: Verdict) -> str:
    heads = _headline_claims(v.experiment, v.claims)
    head = heads[0]
    what = "v2 / v1 speed" if v.experiment == "v1_vs_v2" else f"{head['faster']} / {head['slower']} speed"
    where = "widths" if v.experiment == "v1_vs_v2" else "multipliers"
    detail = "; ".join(
        f"x{c['multiplier']:g} {_ratio_text(c['ratio'])} (paper GPU {_ratio_text(c['paper_gpu_ratio'])}, "
        f"ARM {_ratio_text(c['paper_arm_ratio'])})"
        for c in heads
    )
    return (
        f"{v.experiment} ({v.title}): {v.verdict} on this machine. Headline ({v.headline}) holds at "
        f"{v.headline_holds}/{v.headline_total} {where}; all pairwise claims: {v.holds}/"
        f"{len(v.claims)} hold, {v.ties} tie, {v.reversed} reversed (the paper's own columns under the same rule: "
        f"GPU {v.paper_gpu_verdict}, ARM {v.paper_arm_verdict}). {what}: {detail}."
    )


# ---------------------------------------------------------------- plot


def plot_results(results: dict[str, Any]) -> Figure:
    """One panel per experiment: our throughput relative to the first row (bars, one per multiplier, with the
    interquartile range), the paper's GPU and ARM figures normalised the same way (markers)."""
    experiments = [e for e in EXPERIMENTS if results.get(e)]
    fig = Figure(figsize=(16, 9), layout="constrained")
    axes = fig.subplots(2, 3).ravel()
    settings = results.get("settings", {})
    machine = settings.get("machine", {})
    fig.suptitle(
        f"ShuffleNet V2 guidelines on {machine.get('cpu', '?')} ({settings.get('device', '?')}, "
        f"{machine.get('torch_threads', '?')} thread(s){'' if settings.get('mkldnn', True) else ', oneDNN off'}, "
        f"batch {settings.get('batch_size', '?')}): "
        "throughput relative to the first row; markers = paper (GPU ^, ARM s)"
    )
    for ax, experiment in zip(axes, experiments, strict=False):
        rows = results[experiment]
        if experiment == "v1_vs_v2":
            rows = [r for r in rows if "_v2_" in r["name"]]  # relative = v2 / v1 at the same width
            names = [f"x{r['multiplier']:g}" for r in rows]
            mults: list[float] = [0.0]
            key = {(0.0, f"x{r['multiplier']:g}"): r for r in rows}
        else:
            names = list(dict.fromkeys(r["name"] for r in rows))
            mults = list(dict.fromkeys(r["multiplier"] for r in rows))
            key = {(r["multiplier"], r["name"]): r for r in rows}
        width = 0.8 / len(mults)
        for j, m in enumerate(mults):
            xs, ys, lo, hi, gpu, arm = [], [], [], [], [], []
            for i, name in enumerate(names):
                row = key.get((m, name))
                if row is None:
                    continue
                x = i - 0.4 + width * (j + 0.5)
                scale = row["relative"] / row["images_per_s"]
                xs.append(x)
                ys.append(row["relative"])
                lo.append(row["relative"] - row["images_per_s_q1"] * scale)
                hi.append(row["images_per_s_q3"] * scale - row["relative"])
                gpu.append((x, row["paper_gpu_relative"]))
                arm.append((x, row["paper_arm_relative"]))
            label = "this machine" if experiment == "v1_vs_v2" else f"this machine x{m:g}"
            bars = ax.bar(xs, ys, width * 0.9, yerr=[lo, hi], capsize=2, label=label, alpha=0.85)
            color = bars.patches[0].get_facecolor() if bars.patches else None
            for points, marker, who in ((gpu, "^", "GPU"), (arm, "s", "ARM")):
                points = [(x, y) for x, y in points if y is not None]
                if points:
                    ax.scatter(
                        *zip(*points, strict=True),
                        marker=marker,
                        color="black" if who == "GPU" else "white",
                        edgecolors=color if color is not None else "black",
                        linewidths=1.5,
                        zorder=3,
                        s=36,
                        label=f"paper {who}" if j == 0 else None,
                    )
        ax.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
        ax.set_xticks(range(len(names)), names, rotation=20 if experiment == "G3" else 0, fontsize=8)
        ylabel = "v2 / v1 throughput" if experiment == "v1_vs_v2" else "throughput / first row"
        ax.set_ylabel(ylabel)
        verdict = results.get("verdicts", {}).get(experiment, {}).get("verdict", "")
        ax.set_title(f"{experiment}: {TITLES[experiment]}\n({verdict})", fontsize=10)
        ax.legend(fontsize=7)
    for ax in axes[len(experiments) :]:
        ax.axis("off")
    if len(experiments) < len(axes):
        summary = [
            f"{name}: {v['verdict']}, headline holds {v['headline_holds']}x, "
            f"{v['holds']}/{len(v['claims'])} claims hold, {v['reversed']} reversed"
            for name, v in results.get("verdicts", {}).items()
        ]
        load = machine.get("loadavg")
        summary.append(f"load average at start: {load[0]:.2f}" if load else "")
        axes[-1].text(0.0, 0.95, "\n".join(summary), va="top", fontsize=9, family="monospace")
    return fig


def save_plot(results: dict[str, Any], path: str | Path, dpi: int = 80) -> Path:
    """Draw :func:`plot_results` and write it to ``path`` (format from the suffix, e.g. ``.png``)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write plot {path}: directory {path.parent} does not exist")
    fig = plot_results(results)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=dpi)
    return path
