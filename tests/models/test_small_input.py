"""small_input: the optional tiny-image stem (issue 12); the default stays the papers' stride-4 stem."""

import pytest
import torch
import torch.nn.functional as F

from shufflenet import create_model
from shufflenet.checkpoints import CheckpointError, load_model, make_checkpoint, save_checkpoint

NAMES = ("shufflenet_v2_x0_5", "shufflenet_v1_g3_x0_5")


def seeded(name: str, **kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, **kwargs)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # non-trivial statistics, so a wrong stem shows
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def reference_features(model: torch.nn.Module, x: torch.Tensor, conv1_stride: int, maxpool: bool) -> torch.Tensor:
    """forward_features written out with an explicit stem: conv1 at ``conv1_stride``, then the max-pool or not."""
    conv, bn, relu = model.conv1
    x = relu(bn(F.conv2d(x, conv.weight, stride=conv1_stride, padding=1)))
    if maxpool:
        x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    x = model.stage4(model.stage3(model.stage2(x)))
    return model.conv5(x) if hasattr(model, "conv5") else x


@pytest.mark.parametrize("name", NAMES)
def test_default_is_the_papers_stride_4_stem(name: str) -> None:
    default, explicit = seeded(name), seeded(name, small_input=False)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(default(x), explicit(x))
        assert torch.equal(default.forward_features(x), reference_features(default, x, 2, maxpool=True))
    assert isinstance(default.maxpool, torch.nn.MaxPool2d) and default.conv1[0].stride == (2, 2)
    assert default.small_input is False and default.stem_reduction == 4
    assert default.forward_features(x).shape[-2:] == (1, 1)  # stride 32


@pytest.mark.parametrize("name", NAMES)
def test_small_input_drops_the_max_pool_and_keeps_every_weight(name: str) -> None:
    default, small = seeded(name), seeded(name, small_input=True)
    assert list(small.state_dict()) == list(default.state_dict())
    assert all(
        torch.equal(a, b) for a, b in zip(small.state_dict().values(), default.state_dict().values(), strict=True)
    )
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = small.forward_features(x)
        assert torch.equal(features, reference_features(small, x, 2, maxpool=False))
        assert not torch.equal(small(x), default(x))
    assert features.shape[-2:] == (2, 2)  # stride 16: twice as fine as the paper's at every stage


@pytest.mark.parametrize("name", NAMES)
def test_small_input_feature_strides(name: str) -> None:
    backbone = create_model(name, features_only=True, small_input=True).eval()
    assert backbone.feature_info.reduction() == [2, 4, 8, 16]
    with torch.no_grad():
        maps = backbone(torch.randn(1, 3, 64, 64))
    assert [m.shape[-1] for m in maps] == [64 // r for r in backbone.feature_info.reduction()]
    assert create_model(name, features_only=True).feature_info.reduction() == [4, 8, 16, 32]


def test_checkpoint_rebuilds_small_input(tmp_path) -> None:
    name = "shufflenet_v2_x0_5"
    model = seeded(name, small_input=True)
    checkpoint = make_checkpoint(model, name, [str(i) for i in range(10)], model_kwargs={"small_input": True})
    path = save_checkpoint(tmp_path / "small.pt", checkpoint)
    loaded = load_model(path)
    assert loaded.small_input is True
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    with pytest.raises(CheckpointError, match=r"built with small_input=True, this one has small_input=False"):
        create_model(name, num_classes=10, weights=path)
    rebuilt = create_model(name, num_classes=10, small_input=True, weights=path).eval()
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))
