"""Checkpoint files: safe loading, wrappers, our self-describing format, clear errors."""

import pickle

import pytest
import torch

from shufflenet import create_model
from shufflenet.checkpoints import (
    CheckpointError,
    load_checkpoint,
    load_model,
    load_pretrained,
    make_checkpoint,
    read_file,
    save_checkpoint,
    unwrap_state_dict,
)
from shufflenet.transforms import Preprocessing

ARCH = "shufflenet_v1_g3_x0_25"


def trained_like(name: str = ARCH, num_classes: int = 3) -> torch.nn.Module:
    model = create_model(name, num_classes=num_classes)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_checkpoint_round_trip_is_self_describing(tmp_path, suffix: str) -> None:
    model = trained_like()
    preprocessing = Preprocessing.for_size(64, channel_order="BGR")
    checkpoint = make_checkpoint(model, ARCH, ["ant", "bee", "wasp"], preprocessing, epoch=4)
    path = save_checkpoint(tmp_path / f"best{suffix}", checkpoint)
    loaded = load_model(path)
    assert loaded.arch == ARCH and loaded.class_names == ["ant", "bee", "wasp"]
    assert loaded.preprocessing == preprocessing and not loaded.training
    assert loaded.checkpoint_meta["epoch"] == 4
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path) -> None:
    path = tmp_path / "run" / "last.pt"
    save_checkpoint(path, make_checkpoint(trained_like(), ARCH))
    save_checkpoint(path, make_checkpoint(trained_like(), ARCH))  # overwrite in place
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_pickled_code_is_refused_with_a_reason(tmp_path) -> None:
    path = tmp_path / "whole_model.pth"
    torch.save(trained_like(), path)  # a pickled nn.Module, not a state_dict
    with pytest.raises(CheckpointError, match=r"whole_model\.pth holds pickled Python objects.*refuses to unpickle"):
        read_file(path)


def test_malicious_pickle_never_runs(tmp_path) -> None:
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"state_dict": Exploit()}))
    with pytest.raises(CheckpointError):
        read_file(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content,match",
    [(b"", "is empty"), (b"not a checkpoint at all", "not a readable PyTorch file")],
)
def test_damaged_files(tmp_path, content: bytes, match: str) -> None:
    path = tmp_path / "w.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        read_file(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_file(tmp_path / "missing.pth")


def test_unwrap_state_dict_wrappers_and_prefixes() -> None:
    tensor = torch.zeros(1)
    assert unwrap_state_dict({"model": {"module.fc.weight": tensor}}) == {"fc.weight": tensor}
    assert unwrap_state_dict({"state_dict": {"_orig_mod.a": tensor}, "epoch": 3}) == {"a": tensor}
    assert unwrap_state_dict({"a": tensor, "epoch": 3}) == {"a": tensor}


def test_wrong_architecture_names_first_bad_key(tmp_path) -> None:
    path = tmp_path / "v2.pth"
    torch.save(create_model("shufflenet_v2_x0_5").state_dict(), path)
    with pytest.raises(CheckpointError, match=r"v2\.pth has no key 'stage2\.0\.compress\.0\.weight'"):
        load_pretrained(create_model(ARCH), path)
    with pytest.raises(CheckpointError, match=r"key 'conv1\.0\.weight' has shape \(24, 3, 3, 3\).*\(6, 3, 3, 3\)"):
        load_pretrained(create_model("shufflenet_v1_g3_x0_25"), _save(tmp_path, "shufflenet_v1_g3_x1_0"))


def _save(tmp_path, name):
    path = tmp_path / f"{name}.pth"
    torch.save(create_model(name).state_dict(), path)
    return path


def test_plain_safetensors_state_dict_loads(tmp_path) -> None:
    from safetensors.torch import save_file

    source = trained_like(num_classes=1000)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    target = create_model(ARCH, num_classes=5)
    report = load_pretrained(target, path)
    assert report.reinitialized == ["fc.bias", "fc.weight"]
    assert torch.equal(target.conv1[0].weight, source.conv1[0].weight)
    assert "re-initialised fc.bias, fc.weight" in report.summary()


def test_load_checkpoint_rejects_plain_state_dict(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="is not a shufflenet checkpoint"):
        load_checkpoint(_save(tmp_path, ARCH))


def test_load_model_rejects_incomplete_checkpoint(tmp_path) -> None:
    checkpoint = make_checkpoint(trained_like(), ARCH)
    del checkpoint["arch"]
    path = save_checkpoint(tmp_path / "c.pt", checkpoint)
    with pytest.raises(CheckpointError, match="missing key 'arch'"):
        load_model(path)
    checkpoint = make_checkpoint(trained_like(), ARCH)
    checkpoint["arch"] = "shufflenet_v9"
    with pytest.raises(CheckpointError, match="unknown model 'shufflenet_v9'"):
        load_model(save_checkpoint(tmp_path / "d.pt", checkpoint))


def test_make_checkpoint_checks_class_names() -> None:
    with pytest.raises(ValueError, match="2 class names for a model with 3 outputs"):
        make_checkpoint(trained_like(), ARCH, ["a", "b"])


def test_checkpoint_model_options_must_match_the_model(tmp_path) -> None:
    source = create_model("shufflenet_v1_g8_x0_5", num_classes=2, shuffle_order="megvii")
    path = save_checkpoint(
        tmp_path / "megvii_order.pt",
        make_checkpoint(source, "shufflenet_v1_g8_x0_5", model_kwargs={"shuffle_order": "megvii"}),
    )
    with pytest.raises(CheckpointError, match=r"built with shuffle_order='megvii', this one has shuffle_order='paper'"):
        create_model("shufflenet_v1_g8_x0_5", num_classes=2, weights=path)
    model = create_model("shufflenet_v1_g8_x0_5", num_classes=2, shuffle_order="megvii", weights=path).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), source.eval()(x))
        assert torch.equal(load_model(path)(x), model(x))
