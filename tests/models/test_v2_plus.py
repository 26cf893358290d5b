"""ShuffleNetV2+ against the official network (a module tree mirroring megvii's code) and megvii's README table."""

import pytest
import torch
from torch import nn

from megvii_plus_reference import SIZES, MegviiV2Plus, randomize
from shufflenet import create_model, model_info, tables
from shufflenet.analysis import analyze, analyze_name
from shufflenet.models.v2_plus import PlusUnit, ShuffleNetV2Plus, SqueezeExcite

PLUS = [f"shufflenet_v2_plus_{size}" for size in tables.V2_PLUS_SIZES]


@pytest.mark.parametrize("size", tables.V2_PLUS_SIZES)
def test_params_equal_the_official_code_and_shapes_follow_its_order(size: str) -> None:
    """Same parameter count as the mirror of megvii's network.py, and the same tensors in the same order."""
    with torch.device("meta"):
        ours = create_model(f"shufflenet_v2_plus_{size}")
        theirs = MegviiV2Plus(size.capitalize())
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in theirs.parameters()) == tables.V2_PLUS_OFFICIAL_PARAMS[size]
    assert count == pytest.approx(tables.V2_PLUS_README[size]["mparams"] * 1e6, rel=0.02)  # README rounds
    assert [t.shape for t in ours.state_dict().values()] == [t.shape for t in theirs.state_dict().values()]


@pytest.mark.parametrize("name", PLUS)
def test_mflops_within_2_percent_of_megvii_readme(name: str) -> None:
    info = model_info(name)
    assert info.paper_mflops == tables.V2_PLUS_README[info.extra["size"]]["mflops"]
    assert analyze_name(name).mflops == pytest.approx(info.paper_mflops, rel=0.02)


def test_stage_widths_come_from_the_tables() -> None:
    """Each stage's output has the tables' width (the mirror keeps its own copy of network.py's widths)."""
    for size, channels in tables.V2_PLUS_STAGE_CHANNELS.items():
        assert SIZES[size.capitalize()][1:5] == channels
        model = ShuffleNetV2Plus(size).eval()
        x = model.conv1(torch.zeros(1, 3, 64, 64))
        widths = []
        with torch.no_grad():
            for stage in (model.stage1, model.stage2, model.stage3, model.stage4):
                x = stage(x)
                widths.append(x.shape[1])
        assert tuple(widths) == channels and model.stage_out_channels == [*channels, 1280]


def test_unit_kinds_activations_and_se_follow_the_architecture_list() -> None:
    model = ShuffleNetV2Plus("small")
    units = [unit for stage in (model.stage1, model.stage2, model.stage3, model.stage4) for unit in stage]
    assert [unit.kind for unit in units] == list(tables.V2_PLUS_ARCHITECTURE)
    for position, unit in enumerate(units):
        stage = 1 + sum(position >= sum(tables.V2_PLUS_STAGE_REPEATS[:i]) for i in range(1, 4))
        depthwise = [m for m in unit.branch_main if isinstance(m, nn.Conv2d) and m.groups == m.in_channels > 1]
        expected_kernel = 3 if unit.kind == 3 else (3, 5, 7)[unit.kind]
        assert {m.kernel_size for m in depthwise} == {(expected_kernel, expected_kernel)}
        assert len(depthwise) == (3 if unit.kind == 3 else 1)
        activations = {type(m) for m in unit.modules() if isinstance(m, nn.ReLU | nn.Hardswish)}
        assert activations == ({nn.ReLU} if stage == 1 else {nn.Hardswish, nn.ReLU} if stage >= 3 else {nn.Hardswish})
        assert isinstance(unit.branch_main[-1], SqueezeExcite) == (stage >= 3)
        assert unit.stride == (2 if position in (0, 4, 8, 16) else 1)


