"""The guideline lab's v2_plus experiment: V2+ beside copies without SE / with ReLU, and v2 at similar FLOPs."""

import pytest
import torch
from torch import nn

from shufflenet import tables
from shufflenet.cli import main
from shufflenet.guidelines import GuidelineConfig, count_spec, experiment_specs, run_guidelines
from shufflenet.guidelines.experiments import build_model, plus_variant
from shufflenet.models.v2_plus import SqueezeExcite


def _by_name(specs):
    return {spec.name: spec for spec in specs}


def test_rows_are_v2_then_each_size_with_the_variants_of_the_first() -> None:
    names = [spec.name for spec in experiment_specs("v2_plus")]
    assert names == [
        "shufflenet_v2_x1_0",
        "shufflenet_v2_plus_small",
        "shufflenet_v2_plus_small no SE",
        "shufflenet_v2_plus_small ReLU",
        "shufflenet_v2_plus_small no SE, ReLU",
        "shufflenet_v2_x1_5",
        "shufflenet_v2_plus_medium",
        "shufflenet_v2_plus_large",
    ]
    quick = GuidelineConfig.quick()
    assert quick.plus_sizes == ("small",)
    assert len(experiment_specs("v2_plus", plus_sizes=quick.plus_sizes)) == 5
    with pytest.raises(ValueError, match="V2\\+ sizes must be some of"):
        experiment_specs("v2_plus", plus_sizes=("huge",))


def test_se_flops_are_its_1x1_convs_and_relu_for_hswish_changes_no_count() -> None:
    """FLOPs see the SE only as its two convs on a 1x1 map (C*C/4 each); h-swish and ReLU count the same."""
    specs = _by_name(experiment_specs("v2_plus", plus_sizes=("small",)))
    plain = count_spec(specs["shufflenet_v2_plus_small"])
    no_se = count_spec(specs["shufflenet_v2_plus_small no SE"])
    relu = count_spec(specs["shufflenet_v2_plus_small ReLU"])
    stage3, stage4 = tables.V2_PLUS_STAGE_CHANNELS["small"][2:]
    # every stage-3/4 unit's main branch ends at half the stage width (stride 2: out - in = half as well)
    se_channels = [stage3 // 2] * 8 + [stage4 // 2] * 4 + [tables.V2_PLUS_HEAD_CHANNELS]
    assert plain["flops"] - no_se["flops"] == sum(c * c // 2 for c in se_channels)
    assert (relu["flops"], relu["mac"], relu["params"]) == (plain["flops"], plain["mac"], plain["params"])
    assert no_se["mac"] < plain["mac"]


def test_plus_variant_replaces_every_se_and_hswish() -> None:
    torch.manual_seed(0)
    spec = _by_name(experiment_specs("v2_plus", plus_sizes=("small",)))["shufflenet_v2_plus_small no SE, ReLU"]
    model = build_model(spec)
    assert not any(isinstance(m, SqueezeExcite | nn.Hardswish) for m in model.modules())
    assert sum(isinstance(m, nn.Identity) for m in model.modules()) == 8 + 4 + 1
    with pytest.raises(ValueError, match="unknown V2\\+ variant 'no_bn'"):
        plus_variant(model, "no_bn")


def test_tiny_run_prints_the_table_and_verdicts(capsys: pytest.CaptureFixture[str]) -> None:
    config = GuidelineConfig.quick(experiments=("v2_plus",), model_input_size=32, batch_size=2, repeats=2)
    config.min_time, config.warmup = 0.0, 1
    results = run_guidelines(config)
    rows = results["v2_plus"]
    assert [row["name"] for row in rows][:2] == ["shufflenet_v2_x1_0", "shufflenet_v2_plus_small"]
    assert rows[0]["relative"] == 1.0 and all(row["gflops_per_s"] > 0 for row in rows)
    assert rows[1]["paper_mflops"] == tables.V2_PLUS_README["small"]["mflops"]
    verdict = results["verdicts"]["v2_plus"]
    assert verdict["headline"] == "shufflenet_v2_plus_small no SE, ReLU faster than shufflenet_v2_plus_small"
    assert verdict["paper_gpu_verdict"] == "no figures" and len(verdict["claims"]) == 4
    tiny = ["--model-input-size", "32", "--min-time", "0", "--repeats", "2", "--warmup", "1", "--batch-size", "2"]
    assert main(["guidelines", "--quick", "--experiments", "v2_plus", *tiny]) == 0
    out = capsys.readouterr().out
    assert "== v2_plus: FLOPs are not speed" in out and "GFLOP/s" in out and "no SE, ReLU" in out
