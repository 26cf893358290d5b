"""features_only: multi-scale maps with timm's feature_info API, checked against the papers' tables."""

import pytest
import torch
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor

from shufflenet import create_model, list_models, model_info, tables
from shufflenet.checkpoints import make_checkpoint, save_checkpoint
from shufflenet.models.features import FeatureInfo, ShuffleNetFeatures

STRIDES = (4, 8, 16, 32, 32)
MODULES = ("maxpool", "stage2", "stage3", "stage4", "conv5")
PLUS_MODULES = ("stage1", "stage2", "stage3", "stage4", "conv5")  # ShuffleNetV2+: no max-pool, four stages


def _nearest_multiple(value: float, divisor: int) -> int:
    return max(divisor, int(value / divisor + 0.5) * divisor)


def paper_channels(name: str) -> tuple[int, ...]:
    """Stem + stage 2/3/4 (+ conv5 for v2) channels from the tables: v2 Table 5, v1 Table 1 / megvii / its rule."""
    info = model_info(name)
    if info.family == "shufflenet_v2":
        return tables.V2_TABLE5_CHANNELS[info.width_mult]
    if info.family == "shufflenet_v2_plus":
        return (*tables.V2_PLUS_STAGE_CHANNELS[info.extra["size"]], tables.V2_PLUS_HEAD_CHANNELS)
    key = (info.groups, info.width_mult)
    if key in tables.V1_MEGVII_CHANNELS:
        return tables.V1_MEGVII_CHANNELS[key]
    stages = tables.V1_TABLE1_STAGE_CHANNELS[info.groups]
    if info.width_mult == 1.0:
        return (24, *stages)
    # Widths the paper gives no table for: Table 1 scaled, rounded to multiples of 4g (stem: of g).
    stem = _nearest_multiple(24 * info.width_mult, info.groups)
    return (stem, *(_nearest_multiple(c * info.width_mult, 4 * info.groups) for c in stages))


def seeded(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(name, **kwargs)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # non-trivial statistics, so a wrong load shows
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("name", list_models())
def test_every_level_shape_channels_and_stride(name: str) -> None:
    model = seeded(name)
    expected = paper_channels(name)
    levels = len(expected)  # v1: stem + 3 stages; v2: + conv5
    features = ShuffleNetFeatures(model, out_indices=range(levels)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = features(x)
        last = model.forward_features(x)
    assert [tuple(m.shape) for m in maps] == [(2, c, 64 // s, 64 // s) for c, s in zip(expected, STRIDES, strict=False)]
    info = features.feature_info
    assert info.channels() == list(expected)
    assert info.reduction() == list(STRIDES[:levels])
    modules = PLUS_MODULES if model_info(name).family == "shufflenet_v2_plus" else MODULES
    assert info.module_name() == list(modules[:levels])
    assert len(info) == levels
    torch.testing.assert_close(maps[-1], last, rtol=0, atol=0)  # the deepest level is forward_features

    default = ShuffleNetFeatures(model).eval()  # strides 4-32; conv5 is an extra, not a default
    assert default.feature_info.out_indices == (0, 1, 2, 3)
    with torch.no_grad():
        for got, want in zip(default(x), maps[:4], strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("name", "out_indices", "modules"),
    [
        ("shufflenet_v2_x0_5", (1, 3), ["stage2", "stage4"]),
        ("shufflenet_v2_x0_5", (4,), ["conv5"]),
        ("shufflenet_v2_x0_5", (-1, 0), ["maxpool", "conv5"]),
        ("shufflenet_v1_g8_x0_25", (2,), ["stage3"]),
        ("shufflenet_v1_g8_x0_25", (-1,), ["stage4"]),
    ],
)
def test_out_indices_select_levels_and_drop_unused_modules(name, out_indices, modules) -> None:
    features = create_model(name, features_only=True, out_indices=out_indices).eval()
    assert features.feature_info.module_name() == modules
    with torch.no_grad():
        maps = features(torch.randn(1, 3, 64, 64))
    assert [m.shape[1] for m in maps] == features.feature_info.channels()
    keys = {key.split(".")[0] for key in features.state_dict()}
    deepest = MODULES.index(modules[-1])
    assert keys == {"conv1", *[m for m in MODULES[: deepest + 1] if m != "maxpool"]}  # no fc, no unused stage


def test_bad_out_indices_name_the_valid_levels() -> None:
    with pytest.raises(ValueError, match=r"out_indices entry 4 .* valid: 0\.\.3 \(0=maxpool, 1=stage2"):
        create_model("shufflenet_v1_g3_x0_5", features_only=True, out_indices=(1, 4))
    with pytest.raises(ValueError, match="out_indices is empty"):
        create_model("shufflenet_v2_x0_5", features_only=True, out_indices=())
    with pytest.raises(ValueError, match="pass features_only=True"):
        create_model("shufflenet_v2_x0_5", out_indices=(1, 2))
    with pytest.raises(TypeError, match="not a ShuffleNet"):
        ShuffleNetFeatures(torch.nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match=r"expected an input of shape \(N, 3, H, W\)"):
        create_model("shufflenet_v2_x0_5", features_only=True)(torch.randn(1, 1, 32, 32))


def test_feature_info_accessors_follow_timm() -> None:
    info = create_model("shufflenet_v2_x1_0", features_only=True, out_indices=(1, 2)).feature_info
    assert isinstance(info, FeatureInfo)
    assert info.channels() == [116, 232] and info.reduction() == [8, 16]
    assert info.channels(4) == 1024 and info.reduction([0, 4]) == [4, 32] and info.module_name(0) == "maxpool"
    assert info.get_dicts(keys=["num_chs"]) == [{"num_chs": 116}, {"num_chs": 232}]
    assert info[3] == {"num_chs": 464, "reduction": 32, "module": "stage4", "index": 3}
    assert info.from_other((0,)).channels() == [24]


def _randomised_torchvision(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.shufflenet_v2_x0_5().eval()
    for module in reference.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "shufflenetv2_x0.5-torchvision.pth"
    torch.save(reference.state_dict(), path)
    return reference, path


def test_torchvision_file_loads_into_the_feature_model(tmp_path) -> None:
    reference, path = _randomised_torchvision(tmp_path)
    features = create_model("shufflenet_v2_x0_5", weights=path, features_only=True, out_indices=(0, 1, 2, 3, 4))
    extractor = create_feature_extractor(reference, list(MODULES))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got, want = features.eval()(x), extractor(x)
    for level, module in zip(got, MODULES, strict=True):
        torch.testing.assert_close(level, want[module], rtol=0, atol=0)
    # The feature model's state dict is the full one without the classifier: it loads strictly from it.
    full = reference.state_dict()
    assert set(full) - set(features.state_dict()) == {"fc.weight", "fc.bias"}
    fresh = create_model("shufflenet_v2_x0_5", features_only=True, out_indices=(0, 1, 2, 3, 4))
    fresh.load_state_dict({k: v for k, v in full.items() if not k.startswith("fc.")}, strict=True)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_our_checkpoint_loads_into_the_feature_model(tmp_path, suffix) -> None:
    name = "shufflenet_v1_g3_x0_5"
    trained = seeded(name, num_classes=2)  # the classifier's class count does not matter to the backbone
    path = save_checkpoint(tmp_path / f"ckpt{suffix}", make_checkpoint(trained, name, class_names=["ant", "bee"]))
    features = create_model(name, weights=path, features_only=True).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(features(x)[-1], trained.forward_features(x), rtol=0, atol=0)
