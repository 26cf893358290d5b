"""The paper's guideline experiments as data (:func:`experiment_specs`) and the networks they time.

Ma et al. 2018 (Sec. 2) validate each guideline with a micro-benchmark: a small block stacked 10 times on a
56x56 input, FLOPs held fixed across the rows of an experiment, run at channel multipliers x1/x2/x4 (Tables
1-4); Table 8 then compares whole networks. The widths and the paper's figures come from :mod:`shufflenet.tables`.

A sixth experiment, ``v2_plus``, asks G4's question of the V2 authors' later ShuffleNetV2+: do its squeeze-excitation
and h-swish (0 FLOPs, or nearly) cost more time than their FLOPs say? It times V2+ Small beside copies of itself
without SE and with ReLU for h-swish, and the V2+ sizes beside the v2 widths of similar FLOPs.

Choices the paper leaves open (documented in docs/guidelines.md):

* Blocks are bare convolutions without bias or BatchNorm (the paper runs with BN fused away); G1-G3 have no
  activation, so FLOPs and MAC are exactly the paper's formulas.
* G3's parallel blocks feed the same input to k 1x1 convs of c -> c/k channels and concatenate them (equal FLOPs
  without changing c); series blocks use k convs of c/sqrt(k) channels.
* G4's bottleneck is ResNet's: c -> c/4 (1x1), c/4 -> c/4 (3x3), c/4 -> c (1x1), ReLU after each conv (the last
  after the shortcut add).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from shufflenet import tables
from shufflenet.analysis import analyze, mac_lower_bound

EXPERIMENTS: tuple[str, ...] = ("G1", "G2", "G3", "G4", "v1_vs_v2", "v2_plus")
PROFILES: tuple[str, ...] = ("arm", "gpu")
TITLES: dict[str, str] = {
    "G1": "equal channel width minimises MAC",
    "G2": "excessive group convolution increases MAC",
    "G3": "network fragmentation reduces parallelism",
    "G4": "element-wise operations are not negligible",
    "v1_vs_v2": "ShuffleNet v2 is faster than v1 (g=3) at equal width",
    "v2_plus": "FLOPs are not speed: ShuffleNetV2+'s SE and h-swish (G4)",
}
DEFAULT_BATCH_SIZE = 8  # the paper's GPU batch (Fig. 1); big enough that per-call overhead does not dominate

G4_ROWS: dict[tuple[bool, bool], str] = {
    (True, True): "ReLU+shortcut",
    (True, False): "ReLU only",
    (False, True): "shortcut only",
    (False, False): "no ReLU/shortcut",
}
# v2_plus: copies of one V2+ size with its SE removed and/or its h-swish replaced by ReLU (name suffix -> variant).
V2_PLUS_VARIANTS: dict[str, str] = {"no SE": "no_se", "ReLU": "relu", "no SE, ReLU": "no_se+relu"}
V2_PLUS_BASELINE = "shufflenet_v2_x1_0"  # the first row: v2 at about V2+ Small's FLOPs
G3_ROWS: dict[str, tuple[str, int]] = {  # name -> (arrangement, number of 1x1 convs)
    "1-fragment": ("series", 1),
    "2-fragment-series": ("series", 2),
    "4-fragment-series": ("series", 4),
    "2-fragment-parallel": ("parallel", 2),
    "4-fragment-parallel": ("parallel", 4),
}


@dataclass(frozen=True)
class BenchSpec:
    """One row of one experiment at one channel multiplier: what to build and what the paper measured there.

    ``kind`` is ``pair`` (G1: c1 -> c2 -> c1), ``group`` (G2), ``series`` / ``parallel`` (G3), ``bottleneck``
    (G4) or ``model`` (a registered network, v1_vs_v2 and v2_plus). For v1_vs_v2, ``multiplier`` is the model
    width. ``variant`` (v2_plus) changes a V2+ model before timing: ``no_se``, ``relu`` or ``no_se+relu``.
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
    variant: str = ""

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
        if self.experiment == "v2_plus":
            return self.name.removeprefix("shufflenet_")
        return f"{self.model.split('_')[1]} x{self.multiplier:g}"


