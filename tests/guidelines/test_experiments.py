"""The guideline micro-benchmarks as built: equal FLOPs within an experiment, MAC trends by the paper's formulas."""

import pytest
import torch

from shufflenet import tables
from shufflenet.analysis import conv1x1_mac, mac_lower_bound
from shufflenet.guidelines.experiments import Bottleneck, build_model, count_spec, experiment_specs

HW = tables.V2_GUIDELINE_INPUT_SIZE**2
BLOCKS = tables.V2_GUIDELINE_BLOCKS
PROFILES = ["arm", "gpu"]


def counted(experiment: str, profile: str, multiplier: float) -> list[tuple]:
    return [(spec, count_spec(spec)) for spec in experiment_specs(experiment, profile, (multiplier,))]


def assert_equal_flops(rows: list[tuple], tolerance: float = 0.07) -> None:
    flops = [c["flops"] for _, c in rows]
    assert max(flops) / min(flops) - 1 <= tolerance, [(s.name, f) for (s, _), f in zip(rows, flops, strict=True)]


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("multiplier", [1, 2, 4])
def test_g1_equal_flops_and_mac_rises_with_the_ratio_as_the_bound_predicts(profile: str, multiplier: int) -> None:
    rows = counted("G1", profile, multiplier)
    assert [s.name for s, _ in rows] == ["1:1", "1:2", "1:6", "1:12"]
    assert_equal_flops(rows)
    excess = []
    for spec, c in rows:
        c1, c2 = spec.channels
        # Each block is c1 -> c2 -> c1; the paper's MAC formula and Eq. 1 bound, per conv, by hand.
        assert c["flops"] == BLOCKS * 2 * HW * c1 * c2
        assert c["mac"] == BLOCKS * (conv1x1_mac(56, 56, c1, c2) + conv1x1_mac(56, 56, c2, c1))
        bound = BLOCKS * 2 * mac_lower_bound(56, 56, HW * c1 * c2)
        assert c["mac_bound"] == pytest.approx(bound)
        assert c["mac"] >= bound * (1 - 1e-12)
        excess.append(c["mac"] / bound)
    assert excess[0] == pytest.approx(1.0)  # equal widths reach the bound
    assert excess == sorted(excess) and len(set(excess)) == 4
    macs = [c["mac"] for _, c in rows]
    assert macs == sorted(macs) and len(set(macs)) == 4


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("multiplier", [1, 2, 4])
def test_g2_equal_flops_and_mac_rises_with_groups(profile: str, multiplier: int) -> None:
    rows = counted("G2", profile, multiplier)
    assert [s.groups for s, _ in rows] == [1, 2, 4, 8]
    assert_equal_flops(rows)
    for spec, c in rows:
        width = spec.channels[0]
        assert width % spec.groups == 0
        assert c["mac"] == BLOCKS * conv1x1_mac(56, 56, width, width, spec.groups)
    macs = [c["mac"] for _, c in rows]
    assert macs == sorted(macs) and len(set(macs)) == 4


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("multiplier", [1, 2, 4])
def test_g3_equal_flops_and_fragment_counts(profile: str, multiplier: int) -> None:
    rows = counted("G3", profile, multiplier)
    assert [s.name for s, _ in rows] == list(tables.V2_TABLE3_G3)
    assert_equal_flops(rows)
    assert rows[0][0].channels[0] == tables.V2_TABLE3_CHANNELS[profile][0] * multiplier
    for spec, c in rows:
        model = build_model(spec)
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        assert len(convs) == BLOCKS * int(spec.name[0])  # "4-fragment-..." has four 1x1 convs per block
        assert all(conv.kernel_size == (1, 1) for conv in convs)
        if spec.kind == "series":
            assert c["mac"] == pytest.approx(c["mac_bound"])  # square convs reach the bound
        else:  # the concatenation copies every output once more
            assert c["mac"] > sum(conv1x1_mac(56, 56, conv.in_channels, conv.out_channels) for conv in convs)


@pytest.mark.parametrize("multiplier", [1, 2, 4])
def test_g4_equal_flops_and_elementwise_ops_add_mac(multiplier: int) -> None:
    rows = {spec.name: c for spec, c in counted("G4", "arm", multiplier)}
    width = tables.V2_TABLE4_CHANNELS[0] * multiplier
    assert len({c["flops"] for c in rows.values()}) == 1
    both, relu, shortcut, neither = (
        rows[n]["mac"] for n in ("ReLU+shortcut", "ReLU only", "shortcut only", "no ReLU/shortcut")
    )
    assert neither < relu < both and neither < shortcut < both
    assert both - neither == (relu - neither) + (shortcut - neither)
    # The shortcut add reads two maps and writes one: 3 * hw * c per block.
    assert shortcut - neither == BLOCKS * 3 * HW * width
    # In-place ReLU reads and writes: twice on the c/4 maps, once on the c map after the last conv.
    assert relu - neither == BLOCKS * 2 * HW * (2 * (width // 4) + width)


def test_bottleneck_switches_relu_and_shortcut() -> None:
    x = torch.randn(2, 16, 8, 8)
    plain = Bottleneck(16, 4, relu=False, shortcut=False).eval()
    residual = Bottleneck(16, 4, relu=False, shortcut=True).eval()
    residual.load_state_dict(plain.state_dict())
    with torch.no_grad():
        assert torch.allclose(residual(x.clone()), plain(x) + x, atol=1e-6)
        assert (Bottleneck(16, 4, relu=True, shortcut=True)(x.clone()) >= 0).all()


def test_v1_vs_v2_pairs_every_registry_width_with_table8() -> None:
    specs = experiment_specs("v1_vs_v2")
    assert [s.multiplier for s in specs] == [0.5, 0.5, 1.0, 1.0, 1.5, 1.5, 2.0, 2.0]
    assert all("_v1_g3_" in s.model for s in specs[0::2]) and all("_v2_" in s.model for s in specs[1::2])
    for spec in specs:
        assert spec.paper_mflops == tables.V2_TABLE8_SHUFFLENET[spec.model]["mflops"]
        assert spec.paper_gpu and spec.paper_arm and spec.input_size == 224
    with pytest.raises(ValueError, match=r"width 0\.25"):
        experiment_specs("v1_vs_v2", model_widths=(0.25,))


def test_paper_widths_hold_flops_fixed_in_tables() -> None:
    """The paper's own widths (Tables 1 and 2) keep FLOPs within 7% of the first row, as the issue says."""
    for profile in PROFILES:
        g1 = [c1 * c2 for c1, c2 in (row[f"{profile}_channels"] for row in tables.V2_TABLE1_G1.values())]
        assert max(g1) / min(g1) - 1 <= 0.07
        for name, row in tables.V2_TABLE1_G1.items():
            c1, c2 = row[f"{profile}_channels"]
            assert c2 / c1 == pytest.approx(int(name.split(":")[1]), rel=0.1)
        g2 = [row[f"{profile}_channels"] ** 2 / g for g, row in tables.V2_TABLE2_G2.items()]
        assert max(g2) / min(g2) - 1 <= 0.07
    speeds = [*tables.V2_TABLE1_G1.values(), *tables.V2_TABLE2_G2.values(), *tables.V2_TABLE3_G3.values()]
    assert all(len(row["gpu"]) == len(row["arm"]) == 3 for row in [*speeds, *tables.V2_TABLE4_G4.values()])
