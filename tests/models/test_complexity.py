"""FLOPs, MAC and params: single layers against hand-computed values, whole models against the papers."""

import pytest
from torch import nn

from shufflenet import list_models, model_info, tables
from shufflenet.analysis import analyze, analyze_name, conv1x1_mac, mac_lower_bound, model_table
from shufflenet.models.ops import ChannelShuffle


def test_1x1_conv_flops_and_mac_by_hand() -> None:
    stats = analyze(nn.Conv2d(8, 16, 1, bias=False), (4, 5), in_chans=8)
    assert stats.flops == 4 * 5 * 8 * 16
    assert stats.mac == 4 * 5 * (8 + 16) + 8 * 16 == conv1x1_mac(4, 5, 8, 16)


def test_group_and_depthwise_conv_by_hand() -> None:
    group = analyze(nn.Conv2d(12, 24, 1, groups=3, bias=False), (7, 7), in_chans=12)
    assert group.flops == 49 * 12 * 24 // 3
    assert group.mac == 49 * (12 + 24) + 12 * 24 // 3 == conv1x1_mac(7, 7, 12, 24, groups=3)
    depthwise = analyze(nn.Conv2d(6, 6, 3, stride=2, padding=1, groups=6, bias=False), (8, 8), in_chans=6)
    assert depthwise.flops == 4 * 4 * 6 * 9
    assert depthwise.mac == 8 * 8 * 6 + 4 * 4 * 6 + 6 * 9


def test_elementwise_ops_have_mac_but_no_flops() -> None:
    """Guideline G4: ReLU and shuffle move data; views (transpose) alone are free."""
    block = nn.Sequential(nn.ReLU(), ChannelShuffle(2))
    stats = analyze(block, (3, 3), in_chans=4)
    assert stats.flops == 0
    assert stats.mac == 2 * 36 + 2 * 36  # ReLU read+write, shuffle copy read+write


def test_linear_layer() -> None:
    stats = analyze(nn.Sequential(nn.Flatten(), nn.Linear(12, 5)), (2, 2), in_chans=3)
    assert stats.flops == 12 * 5
    assert stats.mac == 12 + 5 + 12 * 5 + 5


def test_counts_scale_with_input_size() -> None:
    small = analyze_name("shufflenet_v2_x0_5", (128, 128))
    large = analyze_name("shufflenet_v2_x0_5", (256, 256))
    fc = 1024 * 1000
    assert (large.flops - fc) == pytest.approx(4 * (small.flops - fc), rel=0.01)


@pytest.mark.parametrize("groups", tables.V1_GROUPS)
def test_v1_table1_complexity_within_2_percent(groups: int) -> None:
    stats = analyze_name(f"shufflenet_v1_g{groups}_x1_0")
    assert stats.mflops == pytest.approx(tables.V1_TABLE1_MFLOPS[groups], rel=0.02)


@pytest.mark.parametrize("name", list_models("shufflenet_v1_*"))
def test_v1_every_width_within_table2_or_megvii_tolerance(name: str) -> None:
    info = model_info(name)
    if info.paper_mflops is None:
        pytest.skip("the paper gives no figure for this width")
    tolerance = 0.02 if info.paper_mflops_source == "megvii" else tables.V1_PAPER_TOLERANCE[info.width_mult]
    assert analyze_name(name).mflops == pytest.approx(info.paper_mflops, rel=tolerance)


@pytest.mark.parametrize("width", tables.V2_WIDTHS)
def test_v2_table5_flops_and_params(width: float) -> None:
    name = f"shufflenet_v2_x{width:g}".replace(".", "_") + ("_0" if width.is_integer() else "")
    stats = analyze_name(name)
    assert stats.mflops == pytest.approx(tables.V2_TABLE5_MFLOPS[width], rel=0.02)
    assert stats.params == tables.V2_TORCHVISION_PARAMS[width]
    assert stats.params / 1e6 == pytest.approx(tables.V2_TABLE5_MPARAMS[width], abs=0.05)


def test_v2_params_counted_on_meta_equal_real_model() -> None:
    from shufflenet import create_model

    real = analyze(create_model("shufflenet_v2_x0_5"), (64, 64))
    meta = analyze_name("shufflenet_v2_x0_5", (64, 64))
    assert (real.params, real.flops, real.mac) == (meta.params, meta.flops, meta.mac)


def test_per_layer_rows_sum_to_totals_and_name_modules() -> None:
    stats = analyze_name("shufflenet_v1_g3_x0_5", (64, 64))
    assert sum(r.flops for r in stats.layers) == stats.flops
    names = {r.name for r in stats.layers}
    assert "stage2.0.compress.0" in names and "fc" in names
    unit = next(r for r in stats.layers if r.name == "stage2.0")  # concat + ReLU of the unit itself
    assert unit.flops == 0 and unit.mac > 0 and "cat" in unit.ops


def test_mac_lower_bound_equality_at_equal_widths() -> None:
    h = w = 56
    c = 128
    flops = h * w * c * c
    assert conv1x1_mac(h, w, c, c) == pytest.approx(mac_lower_bound(h, w, flops))
    assert conv1x1_mac(h, w, 64, 256) > mac_lower_bound(h, w, h * w * 64 * 256)


def test_model_table_rows() -> None:
    rows = model_table(["shufflenet_v2_x1_0", "shufflenet_v1_g3_x1_0"])
    assert rows[0]["params"] == 2_278_604 and rows[0]["paper_mflops"] == 146
    assert abs(rows[1]["mflops_vs_paper_pct"]) < 2
    assert rows[1]["mac_m"] > 0