def test_same_logits_as_the_official_network(photos_224: torch.Tensor) -> None:
    """Mirror's random weights copied tensor by tensor (same order): identical function at 224x224."""
    theirs = randomize(MegviiV2Plus("Small", n_class=10), photos_224)
    ours = create_model("shufflenet_v2_plus_small", num_classes=10)
    ours.load_state_dict(dict(zip(ours.state_dict(), theirs.state_dict().values(), strict=True)))
    with torch.no_grad():
        expected = theirs.double().eval()(photos_224.double())
        got = ours.double().eval()(photos_224.double())
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


@pytest.fixture
def photos_224() -> torch.Tensor:
    """Two smooth random images at 224x224 on megvii's 0-255 scale."""
    generator = torch.Generator().manual_seed(0)
    coarse = torch.rand(2, 3, 14, 14, generator=generator) * 255
    return nn.functional.interpolate(coarse, size=224, mode="bilinear", align_corners=False)


def test_stride1_unit_hands_on_even_channels_and_feeds_odd_ones_to_the_main_branch() -> None:
    """megvii's layout: output = [x[:, 0::2], branch_main(x[:, 1::2])]."""
    torch.manual_seed(0)
    unit = PlusUnit(16, 16, stride=1, kind=1, hswish=True, se=True).eval()
    x = torch.randn(2, 16, 6, 6)
    with torch.no_grad():
        out = unit(x)
        torch.testing.assert_close(out[:, :8], x[:, 0::2], rtol=0, atol=0)
        torch.testing.assert_close(out[:, 8:], unit.branch_main(x[:, 1::2]), rtol=0, atol=0)


def test_stride2_unit_keeps_the_input_width_in_the_projection() -> None:
    unit = PlusUnit(16, 36, stride=2, kind=2, hswish=False, se=False)
    assert unit.branch_proj[2].out_channels == 16 and unit.branch_main[5].out_channels == 20
    assert unit.branch_proj[0].kernel_size == (7, 7) and unit.branch_proj[0].stride == (2, 2)
    assert unit(torch.randn(2, 16, 8, 8)).shape == (2, 36, 4, 4)
    with pytest.raises(ValueError, match="Xception unit is used at stride 1 only"):
        PlusUnit(16, 36, stride=2, kind=3, hswish=True, se=False)


def test_head_se_linear_and_bias_free_classifier() -> None:
    model = create_model("shufflenet_v2_plus_small", num_classes=7).eval()
    x = torch.randn(2, 3, 64, 64)  # any size: the head pools by mean, not AvgPool2d(7)
    with torch.no_grad():
        features = model.forward_features(x)
        hidden = model.forward_head(features, pre_logits=True)
        assert features.shape == (2, 1280, 2, 2) and hidden.shape == (2, model.head_hidden_size)
        torch.testing.assert_close(model.fc(hidden), model(x))
    assert model.fc.bias is None and model.head_linear[0].bias is None
    assert model.dropout.p == tables.V2_PLUS_DROPOUT
    model.reset_classifier(3)
    assert model.fc.bias is None and model.fc.out_features == 3 and model(x).shape == (2, 3)


def test_the_models_hswish_and_hsigmoid_are_megvii_clamp_formula() -> None:
    """megvii's HS: x * clamp(x + 3, 0, 6) / 6, and the SE gate clamp(x + 3, 0, 6) / 6, as the model's modules."""
    model = ShuffleNetV2Plus("small")
    x = torch.linspace(-5, 5, 1001, dtype=torch.float64)
    hswish = [model.conv1[-1], model.conv5[-1], model.head_linear[-1], model.stage2[1].branch_main[2]]
    for activation in hswish:
        torch.testing.assert_close(activation(x), x * torch.clamp(x + 3, 0, 6) / 6, rtol=0, atol=1e-15)
    for gate in (model.head_se.gate, model.stage3[0].branch_main[-1].gate):
        torch.testing.assert_close(gate(x), torch.clamp(x + 3, 0, 6) / 6, rtol=0, atol=1e-15)


