"""megvii's ShuffleNetV2+ files convert onto our models with the logits of their network, on real photos.

The files are written here in their exact layout (``{'state_dict': ...}`` from DataParallel, their key names),
from random weights and BN statistics in the mirror of their code (tests/megvii_plus_reference.py). Their
network pools with AvgPool2d(7), so both sides see 224x224 crops.
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor
from torchvision.transforms import v2 as T

from megvii_plus_reference import MegviiV2Plus, bgr_0_255, randomize, save_megvii
from shufflenet.checkpoints import CheckpointError, detect_layout, infer_model_name, load_model, load_pretrained
from shufflenet.checkpoints.formats.megvii_plus import MEGVII_PLUS_PREPROCESSING
from shufflenet.cli import main
from shufflenet.models import create_model

CROP, RESIZE = 224, 256


@pytest.fixture
def photos(tmp_path: Path, request: pytest.FixtureRequest) -> list[Image.Image]:
    """Real JPEG files written here (plus two hymenoptera photos when present), decoded with PIL."""
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(320, 256), (256, 300)]):
        coarse = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
        noise = rng.integers(-20, 21, (h, w, 3))
        image = Image.fromarray(np.clip(np.asarray(image, dtype=np.int64) + noise, 0, 255).astype(np.uint8))
        paths.append(tmp_path / f"photo{i}.jpg")
        image.save(paths[-1], quality=90)
    with contextlib.suppress(pytest.skip.Exception):  # no hymenoptera: the written photos only
        paths += sorted((request.getfixturevalue("hymenoptera") / "val" / "ants").glob("*.jpg"))[:2]
    return [Image.open(p).convert("RGB") for p in paths]


def crops(images: list[Image.Image]) -> list[Tensor]:
    """The shared geometry (resize 256, centre crop 224) as uint8 RGB tensors; each side normalises on its own."""
    geometry = T.Compose([T.ToImage(), T.Resize(RESIZE, antialias=True), T.CenterCrop(CROP)])
    return [geometry(image).as_subclass(Tensor) for image in images]


def their_logits(model: torch.nn.Module, images: list[Image.Image]) -> Tensor:
    with torch.no_grad():
        return model.double().eval()(torch.stack([bgr_0_255(c) for c in crops(images)]).double())


def our_logits(model: torch.nn.Module, preprocessing: object, images: list[Image.Image]) -> Tensor:
    """The recorded Preprocessing, then our model; float64 on both sides, so the mapping is what is compared."""
    transform = preprocessing.eval_transform()
    with torch.no_grad():
        return model.double().eval()(torch.stack([transform(image) for image in images]).double())


def assert_same(ours: Tensor, theirs: Tensor) -> None:
    assert theirs.abs().max() > 0.1  # a real signal, not a collapsed network
    # Our transform scales float32 pixels to [0, 1] and back to 0-255 (~1e-5 apart from their integers);
    # a wrong key, layout or activation is off by far more than that (tests/models/test_v2_plus.py: 1e-9).
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.fixture
def megvii_small(photos: list[Image.Image], tmp_path: Path) -> tuple[MegviiV2Plus, Path]:
    torch.manual_seed(0)
    reference = randomize(MegviiV2Plus("Small"), torch.stack([bgr_0_255(c) for c in crops(photos)]))
    return reference, save_megvii(reference, tmp_path / "ShuffleNetV2+.Small.pth.tar")


def test_their_file_loads_via_create_model_with_their_logits(
    megvii_small: tuple[MegviiV2Plus, Path], photos: list[Image.Image]
) -> None:
    reference, path = megvii_small
    raw = torch.load(path, weights_only=True)
    assert list(raw) == ["state_dict"] and next(iter(raw["state_dict"])) == "module.first_conv.0.weight"
    assert detect_layout(raw) == "megvii ShuffleNetV2+" and infer_model_name(raw) == "shufflenet_v2_plus_small"

    model = create_model("shufflenet_v2_plus_small")
    report = load_pretrained(model, path)
    assert report.source_format == "megvii ShuffleNetV2+" and report.preprocessing == MEGVII_PLUS_PREPROCESSING
    assert report.reinitialized == [] and report.loaded == len(model.state_dict())
    assert_same(our_logits(model, report.preprocessing, photos), their_logits(reference, photos))

    finetune = create_model("shufflenet_v2_plus_small", num_classes=3, weights=path)  # what --weights does
    torch.testing.assert_close(finetune.head_linear[0].weight, model.head_linear[0].weight.float())
    assert finetune.fc.weight.shape == (3, 1280)


def test_preprocessing_is_bgr_0_255_without_normalisation(photos: list[Image.Image]) -> None:
    pre = MEGVII_PLUS_PREPROCESSING
    assert (pre.resize_size, pre.crop_size, pre.channel_order, pre.pixel_scale) == (256, 224, "BGR", 255.0)
    assert pre.mean == (0.0, 0.0, 0.0) and pre.std == (1.0, 1.0, 1.0) and pre.interpolation == "bilinear"
    torch.testing.assert_close(pre.eval_transform()(photos[0]), bgr_0_255(crops(photos[:1])[0]), rtol=0, atol=1e-4)


def test_convert_cli_records_their_preprocessing_and_reproduces_logits(
    megvii_small: tuple[MegviiV2Plus, Path], photos: list[Image.Image], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    reference, path = megvii_small
    out = tmp_path / "v2plus_small.safetensors"
    assert main(["convert", "--from", "megvii", str(path), str(out)]) == 0  # the model inferred from the shapes
    printed = capsys.readouterr().out
    assert "megvii ShuffleNetV2+" in printed and "shufflenet_v2_plus_small" in printed and "BGR" in printed
    model = load_model(out)
    assert model.arch == "shufflenet_v2_plus_small" and model.preprocessing == MEGVII_PLUS_PREPROCESSING
    assert model.checkpoint_meta["converted_from"]["format"] == "megvii ShuffleNetV2+"
    assert len(model.class_names) == 1000
    assert_same(our_logits(model, model.preprocessing, photos), their_logits(reference, photos))


def test_a_file_of_another_size_is_refused_naming_the_key_and_the_size(tmp_path: Path) -> None:
    with torch.device("meta"):
        medium = MegviiV2Plus("Medium", n_class=10)
    state = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in medium.state_dict().items()}
    path = tmp_path / "medium.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    with pytest.raises(CheckpointError, match=r"key 'features\.0\.branch_main\.0\.weight' has shape \(24,") as err:
        create_model("shufflenet_v2_plus_small", weights=path)
    assert "shufflenet_v2_plus_medium" in str(err.value) and str(path) in str(err.value)
    with pytest.raises(CheckpointError, match="another architecture"):
        create_model("shufflenet_v2_x1_0", weights=path)


def test_their_plain_v2_files_are_still_refused(tmp_path: Path) -> None:
    """megvii's ShuffleNetV2 (no SE head) shares the branch_main keys but not the layout; it stays refused."""
    path = tmp_path / "ShuffleNetV2.1.0x.pth.tar"
    state = {"module.first_conv.0.weight": torch.zeros(24, 3, 3, 3)}
    state["module.features.0.branch_main.0.weight"] = torch.zeros(58, 24, 1, 1)
    torch.save({"state_dict": state}, path)
    assert detect_layout(torch.load(path, weights_only=True)) == "megvii ShuffleNet v2"
    with pytest.raises(CheckpointError, match="megvii ShuffleNetV2-family"):
        create_model("shufflenet_v2_x1_0", weights=path)


def test_key_map_covers_every_tensor_of_every_size() -> None:
    from shufflenet.checkpoints.formats.megvii_plus import MEGVII_V2_PLUS

    for size in ("small", "medium", "large"):
        with torch.device("meta"):
            ours = create_model(f"shufflenet_v2_plus_{size}").state_dict()
            theirs = MegviiV2Plus(size.capitalize()).state_dict()
        mapped = {MEGVII_V2_PLUS.key(key): value.shape for key, value in ours.items()}
        assert mapped == {key: value.shape for key, value in theirs.items()}
        assert MEGVII_V2_PLUS.infer(theirs) == f"shufflenet_v2_plus_{size}"


def test_recorded_preprocessing_survives_a_dataclass_round_trip() -> None:
    restored = type(MEGVII_PLUS_PREPROCESSING).from_dict(MEGVII_PLUS_PREPROCESSING.to_dict())
    assert restored == MEGVII_PLUS_PREPROCESSING and dataclasses.is_dataclass(restored)
    assert restored.extra["resize"].startswith("cv2.INTER_LINEAR")
