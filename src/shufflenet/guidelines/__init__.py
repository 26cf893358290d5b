"""The ShuffleNet V2 paper's four guidelines (Ma et al. 2018, Sec. 2), measured on this machine.

The paper validates each guideline with a micro-benchmark: a small block stacked 10 times on a 56x56 input,
FLOPs held fixed across the rows of an experiment, run at channel multipliers x1/x2/x4 (Tables 1-4); Table 8
then compares whole networks. This package rebuilds those benchmarks as data and builds them
(:mod:`~shufflenet.guidelines.experiments`: :func:`experiment_specs`, :func:`build_model`, :func:`count_spec`,
FLOPs and MAC from :mod:`shufflenet.analysis`), times them (:mod:`~shufflenet.guidelines.runner`:
:func:`run_guidelines`), compares the trends with the paper's GPU and ARM columns
(:mod:`~shufflenet.guidelines.claims`) and draws them (:mod:`~shufflenet.guidelines.plots`).
"""

from __future__ import annotations

from shufflenet.guidelines.claims import CLAIMS, Verdict, verdicts
from shufflenet.guidelines.experiments import (
    DEFAULT_BATCH_SIZE,
    EXPERIMENTS,
    G3_ROWS,
    G4_ROWS,
    PROFILES,
    TITLES,
    BenchSpec,
    Bottleneck,
    GuidelineConfig,
    ParallelConvs,
    build_model,
    count_spec,
    experiment_specs,
)
from shufflenet.guidelines.plots import plot_results, save_plot
from shufflenet.guidelines.runner import machine_info, measure_group, run_guidelines

__all__ = [
    "CLAIMS",
    "DEFAULT_BATCH_SIZE",
    "EXPERIMENTS",
    "G3_ROWS",
    "G4_ROWS",
    "PROFILES",
    "TITLES",
    "BenchSpec",
    "Bottleneck",
    "GuidelineConfig",
    "ParallelConvs",
    "Verdict",
    "build_model",
    "count_spec",
    "experiment_specs",
    "machine_info",
    "measure_group",
    "plot_results",
    "run_guidelines",
    "save_plot",
    "verdicts",
]
