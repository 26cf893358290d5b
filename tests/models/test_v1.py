import pytest
import torch
from torch import nn

from shufflenet import create_model, list_models, tables
from shufflenet.models import ShuffleNetV1, stage_channels
from shufflenet.models.ops import channel_shuffle
from shufflenet.models.v1 import ShuffleUnit

V1_NAMES = list_models("shufflenet_v1_*")


def test_all_groups_and_widths_are_registered() -> None:
    assert len(V1_NAMES) == len(tables.V1_GROUPS) * len(tables.V1_WIDTHS) == 25


@pytest.mark.parametrize("groups", tables.V1_GROUPS)
def test_table1_channels_at_1x(groups: int) -> None:
    stem, *stages = stage_channels(groups, 1.0)
    assert stem == 24
    assert tuple(stages) == tables.V1_TABLE1_STAGE_CHANNELS[groups]


@pytest.mark.parametrize("key", sorted(tables.V1_MEGVII_CHANNELS))
def test_megvii_channels_for_g3_and_g8(key: tuple[int, float]) -> None:
    assert stage_channels(*key) == tables.V1_MEGVII_CHANNELS[key]


@pytest.mark.parametrize("name", V1_NAMES)
def test_rounding_rule_gives_valid_group_divisions_for_every_name(name: str) -> None:
    """Every group conv's in/out channels divide by g; the bottleneck is out/4; stride-2 branch = out - in."""
    with torch.device("meta"):
        model = create_model(name)
    groups = model.groups
    stem, *stages = model.stage_out_channels
    in_channels = stem
    for stage_index, out_channels in enumerate(stages):
        assert out_channels % (4 * groups) == 0
        unit = getattr(model, f"stage{stage_index + 2}")[0]
        main_out = out_channels - in_channels
        assert unit.expand[0].out_channels == main_out and main_out % groups == 0
        assert unit.compress[0].out_channels == out_channels // 4
        assert unit.compress[0].groups == (1 if stage_index == 0 else groups)
        assert unit.expand[0].groups == groups
        in_channels = out_channels


def test_stage_repeats_and_unit_strides() -> None:
    model = create_model("shufflenet_v1_g3_x0_25")
    assert [len(model.stage2), len(model.stage3), len(model.stage4)] == [4, 8, 4]
    for stage in (model.stage2, model.stage3, model.stage4):
        assert isinstance(stage[0].shortcut, nn.AvgPool2d) and stage[0].stride == 2
        assert all(unit.stride == 1 for unit in stage[1:])


def reference_unit(unit: ShuffleUnit, x: torch.Tensor) -> torch.Tensor:
    """Fig. 2 written out with functional ops, reading the unit's own weights."""

    def conv_bn(seq: nn.Sequential, t: torch.Tensor) -> torch.Tensor:
        conv, bn = seq[0], seq[1]
        t = nn.functional.conv2d(t, conv.weight, None, conv.stride, conv.padding, 1, conv.groups)
        return nn.functional.batch_norm(t, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)

    out = torch.relu(conv_bn(unit.compress, x))
    out = channel_shuffle(out, unit.groups)
    out = conv_bn(unit.depthwise, out)  # no ReLU after the depthwise conv
    out = conv_bn(unit.expand, out)
    if unit.stride == 1:
        return torch.relu(out + x)
    pooled = nn.functional.avg_pool2d(x, 3, 2, 1)
    return torch.relu(torch.cat([pooled, out], 1))


@pytest.mark.parametrize("stride", [1, 2])
def test_unit_matches_figure_2(stride: int) -> None:
    unit = ShuffleUnit(24, 48 if stride == 2 else 24, stride, groups=3).eval()
    for module in unit.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.weight.data.uniform_(0.5, 1.5)
    assert len(unit.depthwise) == 2  # conv + BN, no ReLU
    x = torch.relu(torch.randn(2, 24, 8, 8))
    with torch.no_grad():
        assert torch.allclose(unit(x), reference_unit(unit, x), atol=1e-6)


@pytest.mark.parametrize("name", ["shufflenet_v1_g1_x0_25", "shufflenet_v1_g3_x0_5", "shufflenet_v1_g8_x0_25"])
def test_forward_backward_real_tensors(name: str) -> None:
    model = create_model(name, num_classes=5)
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 5)
    out.sum().backward()
    assert model.conv1[0].weight.grad is not None


def test_invalid_groups_or_width_name_what_is_valid() -> None:
    with pytest.raises(ValueError, match=r"groups=5 is not in paper Table 1; valid: \(1, 2, 3, 4, 8\)"):
        ShuffleNetV1(groups=5)
    with pytest.raises(ValueError, match=r"width 0\.75 is not supported"):
        ShuffleNetV1(groups=3, width_mult=0.75)