@dataclass
class GuidelineConfig:
    """Settings of one run; :meth:`quick` gives the ~1 minute variant (x1 only, fewer and shorter repeats)."""

    device: str = "cpu"
    profile: str | None = None  # paper widths to use: "arm" or "gpu"; None picks by device
    multipliers: tuple[float, ...] = tables.V2_GUIDELINE_MULTIPLIERS
    model_widths: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0)
    plus_sizes: tuple[str, ...] = tables.V2_PLUS_SIZES  # v2_plus: the first size also gets the SE/ReLU variants
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
        """The quick variant: x1 only, width 1.0 only, V2+ Small only, 3 repeats of at least 0.1 s."""
        base = {"multipliers": (1,), "model_widths": (1.0,), "plus_sizes": ("small",), "repeats": 3}
        base.update({"warmup": 2, "min_time": 0.1})
        return cls(**{**base, **overrides})

    def resolved_profile(self) -> str:
        """The width profile in effect: the GPU widths on CUDA, the (smaller) ARM widths otherwise."""
        profile = self.profile or ("gpu" if str(self.device).startswith("cuda") else "arm")
        if profile not in PROFILES:
            raise ValueError(f"profile {profile!r} is not one of {PROFILES}")
        return profile


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
    plus_sizes: Sequence[str] = tables.V2_PLUS_SIZES,
) -> list[BenchSpec]:
    """The rows of ``experiment`` (one of :data:`EXPERIMENTS`) at each multiplier, widths from the paper."""
    if profile not in PROFILES:
        raise ValueError(f"profile {profile!r} is not one of {PROFILES}")
    specs: list[BenchSpec] = []
    if experiment == "v1_vs_v2":
        return _model_specs(model_widths, model_input_size)
    if experiment == "v2_plus":
        return _plus_specs(plus_sizes, model_input_size)
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
    for name in list_models("shufflenet_v2_x*"):  # not the V2+ sizes
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


def _plus_specs(sizes: Sequence[str], input_size: int) -> list[BenchSpec]:
    """v2 1.0x, then each V2+ size (the first with its SE/ReLU variants), with v2 1.5x beside Medium/Large."""
    unknown = [size for size in sizes if size not in tables.V2_PLUS_SIZES]
    if unknown or not sizes:
        raise ValueError(f"V2+ sizes must be some of {tables.V2_PLUS_SIZES}, got {list(sizes)}")

    def row(name: str, model: str, variant: str = "", paper_mflops: float | None = None) -> BenchSpec:
        return BenchSpec(
            "v2_plus", name, 1, "model", model=model, variant=variant, input_size=input_size, paper_mflops=paper_mflops
        )

    specs = [row(V2_PLUS_BASELINE, V2_PLUS_BASELINE, paper_mflops=tables.V2_TABLE5_MFLOPS[1.0])]
    for i, size in enumerate(sorted(sizes, key=tables.V2_PLUS_SIZES.index)):
        if size != "small" and "shufflenet_v2_x1_5" not in [s.name for s in specs]:
            specs.append(row("shufflenet_v2_x1_5", "shufflenet_v2_x1_5", paper_mflops=tables.V2_TABLE5_MFLOPS[1.5]))
        model = f"shufflenet_v2_plus_{size}"
        specs.append(row(model, model, paper_mflops=tables.V2_PLUS_README[size]["mflops"]))
        if i == 0:
            specs += [row(f"{model} {suffix}", model, variant) for suffix, variant in V2_PLUS_VARIANTS.items()]
    return specs


def plus_variant(model: nn.Module, variant: str) -> nn.Module:
    """``model`` (a ShuffleNetV2+) with every SE replaced by nn.Identity (``no_se``) and/or every h-swish by ReLU
    (``relu``), in place; ``no_se+relu`` does both."""
    from shufflenet.models.v2_plus import SqueezeExcite

    parts = set(variant.split("+"))
    if not parts <= {"no_se", "relu"}:
        raise ValueError(f"unknown V2+ variant {variant!r}; valid: {sorted(V2_PLUS_VARIANTS.values())}")
    replace_by: dict[type[nn.Module], type[nn.Module]] = {SqueezeExcite: nn.Identity} if "no_se" in parts else {}
    if "relu" in parts:
        replace_by[nn.Hardswish] = nn.ReLU
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) in replace_by:
                setattr(parent, name, replace_by[type(child)]())
    return model


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

        model = create_model(spec.model)
        return plus_variant(model, spec.variant) if spec.variant else model
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
