"""Every registered model works where torchvision's tools expect a model: torch.fx, create_feature_extractor,
TorchScript (scripted, saved and loaded) and torch.export, with the eager model's outputs.

FX runs on every name (list_models(), so new families are covered when they register); TorchScript and
torch.export, slower, on one model per code path (v1 paper/megvii shuffle, g=1, v2, fused shuffle, tiny-image
stem, features_only, no classifier).
"""

from __future__ import annotations

import functools

import pytest
import torch
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from shufflenet import create_model, list_models
from shufflenet.models import ShuffleNetFeatures, feature_info

SIZE = 64  # the smallest input every model takes down to stride 32 (2 x 2 maps at stage 4)


@functools.cache
def _model(name: str, **kwargs) -> torch.nn.Module:
    """A seeded eval-mode model with non-trivial BN statistics (shared: tests must not modify it)."""
    torch.manual_seed(0)
    model = create_model(name, **kwargs).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return model


def _input(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))


# Every registered name, plus the variants a name cannot spell: megvii's shuffle order and the tiny-image stem.
TRACE_CASES = [(name, ()) for name in list_models()] + [
    ("shufflenet_v1_g8_x0_5", (("shuffle_order", "megvii"),)),
    ("shufflenet_v1_g3_x0_5", (("small_input", True),)),
    ("shufflenet_v2_x0_5", (("small_input", True),)),
]


@pytest.mark.parametrize(("name", "options"), TRACE_CASES)
def test_fx_trace_and_feature_extractor_equal_eager(name: str, options: tuple) -> None:
    model = _model(name, **dict(options))
    x = _input()
    with torch.no_grad():
        assert torch.equal(torch.fx.symbolic_trace(model)(x), model(x))
        levels = feature_info(model)
        extractor = create_feature_extractor(model, {level["module"]: str(i) for i, level in enumerate(levels)})
        want = ShuffleNetFeatures(model, out_indices=range(len(levels)))(x)
        got = extractor(x)
    assert len(want) == len(levels)
    for i, expected in enumerate(want):
        assert torch.equal(got[str(i)], expected), f"level {i} ({levels[i]['module']}) differs"


def test_fx_graph_names_modules_as_torchvision_does() -> None:
    train_nodes, eval_nodes = get_graph_node_names(_model("shufflenet_v2_x0_5"))
    assert train_nodes == eval_nodes
    for node in ("conv1.0", "maxpool", "stage2.0.branch1.0", "stage4.3.branch2.7", "conv5.2", "fc"):
        assert node in eval_nodes
    # the shuffle is ops in the graph (quantization and feature extraction see it), not a call to a Python function
    assert "stage2.0.view" in eval_nodes and "stage2.0.transpose" in eval_nodes


def test_fx_traced_model_still_checks_its_input() -> None:
    traced = torch.fx.symbolic_trace(_model("shufflenet_v1_g3_x0_5"))
    with pytest.raises(ValueError, match=r"expected an input of shape \(N, 3, H, W\), got \(1, 1, 64, 64\)"):
        traced(torch.randn(1, 1, SIZE, SIZE))


def test_fx_trace_of_channels_last_input_gives_the_same_values() -> None:
    model = _model("shufflenet_v1_g3_x0_5")
    x = _input().contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        # the traced graph shuffles in NCHW order; only the conv kernels' summation order may differ
        torch.testing.assert_close(torch.fx.symbolic_trace(model)(x), model(x), rtol=1e-5, atol=1e-6)


def test_fx_graph_module_scripts_and_agrees() -> None:
    features = ShuffleNetFeatures(_model("shufflenet_v1_g3_x0_5"), out_indices=(0, 3))
    scripted = torch.jit.script(torch.fx.symbolic_trace(features))
    x = _input()
    with torch.no_grad():
        for got, want in zip(scripted(x), features(x), strict=True):
            assert torch.equal(got, want)


# One model per code path: torch.jit.script and torch.export take seconds each.
SCRIPT_CASES = [
    ("shufflenet_v1_g8_x0_5", (("shuffle_order", "megvii"),)),
    ("shufflenet_v1_g1_x0_25", (("small_input", True),)),
    ("shufflenet_v2_x0_5", (("num_classes", 0), ("global_pool", ""))),
]


@pytest.mark.parametrize(("name", "options"), SCRIPT_CASES)
def test_torchscript_saved_and_loaded_agrees_with_eager(name: str, options: tuple, tmp_path) -> None:
    model = _model(name, **dict(options))
    path = tmp_path / "scripted.pt"
    torch.jit.save(torch.jit.script(model), str(path))
    loaded = torch.jit.load(str(path))
    x = _input()
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    with pytest.raises(Exception, match=r"expected an input of shape \(N, 3, H, W\)"):
        loaded(torch.randn(1, 1, SIZE, SIZE))


def test_torchscript_of_v2_fused_shuffle_and_v1_features_only() -> None:
    fused = create_model("shufflenet_v2_x0_5").eval()
    fused.load_state_dict(_model("shufflenet_v2_x0_5").state_dict())
    for module in fused.modules():
        if hasattr(module, "fuse_shuffle"):
            module.fuse_shuffle = True
    features = ShuffleNetFeatures(_model("shufflenet_v1_g3_x0_5"), out_indices=(0, 2, 3))
    x = _input()
    with torch.no_grad():
        assert torch.equal(torch.jit.script(fused)(x), _model("shufflenet_v2_x0_5")(x))
        for got, want in zip(torch.jit.script(features)(x), features(x), strict=True):
            assert torch.equal(got, want)


def test_torch_export_saved_and_loaded_agrees_with_eager(tmp_path) -> None:
    model = _model("shufflenet_v1_g8_x0_5", shuffle_order="megvii")
    x = _input()
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(path))
    exported = torch.export.load(str(path)).module()
    with torch.no_grad():
        assert torch.equal(exported(x), model(x))


def test_torch_export_of_features_only() -> None:
    features = create_model("shufflenet_v2_x0_5", features_only=True, out_indices=(1, 4)).eval()
    x = _input(1)
    exported = torch.export.export(features, (x,)).module()
    with torch.no_grad():
        for got, want in zip(exported(x), features(x), strict=True):
            assert torch.equal(got, want)
