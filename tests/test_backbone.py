"""ShuffleNet as a detection backbone: torchvision FPN detectors train and infer; ONNX export of the levels."""

import json

import numpy as np
import pytest
import torch
from torchvision.models.detection import FasterRCNN, RetinaNet

from shufflenet import create_model, list_models, tables
from shufflenet.backbone import export_features_onnx, feature_table, fpn_backbone
from shufflenet.cli import main

IMAGES = [(3, 80, 64), (3, 64, 96)]
TARGETS = [
    {"boxes": torch.tensor([[5.0, 5.0, 40.0, 50.0]]), "labels": torch.tensor([1])},
    {"boxes": torch.tensor([[10.0, 8.0, 60.0, 30.0], [0.0, 0.0, 20.0, 20.0]]), "labels": torch.tensor([2, 1])},
]


def test_fpn_backbone_levels_and_widths() -> None:
    torch.manual_seed(0)
    backbone = fpn_backbone("shufflenet_v2_x0_5", out_channels=32).eval()
    assert backbone.out_channels == 32
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "0": (1, 32, 16, 16),
        "1": (1, 32, 8, 8),
        "2": (1, 32, 4, 4),
        "3": (1, 32, 2, 2),
        "pool": (1, 32, 1, 1),
    }
    # The FPN's lateral 1x1 convs take the stem and stage channels of v2 Table 5.
    lateral = [block[0].in_channels for block in backbone.fpn.inner_blocks]
    assert lateral == list(tables.V2_TABLE5_CHANNELS[0.5][:4])


@pytest.mark.parametrize("detector", [FasterRCNN, RetinaNet])
def test_torchvision_detector_infers_and_trains(detector) -> None:
    torch.manual_seed(0)
    backbone = fpn_backbone("shufflenet_v2_x0_5", out_channels=32)
    model = detector(backbone, num_classes=3, min_size=64, max_size=96)
    images = [torch.rand(shape) for shape in IMAGES]

    model.eval()
    with torch.no_grad():
        detections = model(images)
    assert len(detections) == 2
    assert all(d["boxes"].shape[1] == 4 and len(d["boxes"]) == len(d["scores"]) == len(d["labels"]) for d in detections)

    model.train()
    losses = model(images, TARGETS)
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    stem = backbone.body.conv1[0].weight.grad  # gradients reach the ShuffleNet stem through the FPN
    assert stem is not None and stem.abs().sum() > 0


def test_fpn_backbone_loads_weights_and_takes_out_indices(tmp_path) -> None:
    torch.manual_seed(0)
    full = create_model("shufflenet_v1_g3_x0_5", num_classes=4)
    path = tmp_path / "g3.pth"
    torch.save(full.state_dict(), path)
    backbone = fpn_backbone("shufflenet_v1_g3_x0_5", weights=path, out_indices=(1, 2, 3), out_channels=16)
    assert [block[0].in_channels for block in backbone.fpn.inner_blocks] == [120, 240, 480]
    assert torch.equal(backbone.body.stage4[0].compress[0].weight, full.stage4[0].compress[0].weight)
    assert not any(key.startswith("body.fc") for key in backbone.state_dict())


def test_onnx_export_has_one_named_output_per_level(tmp_path) -> None:
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    out_indices = (0, 1, 2, 3, 4)  # every level, conv5 included (one export: the exporter takes seconds)
    model = create_model("shufflenet_v2_x0_5", features_only=True, out_indices=out_indices).eval()
    path = export_features_onnx(model, tmp_path / "features.onnx", img_size=64, dynamic_batch=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["maxpool", "stage2", "stage3", "stage4", "conv5"]
    x = torch.randn(3, 3, 64, 64)  # traced with 2 images: the batch is symbolic
    got = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        want = model(x)
    assert len(got) == len(out_indices)
    for level, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a.shape == tuple(b.shape), level
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-4, atol=1e-4, err_msg=f"level {level}")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_features_onnx(model, path, img_size=64)


def test_onnx_export_refuses_a_classifier(tmp_path) -> None:
    with pytest.raises(TypeError, match="features_only=True"):
        export_features_onnx(create_model("shufflenet_v2_x0_5"), tmp_path / "m.onnx")


def test_feature_table_matches_the_models() -> None:
    rows = feature_table()
    assert [row["name"] for row in rows] == list_models()
    v2 = next(row for row in rows if row["name"] == "shufflenet_v2_x2_0")
    assert [level["num_chs"] for level in v2["levels"]] == list(tables.V2_TABLE5_CHANNELS[2.0])
    g3 = next(row for row in rows if row["name"] == "shufflenet_v1_g3_x1_0")
    assert [level["num_chs"] for level in g3["levels"]] == [24, *tables.V1_TABLE1_STAGE_CHANNELS[3]]
    assert [level["reduction"] for level in g3["levels"]] == [4, 8, 16, 32]


def test_cli_models_features(capsys) -> None:
    assert main(["models", "--features", "shufflenet_v2_x1_0"]) == 0
    out = capsys.readouterr().out
    header, _, row = out.splitlines()[:3]
    expected = "0: maxpool /4 56x56 1: stage2 /8 28x28 2: stage3 /16 14x14 3: stage4 /32 7x7 4: conv5 /32 7x7"
    assert " ".join(header.split()[1:]) == expected
    assert row.split() == ["shufflenet_v2_x1_0", "24", "116", "232", "464", "1,024"]
    assert main(["models", "--features", "shufflenet_v1_g8_*", "--json", "-"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["levels"][3]["num_chs"] for row in rows] == [384, 768, 1536, 2304, 3072]


@pytest.mark.parametrize("name", ["shufflenet_v2_x0_5", "shufflenet_v1_g3_x0_5", "shufflenet_v2_plus_small"])
def test_cli_models_features_map_sizes_follow_img_size_as_a_real_forward_gives_them(name: str, capsys) -> None:
    torch.manual_seed(0)
    model = create_model(name, features_only=True, out_indices=tuple(range(len(feature_table([name])[0]["levels"]))))
    with torch.no_grad():
        real = [list(m.shape[-2:]) for m in model.eval()(torch.randn(1, 3, 75, 75))]  # 75: no multiple of 32
    assert main(["models", "--features", name, "--img-size", "75", "--json", "-"]) == 0
    assert [level["size"] for level in json.loads(capsys.readouterr().out)[0]["levels"]] == real
    assert main(["models", "--features", name, "--img-size", "75"]) == 0
    out = capsys.readouterr().out
    header = out.splitlines()[0]
    assert [cell for cell in header.split() if "x" in cell and cell[0].isdigit()] == [
        "x".join(map(str, s)) for s in real
    ]
    assert "map size for a 75x75 input" in out
