"""timm's own model checks (huggingface/pytorch-image-models tests/test_models.py) on every registered model,
through timm's public API: the cfg and head interface of test_model_default_cfgs, the FX tracer settings of
its FX tests (forward, train-mode backward, FX then TorchScript) and test_model_forward_torchscript.

The upstream file itself runs against our models with `-k shufflenet` (docs/backbone.md, "timm and
torchvision tools"); this file keeps the same checks in `make test`. Skipped without timm.
"""

from __future__ import annotations

import pytest
import torch

import shufflenet
from shufflenet.timm_compat import register_when_timm_imported

timm = pytest.importorskip("timm")
feature_extraction = pytest.importorskip("torchvision.models.feature_extraction")
register_when_timm_imported()  # timm is imported by now: registers at once (nothing twice)

NAMES = shufflenet.list_models()


def _fx_model(model: torch.nn.Module, train: bool = False) -> torch.nn.Module:
    """timm's _create_fx_model: trace with timm's leaf modules / autowrapped functions, return the last node."""
    tracer_kwargs = {
        "leaf_modules": timm.models.get_notrace_modules(),
        "autowrap_functions": timm.models.get_notrace_functions(),
        "param_shapes_constant": True,
    }
    train_nodes, eval_nodes = feature_extraction.get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    return feature_extraction.create_feature_extractor(
        model, train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]], tracer_kwargs=tracer_kwargs
    )


@pytest.mark.parametrize("name", NAMES)
def test_timm_default_cfg_and_head_match_the_model(name: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False).eval()
    cfg = model.default_cfg
    assert model.num_classes == cfg["num_classes"] == 1000
    assert model.num_features > 0 and model.head_hidden_size == model.num_features
    state_dict = model.state_dict()
    assert f"{cfg['first_conv']}.weight" in state_dict and f"{cfg['classifier']}.weight" in state_dict
    assert state_dict[f"{cfg['first_conv']}.weight"].shape[1] == cfg["input_size"][0]
    assert state_dict[f"{cfg['classifier']}.weight"].shape == (cfg["num_classes"], model.head_hidden_size)
    x = torch.randn(1, *cfg["input_size"])
    with torch.no_grad():
        features = model.forward_features(x)
        pre_logits = model.forward_head(features, pre_logits=True)
        logits = model(x)
        assert features.shape == (1, model.num_features, *cfg["pool_size"])
        assert pre_logits.shape == (1, model.head_hidden_size)
        torch.testing.assert_close(model.get_classifier()(pre_logits), logits, rtol=0, atol=0)

        model.reset_classifier(0)  # no classifier: the pooled features
        assert model.num_classes == 0
        torch.testing.assert_close(model(x), pre_logits, rtol=0, atol=0)
        model.reset_classifier(0, "")  # nor global pooling: the feature map
        torch.testing.assert_close(model(x), features, rtol=0, atol=0)
        model.reset_classifier(5, "avg")
        assert model(x).shape == (1, 5) and model.num_classes == 5

        torch.manual_seed(0)
        headless = timm.create_model(name, pretrained=False, num_classes=0, global_pool="").eval()
        torch.testing.assert_close(headless(x), features, rtol=0, atol=0)
    assert cfg["mean"] == timm.data.IMAGENET_DEFAULT_MEAN and cfg["std"] == timm.data.IMAGENET_DEFAULT_STD


def test_timm_cfg_pool_size_follows_the_tiny_image_stem() -> None:
    model = timm.create_model("shufflenet_v1_g3_x0_5", small_input=True).eval()
    with torch.no_grad():
        features = model.forward_features(torch.randn(1, *model.default_cfg["input_size"]))
    assert features.shape[-2:] == model.default_cfg["pool_size"] == (14, 14)
    assert timm.models.get_pretrained_cfg("shufflenet_v1_g3_x0_5").pool_size == (7, 7)  # the registered cfg


def test_timm_rejects_a_pooling_it_does_not_have() -> None:
    with pytest.raises(ValueError, match="global_pool must be 'avg' or ''"):
        timm.create_model("shufflenet_v2_x0_5", global_pool="max")


@pytest.mark.parametrize("name", ["shufflenet_v1_g3_x0_5", "shufflenet_v2_x0_5"])
def test_timm_fx_forward_backward_and_torchscript(name: str) -> None:
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=42).eval()
    with torch.no_grad():
        (traced,) = _fx_model(model)(x).values()
        assert torch.equal(traced, model(x))
        with timm.set_scriptable(True):
            (scripted,) = torch.jit.script(_fx_model(model))(x).values()
        assert torch.equal(scripted, model(x))
        assert torch.equal(torch.jit.script(model)(x), model(x))

    fx_train = _fx_model(model.train(), train=True)
    (out,) = fx_train(x).values()
    out.mean().backward()
    assert out.shape == (2, 42)
    assert all(p.grad is not None for p in fx_train.parameters())
    assert sum(p.numel() for p in fx_train.parameters()) == sum(p.numel() for p in model.parameters())
