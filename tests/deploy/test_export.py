"""ONNX and TorchScript export: real files, a real onnxruntime session, metadata read back, the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from shufflenet import create_model, deploy
from shufflenet.cli import main
from shufflenet.transforms import Preprocessing
from shufflenet.weights import make_checkpoint, save_checkpoint

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

IMG = 48
CLASSES = ["ant", "bee", "wasp"]
PREP = Preprocessing.for_size(IMG, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
# Graph ops a ShuffleNet may export to: no Shape/Gather arithmetic around the channel shuffle.
PLAIN_OPS = {"Conv", "Relu", "Reshape", "Transpose", "Concat", "Split", "MaxPool", "AveragePool", "ReduceMean"}
PLAIN_OPS |= {"Gemm", "Add", "Flatten", "Unsqueeze"}
V2_UNITS = 4 + 8 + 4  # Table 5 repeats: one concat + shuffle per unit


def with_bn_stats(model: nn.Module) -> nn.Module:
    """Non-trivial BN statistics (as after training), so folding is exercised."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator) * 0.2)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def v2() -> nn.Module:
    torch.manual_seed(0)  # module-scoped: its weights must not depend on which test ran before
    return with_bn_stats(create_model("shufflenet_v2_x0_5", num_classes=3))


@pytest.fixture(scope="module")
def v2_onnx(v2: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("export") / "v2.onnx"
    return deploy.export_onnx(
        v2, path, img_size=IMG, dynamic_batch=True, class_names=CLASSES, preprocessing=PREP, arch="shufflenet_v2_x0_5"
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    model = with_bn_stats(create_model("shufflenet_v1_g3_x0_25", num_classes=3))
    ckpt = make_checkpoint(model, "shufflenet_v1_g3_x0_25", CLASSES, PREP)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "best.pt", ckpt)


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def expected(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("batch", [1, 5])
def test_onnx_matches_pytorch_in_a_real_session(v2: nn.Module, v2_onnx: Path, batch: int) -> None:
    x = torch.randn(batch, 3, IMG, IMG)
    (got,) = session(v2_onnx).run(None, {"input": x.numpy()})
    ref = expected(v2, x)
    assert got.shape == (batch, 3)
    assert (torch.from_numpy(got) - ref).abs().max().item() <= 1e-4
    assert torch.equal(torch.from_numpy(got).argmax(1), ref.argmax(1))


def attribute(node: onnx.NodeProto, name: str) -> object:
    (value,) = [onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name]
    return value


def test_v2_concat_and_shuffle_export_as_one_interleaving_concat(v2_onnx: Path) -> None:
    graph = onnx.load(str(v2_onnx)).graph
    ops = [node.op_type for node in graph.node]
    assert set(ops) <= PLAIN_OPS, set(ops) - PLAIN_OPS
    assert "Transpose" not in ops and "BatchNormalization" not in ops  # fused shuffle, folded BN
    concats = [node for node in graph.node if node.op_type == "Concat"]
    assert len(concats) == V2_UNITS
    # (N, C/2, 1, H, W) + (N, C/2, 1, H, W) -> (N, C/2, 2, H, W), flattened to (N, C, H, W) by one Reshape.
    assert all(attribute(node, "axis") == 2 for node in concats)
    assert ops.count("Unsqueeze") == 2 * V2_UNITS and ops.count("Reshape") == V2_UNITS


def test_unfused_export_has_the_papers_reshape_transpose_and_same_outputs(
    v2: nn.Module, v2_onnx: Path, tmp_path: Path
) -> None:
    path = deploy.export_onnx(v2, tmp_path / "plain.onnx", img_size=IMG, dynamic_batch=True, fuse_shuffle=False)
    graph = onnx.load(str(path)).graph
    ops = [node.op_type for node in graph.node]
    assert set(ops) <= PLAIN_OPS, set(ops) - PLAIN_OPS
    transposes = [node for node in graph.node if node.op_type == "Transpose"]
    assert len(transposes) == V2_UNITS and ops.count("Reshape") == 2 * V2_UNITS
    assert all(attribute(node, "perm") == [0, 2, 1, 3, 4] for node in transposes)  # (N,g,C/g,H,W) -> (N,C/g,g,H,W)
    x = torch.randn(3, 3, IMG, IMG).numpy()
    (plain,) = session(path).run(None, {"input": x})
    (fused,) = session(v2_onnx).run(None, {"input": x})
    assert abs(plain - fused).max() <= 1e-5


def test_metadata_reads_back_through_onnx_and_onnxruntime(v2_onnx: Path) -> None:
    meta = deploy.read_onnx_metadata(v2_onnx)
    assert meta["class_names"] == CLASSES
    assert meta["preprocessing"] == PREP
    assert meta["arch"] == "shufflenet_v2_x0_5"
    assert meta["input_size"] == [3, IMG, IMG] and meta["dynamic_batch"] is True
    custom = session(v2_onnx).get_modelmeta().custom_metadata_map
    assert json.loads(custom["shufflenet.class_names"]) == CLASSES
    assert Preprocessing.from_dict(json.loads(custom["shufflenet.preprocessing"])) == PREP


def test_exported_file_has_no_local_paths(v2_onnx: Path) -> None:
    assert str(Path(__file__).resolve().parents[2]).encode() not in v2_onnx.read_bytes()


def test_export_never_overwrites_without_permission(v2: nn.Module, v2_onnx: Path) -> None:
    before = v2_onnx.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        deploy.export_onnx(v2, v2_onnx, img_size=IMG)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        deploy.export_torchscript(v2, v2_onnx, img_size=IMG)
    assert v2_onnx.read_bytes() == before


def test_export_into_missing_directory(v2: nn.Module, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        deploy.export_onnx(v2, tmp_path / "no" / "such" / "m.onnx", img_size=IMG)


def test_class_name_count_must_match(v2: nn.Module, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="2 class names for a model with 3 outputs"):
        deploy.export_torchscript(v2, tmp_path / "m.pt", img_size=IMG, class_names=["a", "b"])


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_loads_with_torch_jit_and_matches(v2: nn.Module, tmp_path: Path) -> None:
    path = deploy.export_torchscript(v2, tmp_path / "v2.pt", img_size=IMG, class_names=CLASSES, preprocessing=PREP)
    extra = {deploy.TORCHSCRIPT_META: ""}
    loaded = torch.jit.load(str(path), _extra_files=extra)
    meta = json.loads(extra[deploy.TORCHSCRIPT_META])
    assert meta["class_names"] == CLASSES and Preprocessing.from_dict(meta["preprocessing"]) == PREP
    for batch in (1, 4):
        x = torch.randn(batch, 3, IMG, IMG)
        with torch.no_grad():
            assert (loaded(x) - expected(v2, x)).abs().max().item() <= 1e-4
    module, meta2 = deploy.load_torchscript(path)
    assert meta2["preprocessing"] == PREP and module(torch.randn(2, 3, IMG, IMG)).shape == (2, 3)
    with pytest.raises(deploy.DeployError, match="not a readable TorchScript"):
        (tmp_path / "bad.pt").write_bytes(b"nope")
        deploy.load_torchscript(tmp_path / "bad.pt")


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_export_onnx_verifies_and_refuses_to_overwrite(checkpoint: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "model.onnx"
    args = ["export", "--weights", str(checkpoint), "--format", "onnx", "--out", str(out), "--dynamic-batch"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "shufflenet_v1_g3_x0_25" in printed and "3 classes" in printed
    diff = float(re.search(r"max abs diff ([0-9.e+-]+)", printed).group(1))
    assert diff <= 1e-4 and "top-1 agreement 100%" in printed
    meta = deploy.read_onnx_metadata(out)
    assert meta["class_names"] == CLASSES and meta["preprocessing"] == PREP
    # v1 g=3 shuffles once per unit: 4 + 8 + 4 units, and nothing but plain ops.
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert ops.count("Transpose") == 16 and set(ops) <= PLAIN_OPS
    runner = deploy.load_onnx(out)
    assert runner(torch.randn(3, 3, IMG, IMG)).shape == (3, 3)

    before = out.read_bytes()
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_bytes() == before


def test_cli_export_v2_transpose_shuffle_flag(v2: nn.Module, tmp_path: Path, capsys) -> None:
    ckpt = save_checkpoint(tmp_path / "v2.pt", make_checkpoint(v2, "shufflenet_v2_x0_5", CLASSES, PREP))
    transposes = {}
    for flag in ([], ["--transpose-shuffle"]):
        out = tmp_path / f"v2{len(flag)}.onnx"
        assert main(["export", "--weights", str(ckpt), "--format", "onnx", "--out", str(out), *flag]) == 0
        assert "top-1 agreement 100%" in capsys.readouterr().out
        transposes[bool(flag)] = [n.op_type for n in onnx.load(str(out)).graph.node].count("Transpose")
    assert transposes == {False: 0, True: V2_UNITS}


def test_cli_export_torchscript_with_overwrite(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.pt"
    out.write_bytes(b"old")
    args = ["export", "--weights", str(checkpoint), "--format", "torchscript", "--out", str(out), "--overwrite"]
    assert main(args) == 0
    module, meta = deploy.load_torchscript(out)
    assert meta["arch"] == "shufflenet_v1_g3_x0_25" and meta["class_names"] == CLASSES
    assert module(torch.randn(2, 3, IMG, IMG)).shape == (2, 3)


def test_cli_export_unknown_architecture(checkpoint: Path, tmp_path: Path, capsys) -> None:
    ckpt = torch.load(checkpoint, weights_only=True)
    ckpt["arch"] = "shufflenet_v3_x9"
    bad = tmp_path / "bad.pt"
    torch.save(ckpt, bad)
    code = main(["export", "--weights", str(bad), "--format", "onnx", "--out", str(tmp_path / "x.onnx")])
    assert code == 2
    err = capsys.readouterr().err
    assert "bad.pt" in err and "shufflenet_v3_x9" in err
    assert not (tmp_path / "x.onnx").exists()