def test_analysis_counts_hswish_se_linear_and_large_kernels_by_hand() -> None:
    """FLOPs: convs and linears only; MAC: every element-wise op (h-swish, SE scale) reads and writes."""
    depthwise = analyze(nn.Conv2d(4, 4, 7, padding=3, groups=4, bias=False), (6, 6), in_chans=4)
    assert depthwise.flops == 36 * 4 * 49 and depthwise.mac == 2 * 36 * 4 + 4 * 49
    assert analyze(nn.Conv2d(4, 4, 5, padding=2, groups=4, bias=False), (6, 6), in_chans=4).flops == 36 * 4 * 25
    hswish = analyze(nn.Hardswish(), (3, 3), in_chans=4)
    assert hswish.flops == 0 and hswish.mac == 2 * 36
    se = analyze(SqueezeExcite(8), (3, 3), in_chans=8)
    # reduce 8->2 and expand 2->8 on a 1x1 map; mean, BN, ReLU, gate and the scale are element-wise
    assert se.flops == 8 * 2 + 2 * 8
    scale_mac = 72 + 8 + 72  # x and the gate read, the product written
    assert [layer.mac for layer in se.layers if layer.name == "(model)"] == [72 + 8 + scale_mac]
    linear = analyze(nn.Sequential(nn.Flatten(), nn.Linear(12, 5, bias=False)), (2, 2), in_chans=3)
    assert linear.flops == 12 * 5 and linear.mac == 12 + 12 * 5 + 5


def test_channels_last_and_bf16_autocast_train_step() -> None:
    torch.manual_seed(0)
    model = create_model("shufflenet_v2_plus_small", num_classes=3).to(memory_format=torch.channels_last).train()
    x = torch.randn(4, 3, 64, 64).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits.float()).all()
    logits.float().logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.head_se.squeeze[0].weight.grad.abs().sum() > 0  # the SE gate is in the graph


def test_features_only_and_timm_feature_list_give_the_same_maps() -> None:
    timm = pytest.importorskip("timm")
    from shufflenet.timm_compat import register_when_timm_imported

    register_when_timm_imported()
    torch.manual_seed(0)
    ours = create_model("shufflenet_v2_plus_small", features_only=True).eval()
    assert ours.feature_info.channels() == list(tables.V2_PLUS_STAGE_CHANNELS["small"])
    assert ours.feature_info.reduction() == [4, 8, 16, 32]
    assert ours.feature_info.module_name() == ["stage1", "stage2", "stage3", "stage4"]
    theirs = timm.create_model("shufflenet_v2_plus_small", features_only=True).eval()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for got, want, stride in zip(theirs(x), ours(x), (4, 8, 16, 32), strict=True):
            assert want.shape[2:] == (64 // stride, 64 // stride)
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert "conv5.0.weight" not in ours.state_dict() and "fc.weight" not in ours.state_dict()


def test_cli_models_lists_v2_plus_with_megvii_figures_and_its_own_feature_levels(capsys) -> None:
    from shufflenet.cli import main

    assert main(["models", "shufflenet_v2_plus_*"]) == 0
    lines = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines() if "_plus_" in line}
    for size in tables.V2_PLUS_SIZES:
        row = lines[f"shufflenet_v2_plus_{size}"]
        assert row[1] == f"{tables.V2_PLUS_OFFICIAL_PARAMS[size]:,}"
        assert row[4] == str(tables.V2_PLUS_README[size]["mflops"])
        assert "megvii" in row and abs(float(row[-2])) < 2  # diff %; the last column: published weights (none)
        assert row[-1] == "-"
    assert main(["models", "--features", "shufflenet_v2_*"]) == 0
    plus_table, v2_table = capsys.readouterr().out.split("\n\n")[:2]
    assert "0: stage1 /4" in plus_table and "shufflenet_v2_plus_small" in plus_table and "_x1_0" not in plus_table
    assert "0: maxpool /4" in v2_table and "shufflenet_v2_x1_0" in v2_table and "_plus_" not in v2_table
