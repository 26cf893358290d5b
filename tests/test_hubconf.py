"""torch.hub.load(repo, NAME, source='local', weights=PATH) for every registered model."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torchvision

from shufflenet import list_models
from shufflenet.checkpoints import CheckpointError, load_model, make_checkpoint, save_checkpoint
from shufflenet.models import create_model
from shufflenet.transforms import Preprocessing

REPO = str(Path(__file__).resolve().parents[1])


def hub_load(name: str, **kwargs: object) -> torch.nn.Module:
    return torch.hub.load(REPO, name, source="local", verbose=False, **kwargs)


def import_hubconf() -> ModuleType:
    spec = importlib.util.spec_from_file_location("hubconf", Path(REPO) / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hub_entry_points_are_exactly_the_registered_models() -> None:
    """What torch.hub.list shows (public callables of hubconf; it only lists GitHub repos itself)."""
    hubconf = import_hubconf()
    entries = [name for name in dir(hubconf) if callable(getattr(hubconf, name)) and not name.startswith("_")]
    assert entries == list_models()
    assert all(name in getattr(hubconf, name).__doc__ for name in entries)
    assert hubconf.dependencies == ["torch", "torchvision"]


@pytest.mark.parametrize("name", list_models())
def test_every_model_builds_through_the_hub(name: str) -> None:
    with torch.device("meta"):
        model = hub_load(name, num_classes=7)
        expected = create_model(name, num_classes=7)
    assert type(model) is type(expected)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in expected.state_dict().items()}


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_our_checkpoint_loads_with_its_options_classes_and_preprocessing(tmp_path: Path, suffix: str) -> None:
    """The checkpoint's model_kwargs apply: a shuffle_order='megvii' file must not come back in paper order."""
    source = create_model("shufflenet_v1_g3_x0_5", num_classes=3, shuffle_order="megvii").eval()
    preprocessing = Preprocessing(crop_size=64, resize_size=72)
    checkpoint = make_checkpoint(
        source, "shufflenet_v1_g3_x0_5", ["ant", "bee", "wasp"], preprocessing, {"shuffle_order": "megvii"}
    )
    path = save_checkpoint(tmp_path / f"ours{suffix}", checkpoint)
    model = hub_load("shufflenet_v1_g3_x0_5", weights=str(path))
    assert model.training  # as torch.hub models come
    model.eval()
    assert model.shuffle_order == "megvii" and model.class_names == ["ant", "bee", "wasp"]
    assert model.preprocessing == preprocessing
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"built with shuffle_order='megvii', this one has shuffle_order='paper'"):
        hub_load("shufflenet_v1_g3_x0_5", weights=str(path), shuffle_order="paper")
    with pytest.raises(ValueError, match=r"holds 'shufflenet_v1_g3_x0_5', not 'shufflenet_v1_g8_x0_5'"):
        hub_load("shufflenet_v1_g8_x0_5", weights=str(path))


def test_torchvision_v2_file_loads_unchanged_with_its_class_count(tmp_path: Path) -> None:
    reference = torchvision.models.shufflenet_v2_x0_5(num_classes=5).eval()
    path = tmp_path / "shufflenetv2_x0.5.pth"
    torch.save(reference.state_dict(), path)
    model = hub_load("shufflenet_v2_x0_5", weights=str(path)).eval()
    assert model.fc.out_features == 5 and model.preprocessing == Preprocessing()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=0)
    # an explicit other class count re-initialises the classifier, keeping the backbone
    retargeted = hub_load("shufflenet_v2_x0_5", weights=str(path), num_classes=2)
    assert retargeted.fc.out_features == 2
    assert torch.equal(retargeted.conv5[0].weight, reference.conv5[0].weight)


def test_hub_checks_our_checkpoint_as_load_model_does(tmp_path: Path) -> None:
    """The hub reads our files with shufflenet.load_model's checks: a key the model lacks is refused, not skipped."""
    source = create_model("shufflenet_v2_x0_5", num_classes=2)
    checkpoint = make_checkpoint(source, "shufflenet_v2_x0_5", ["ant", "bee"])
    checkpoint["state_dict"]["fc.scale"] = torch.ones(2)  # a tensor no shufflenet_v2_x0_5 has
    path = save_checkpoint(tmp_path / "extra.pt", checkpoint)
    with pytest.raises(CheckpointError) as from_library:
        load_model(path)
    with pytest.raises(CheckpointError) as from_hub:
        hub_load("shufflenet_v2_x0_5", weights=str(path))
    assert str(from_hub.value) == str(from_library.value) and "'fc.scale'" in str(from_hub.value)


def test_other_class_count_keeps_the_files_options_and_backbone(tmp_path: Path) -> None:
    """num_classes=N re-initialises the classifier only; the file's shuffle_order still applies unasked."""
    torch.manual_seed(0)
    source = create_model("shufflenet_v1_g3_x0_5", num_classes=3, shuffle_order="megvii")
    checkpoint = make_checkpoint(
        source, "shufflenet_v1_g3_x0_5", ["ant", "bee", "wasp"], None, {"shuffle_order": "megvii"}
    )
    path = save_checkpoint(tmp_path / "ours.pt", checkpoint)
    model = hub_load("shufflenet_v1_g3_x0_5", weights=str(path), num_classes=5)
    assert model.shuffle_order == "megvii" and model.fc.out_features == 5
    assert model.class_names == ["0", "1", "2", "3", "4"]
    backbone = {k: v for k, v in source.state_dict().items() if not k.startswith("fc.")}
    for key, tensor in backbone.items():
        assert torch.equal(model.state_dict()[key], tensor), key
