import pytest
import torch

from shufflenet import create_model, list_models, model_info


def test_list_models_names_follow_torchvision() -> None:
    names = list_models()
    assert len(names) == 32
    assert {"shufflenet_v2_plus_small", "shufflenet_v2_plus_medium", "shufflenet_v2_plus_large"} <= set(names)
    assert {"shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0"} <= set(names)
    assert "shufflenet_v1_g3_x1_0" in names and "shufflenet_v1_g8_x0_25" in names
    assert list_models("shufflenet_v1_g3_*") == [f"shufflenet_v1_g3_x{w}" for w in ("0_25", "0_5", "1_0", "1_5", "2_0")]


@pytest.mark.parametrize("name", ["shufflenet_v2_x0_5", "shufflenet_v1_g2_x0_25", "shufflenet_v2_plus_small"])
def test_uniform_model_api(name: str) -> None:
    model = create_model(name, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    features = model.forward_features(x)
    assert features.shape[:2] == (2, model.num_features) and features.shape[2:] == (2, 2)
    logits = model.forward_head(features)
    assert torch.allclose(logits, model(x))
    assert model.get_classifier() is model.fc
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.num_classes == 3


def test_unknown_name_suggests_valid_names() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'shufflenet_v1_g3_x0_7'.*did you mean.*shufflenet_v1_g3_x1_0"):
        create_model("shufflenet_v1_g3_x0_7")


@pytest.mark.parametrize("bad", [-1, -3, 2.5])
def test_bad_num_classes(bad) -> None:
    with pytest.raises(ValueError, match="num_classes must be an integer >= 0"):
        create_model("shufflenet_v2_x0_5", num_classes=bad)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 0"):
        create_model("shufflenet_v2_x0_5").reset_classifier(bad)


def test_wrong_input_channels_or_dtype() -> None:
    model = create_model("shufflenet_v2_x0_5")
    with pytest.raises(ValueError, match=r"expected an input of shape \(N, 3, H, W\), got \(1, 1, 32, 32\)"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(ValueError, match="got \\(3, 32, 32\\)"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))


def test_model_info_carries_paper_figures() -> None:
    info = model_info("shufflenet_v1_g4_x1_0")
    assert (info.family, info.groups, info.width_mult, info.paper_mflops) == ("shufflenet_v1", 4, 1.0, 133)
