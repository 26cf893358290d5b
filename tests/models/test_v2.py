import pytest
import torch
import torchvision

from shufflenet import create_model, tables
from shufflenet.checkpoints import load_pretrained

TORCHVISION_BUILDERS = {
    "shufflenet_v2_x0_5": torchvision.models.shufflenet_v2_x0_5,
    "shufflenet_v2_x1_0": torchvision.models.shufflenet_v2_x1_0,
    "shufflenet_v2_x1_5": torchvision.models.shufflenet_v2_x1_5,
    "shufflenet_v2_x2_0": torchvision.models.shufflenet_v2_x2_0,
}


@pytest.mark.parametrize("width", tables.V2_WIDTHS)
def test_parameter_count_equals_torchvision_exactly(width: float) -> None:
    name = f"shufflenet_v2_x{width:g}".replace(".", "_") + ("_0" if width.is_integer() else "")
    model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == tables.V2_TORCHVISION_PARAMS[width]
    assert model.stage_out_channels == list(tables.V2_TABLE5_CHANNELS[width])


@pytest.mark.parametrize("name", sorted(TORCHVISION_BUILDERS))
def test_torchvision_pth_loads_strict_and_gives_identical_outputs(name: str, tmp_path) -> None:
    reference = TORCHVISION_BUILDERS[name]().eval()
    # Non-trivial BN statistics so that a wrongly mapped BN would show.
    for module in reference.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    path = tmp_path / f"{name}.pth"
    torch.save(reference.state_dict(), path)

    ours = create_model(name).eval()
    ours.load_state_dict(torch.load(path, weights_only=True), strict=True)
    assert list(ours.state_dict()) == list(reference.state_dict())
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(ours(x), reference(x))


def test_create_model_weights_argument_loads_a_torchvision_file(tmp_path) -> None:
    reference = torchvision.models.shufflenet_v2_x0_5().eval()
    path = tmp_path / "tv.pth"
    torch.save(reference.state_dict(), path)
    ours = create_model("shufflenet_v2_x0_5", weights=path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), reference(x))


def test_other_class_count_reinitialises_only_the_classifier(tmp_path) -> None:
    reference = torchvision.models.shufflenet_v2_x0_5()
    path = tmp_path / "tv.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, path)
    ours = create_model("shufflenet_v2_x0_5", num_classes=7)
    report = load_pretrained(ours, path)
    assert report.reinitialized == ["fc.bias", "fc.weight"]
    assert ours.fc.out_features == 7
    assert torch.equal(ours.conv5[0].weight, reference.conv5[0].weight)


def test_stride2_unit_halves_resolution_and_features_are_1_32() -> None:
    model = create_model("shufflenet_v2_x0_5").eval()
    feats = model.forward_features(torch.randn(1, 3, 128, 160))
    assert feats.shape == (1, 1024, 4, 5)
    assert model.forward_head(feats, pre_logits=True).shape == (1, 1024)


def test_fused_shuffle_gives_identical_outputs_and_keys() -> None:
    model = create_model("shufflenet_v2_x0_5", num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        plain = model(x)
        keys = list(model.state_dict())
        units = [m for m in model.modules() if hasattr(m, "fuse_shuffle")]
        assert len(units) == 16
        for unit in units:
            unit.fuse_shuffle = True
        assert torch.equal(model(x), plain)
    assert list(model.state_dict()) == keys
