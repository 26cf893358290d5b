"""Foreign checkpoints (megvii v1, mmpretrain v1/v2) convert onto our models with identical outputs.

Each foreign layout is written out here independently, from the facts of its published code: their unit
order (shuffle after the depthwise conv), their shuffle, their keys, their stride-2 concat, their
preprocessing. Random weights and random BN statistics are saved as real files in their formats; the
converted model must reproduce the reference's logits on real JPEG photos through our Preprocessing.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torchvision.transforms import v2 as T

from megvii_plus_reference import bgr_0_255 as megvii_input
from megvii_plus_reference import save_megvii
from shufflenet import checkpoints
from shufflenet.checkpoints import CheckpointError, load_model, load_pretrained
from shufflenet.checkpoints.formats import v1_shuffle
from shufflenet.checkpoints.formats.megvii import MEGVII_PREPROCESSING
from shufflenet.checkpoints.formats.mmpretrain import MMPRETRAIN_PREPROCESSING
from shufflenet.cli import main
from shufflenet.models import create_model
from shufflenet.models.v1 import ShuffleUnit

CROP, RESIZE = 48, 56
REPO = Path(__file__).resolve().parents[2]
# megvii-model/ShuffleNet-Series ShuffleNetV1/network.py: stem + stage channels per (group, model size).
MEGVII_SIZES = {
    (3, "0.5x"): (12, 120, 240, 480),
    (3, "1.0x"): (24, 240, 480, 960),
    (3, "1.5x"): (24, 360, 720, 1440),
    (3, "2.0x"): (48, 480, 960, 1920),
    (8, "0.5x"): (16, 192, 384, 768),
    (8, "1.0x"): (24, 384, 768, 1536),
    (8, "1.5x"): (24, 576, 1152, 2304),
    (8, "2.0x"): (48, 768, 1536, 3072),
}


# ---------------------------------------------------------------------------------------------- megvii v1
def megvii_shuffle(x: Tensor, groups: int) -> Tensor:
    """Their channel_shuffle: reshape to (C/g, g), swap, flatten."""
    b, c, h, w = x.shape
    return x.reshape(b, c // groups, groups, h, w).permute(0, 2, 1, 3, 4).reshape(b, c, h, w)


class MegviiBlock(nn.Module):
    def __init__(self, inp: int, oup: int, group: int, first_group: bool, stride: int) -> None:
        super().__init__()
        mid, self.group, self.stride = oup // 4, group, stride
        outputs = oup - inp if stride == 2 else oup
        self.branch_main_1 = nn.Sequential(
            nn.Conv2d(inp, mid, 1, 1, 0, groups=1 if first_group else group, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
        )
        self.branch_main_2 = nn.Sequential(
            nn.Conv2d(mid, outputs, 1, 1, 0, groups=group, bias=False), nn.BatchNorm2d(outputs)
        )
        if stride == 2:
            self.branch_proj = nn.AvgPool2d(3, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.branch_main_1(x)
        if self.group > 1:
            y = megvii_shuffle(y, self.group)
        y = self.branch_main_2(y)
        if self.stride == 1:
            return F.relu(y + x)
        return torch.cat((self.branch_proj(x), F.relu(y)), 1)


class MegviiV1(nn.Module):
    def __init__(self, group: int, size: str, n_class: int) -> None:
        super().__init__()
        stem, *stages = MEGVII_SIZES[(group, size)]
        self.first_conv = nn.Sequential(nn.Conv2d(3, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU(True))
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        blocks, inp = [], stem
        for stage, (repeat, oup) in enumerate(zip((4, 8, 4), stages, strict=True)):
            for i in range(repeat):
                blocks.append(MegviiBlock(inp, oup, group, stage == 0 and i == 0, 2 if i == 0 else 1))
                inp = oup
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.Linear(inp, n_class, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(self.maxpool(self.first_conv(x)))
        # Their AvgPool2d(7) is this global mean at their 224 px input (7x7 maps); tests run at 48 px.
        return self.classifier(x.mean((2, 3)))


# ---------------------------------------------------------------------------------------------- mmpretrain
class ConvModule(nn.Module):
    """mmcv's ConvModule as the checkpoints name it: ``conv`` (no bias under a norm), ``bn``, optional ReLU."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x) if self.act else x


def paper_shuffle(x: Tensor, groups: int) -> Tensor:
    """OpenMMLab's channel_shuffle: view (g, C/g), transpose, flatten."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def mm_make_divisible(value: float, divisor: int, min_ratio: float = 0.9) -> int:
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < min_ratio * value else new


class MmShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, groups: int, first_block: bool, combine: str) -> None:
        super().__init__()
        self.groups, self.combine = groups, combine
        mid = cout // 4
        outputs = cout - cin if combine == "concat" else cout
        stride = 2 if combine == "concat" else 1
        self.g_conv_1x1_compress = ConvModule(cin, mid, 1, groups=1 if first_block else groups)
        self.depthwise_conv3x3_bn = ConvModule(mid, mid, 3, stride, groups=mid, act=False)
        self.g_conv_1x1_expand = ConvModule(mid, outputs, 1, groups=groups, act=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.depthwise_conv3x3_bn(self.g_conv_1x1_compress(x))
        if self.groups > 1:
            out = paper_shuffle(out, self.groups)
        out = self.g_conv_1x1_expand(out)
        if self.combine == "concat":
            return torch.cat((F.avg_pool2d(x, 3, 2, 1), F.relu(out)), 1)
        return F.relu(x + out)


class MmBackboneV1(nn.Module):
    def __init__(self, groups: int, widen_factor: float) -> None:
        super().__init__()
        table = {1: (144, 288, 576), 2: (200, 400, 800), 3: (240, 480, 960), 4: (272, 544, 1088), 8: (384, 768, 1536)}
        channels = [mm_make_divisible(c * widen_factor, 8) for c in table[groups]]
        cin = int(24 * widen_factor)
        self.conv1 = ConvModule(3, cin, 3, 2)
        self.layers = nn.ModuleList()
        for i, (blocks, cout) in enumerate(zip((4, 8, 4), channels, strict=True)):
            units = []
            for j in range(blocks):
                units.append(MmShuffleUnit(cin, cout, groups, i == 0 and j == 0, "concat" if j == 0 else "add"))
                cin = cout
            self.layers.append(nn.Sequential(*units))
        self.out_channels = cin

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(self.conv1(x), 3, 2, 1)
        for layer in self.layers:
            x = layer(x)
        return x


class MmInvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        half = cout // 2
        self.stride = stride
        if stride > 1:
            self.branch1 = nn.Sequential(
                ConvModule(cin, cin, 3, stride, groups=cin, act=False), ConvModule(cin, half, 1)
            )
        self.branch2 = nn.Sequential(
            ConvModule(cin if stride > 1 else half, half, 1),
            ConvModule(half, half, 3, stride, groups=half, act=False),
            ConvModule(half, half, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            out = torch.cat((self.branch1(x), self.branch2(x)), 1)
        else:
            c = x.shape[1] // 2 + x.shape[1] % 2
            out = torch.cat((x[:, :c], self.branch2(x[:, c:])), 1)
        return paper_shuffle(out, 2)


class MmBackboneV2(nn.Module):
    def __init__(self, widen_factor: float) -> None:
        super().__init__()
        channels = {0.5: [48, 96, 192, 1024], 1.0: [116, 232, 464, 1024]}[widen_factor]
        cin = 24
        self.conv1 = ConvModule(3, cin, 3, 2)
        self.layers = nn.ModuleList()
        for blocks, cout in zip((4, 8, 4), channels[:3], strict=True):
            units = []
            for j in range(blocks):
                units.append(MmInvertedResidual(cin, cout, 2 if j == 0 else 1))
                cin = cout
            self.layers.append(nn.Sequential(*units))
        self.layers.append(ConvModule(cin, channels[-1], 1))
        self.out_channels = channels[-1]

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(self.conv1(x), 3, 2, 1)
        for layer in self.layers:
            x = layer(x)
        return x


class MmHead(nn.Module):
    def __init__(self, cin: int, classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(cin, classes)


class MmClassifier(nn.Module):
    """ImageClassifier: backbone -> GlobalAveragePooling neck -> LinearClsHead (``head.fc``)."""

    def __init__(self, backbone: nn.Module, classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = MmHead(backbone.out_channels, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head.fc(self.backbone(x).mean((2, 3)))


MM_MEAN = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
MM_STD = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)


def mm_input(crop: Tensor) -> Tensor:
    """Their ClsDataPreprocessor on a uint8 RGB crop: (x - mean) / std on the 0-255 scale."""
    return (crop.float() - MM_MEAN) / MM_STD


def save_mmpretrain(model: nn.Module, path: Path, classes: list[str]) -> Path:
    meta = {"mmcls_version": "0.25.0", "CLASSES": classes, "config": "model = dict(type='ImageClassifier')"}
    torch.save({"meta": meta, "state_dict": model.state_dict()}, path)
    return path


# ---------------------------------------------------------------------------------------------- helpers
def randomize(model: nn.Module, sample: Tensor) -> nn.Module:
    """Random weights; random BN statistics scaled to the data (calibrated on ``sample``, then perturbed)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) / fan_in**0.5)
                if module.bias is not None:
                    module.bias.uniform_(-0.5, 0.5, generator=generator)
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.uniform_(-0.3, 0.3, generator=generator)
                module.momentum = None  # a cumulative average: one batch gives exactly its statistics
                module.reset_running_stats()
        model.train()(sample)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                std = module.running_var.sqrt()
                module.running_mean.add_(0.2 * std * torch.randn(std.shape, generator=generator))
                module.running_var.mul_(torch.empty_like(std).uniform_(0.5, 2.0, generator=generator))
    return model.eval()


@pytest.fixture
def photos(tmp_path: Path, request: pytest.FixtureRequest) -> list[Image.Image]:
    """Real JPEG files written here (plus two hymenoptera photos when present), decoded with PIL."""
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(80, 64), (64, 96), (72, 72)]):
        coarse = rng.integers(0, 256, (h // 8, w // 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((w, h), Image.BICUBIC)
        noise = rng.integers(-20, 21, (h, w, 3))
        image = Image.fromarray(np.clip(np.asarray(image, dtype=np.int64) + noise, 0, 255).astype(np.uint8))
        paths.append(tmp_path / f"photo{i}.jpg")
        image.save(paths[-1], quality=90)
    try:
        root = request.getfixturevalue("hymenoptera")
        paths += sorted((root / "val" / "bees").glob("*.jpg"))[:2]
    except pytest.skip.Exception:
        pass
    return [Image.open(p).convert("RGB") for p in paths]


def crops(images: list[Image.Image]) -> list[Tensor]:
    """The shared geometry (resize, centre crop) as uint8 RGB tensors; each side normalises on its own."""
    geometry = T.Compose([T.ToImage(), T.Resize(RESIZE, antialias=True), T.CenterCrop(CROP)])
    return [geometry(image).as_subclass(Tensor) for image in images]


def our_logits(model: nn.Module, preprocessing: object, images: list[Image.Image]) -> Tensor:
    """Our side: the recorded Preprocessing (at the test's small size), then the model.

    Both sides run in float64 so that the comparison measures the mapping, not float32 summation order.
    """
    transform = dataclasses.replace(preprocessing, crop_size=CROP, resize_size=RESIZE).eval_transform()
    with torch.no_grad():
        return model.double().eval()(torch.stack([transform(image) for image in images]).double())


def reference_logits(model: nn.Module, to_input: object, images: list[Image.Image]) -> Tensor:
    with torch.no_grad():
        return model.double()(torch.stack([to_input(crop) for crop in crops(images)]).double())


def assert_same(ours: Tensor, theirs: Tensor) -> None:
    assert theirs.abs().max() > 0.1  # a real signal, not a collapsed network
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def megvii_reference(group: int, size: str, images: list[Image.Image], classes: int = 10) -> MegviiV1:
    model = MegviiV1(group, size, classes)
    return randomize(model, torch.stack([megvii_input(c) for c in crops(images)]))


def mm_reference(backbone: nn.Module, images: list[Image.Image], classes: int = 10) -> MmClassifier:
    model = MmClassifier(backbone, classes)
    return randomize(model, torch.stack([mm_input(c) for c in crops(images)]))


# ---------------------------------------------------------------------------------------------- the algebra
def count_matrix(channels: int, groups: int, compress_groups: int, source: Tensor) -> Tensor:
    """How many first-conv channels of group a reach second-conv group k through the shuffle ``source``."""
    counts = torch.zeros(compress_groups, groups, dtype=torch.long)
    per_group, compress_size = channels // groups, channels // compress_groups
    for position, channel in enumerate(source.tolist()):
        counts[channel // compress_size, position // per_group] += 1
    return counts


def megvii_units() -> list[tuple[int, str, int, int, int, int]]:
    """(group, size, in, out, stride, compress groups) of every distinct unit of every megvii model."""
    units = []
    for (group, size), (stem, *stages) in MEGVII_SIZES.items():
        cin = stem
        for index, cout in enumerate(stages):
            units.append((group, size, cin, cout, 2, 1 if index == 0 else group))
            units.append((group, size, cout, cout, 1, group))
            cin = cout
    return units


@pytest.mark.parametrize(("group", "size", "cin", "cout", "stride", "compress_groups"), megvii_units())
def test_megvii_unit_relabels_exactly_when_the_routing_counts_agree(
    group: int, size: str, cin: int, cout: int, stride: int, compress_groups: int
) -> None:
    """Each megvii unit equals our paper-order unit after relabelling, iff the a->k routing counts agree.

    When they do not, our unit with shuffle_order='megvii' reproduces it instead.
    """
    torch.manual_seed(0)
    theirs = MegviiBlock(cin, cout, group, compress_groups == 1, stride).double()
    randomize(theirs, torch.relu(torch.randn(4, cin, 6, 6, dtype=torch.float64)))
    x = torch.relu(torch.randn(2, cin, 6, 6, dtype=torch.float64))
    channels = cout // 4
    megvii_src = megvii_shuffle(torch.arange(channels).view(1, -1, 1, 1).double(), group).flatten().long()
    paper_src = paper_shuffle(torch.arange(channels).view(1, -1, 1, 1).double(), group).flatten().long()
    counts_agree = bool(
        (
            count_matrix(channels, group, compress_groups, megvii_src)
            == count_matrix(channels, group, compress_groups, paper_src)
        ).all()
    )
    for order in ("paper", "megvii"):
        ours = ShuffleUnit(cin, cout, stride, group, compress_groups != 1, shuffle_order=order).double().eval()
        our_src = ours.shuffle(torch.arange(channels).view(1, -1, 1, 1).double()).flatten().long()
        perm = v1_shuffle.unit_permutation(channels, group, compress_groups, our_src, megvii_src)
        if order == "paper" and not counts_agree:
            assert perm is None
            continue
        assert perm is not None
        their = theirs.state_dict()
        state = {}
        for ours_key, their_key, index in (("compress", "branch_main_1.0", "1"), ("depthwise", "branch_main_1.3", "4")):
            rows = perm.compress if ours_key == "compress" else perm.depthwise
            state[f"{ours_key}.0.weight"] = their[f"{their_key}.weight"][rows]
            for name in ("weight", "bias", "running_mean", "running_var"):
                state[f"{ours_key}.1.{name}"] = their[f"branch_main_1.{index}.{name}"][rows]
            state[f"{ours_key}.1.num_batches_tracked"] = their[f"branch_main_1.{index}.num_batches_tracked"]
        weight = their["branch_main_2.0.weight"]
        per = weight.shape[0] // group
        state["expand.0.weight"] = torch.cat([weight[k * per : (k + 1) * per][:, i] for k, i in enumerate(perm.expand)])
        state.update(
            {
                f"expand.1.{k[len('branch_main_2.1.') :]}": v
                for k, v in their.items()
                if k.startswith("branch_main_2.1.")
            }
        )
        ours.load_state_dict(state)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), theirs(x), rtol=1e-10, atol=1e-10)


def test_the_g8_sizes_that_need_the_megvii_order_are_the_ones_docs_name() -> None:
    """g=3 (all sizes) and g=8 2x map onto the paper order; g=8 0.5x/1x/1.5x need shuffle_order='megvii'."""
    needs_option = set()
    for group, size, _, cout, _, compress_groups in megvii_units():
        channels = cout // 4
        paper = v1_shuffle.shuffle_sources(channels, group, "paper")
        megvii = v1_shuffle.shuffle_sources(channels, group, "megvii")
        if v1_shuffle.unit_permutation(channels, group, compress_groups, paper, megvii) is None:
            needs_option.add((group, size))
    assert needs_option == {(8, "0.5x"), (8, "1.0x"), (8, "1.5x")}
    docs = (REPO / "docs" / "pretrained.md").read_text()
    assert "g=8 0.5x/1x/1.5x" in docs and "shuffle_order" in docs


def test_shuffle_sources_are_the_two_reshapes() -> None:
    x = torch.arange(24).view(1, 24, 1, 1).double()
    assert torch.equal(v1_shuffle.shuffle_sources(24, 3, "megvii"), megvii_shuffle(x, 3).flatten().long())
    assert torch.equal(v1_shuffle.shuffle_sources(24, 3, "paper"), paper_shuffle(x, 3).flatten().long())
    # inverse permutations of each other
    assert torch.equal(
        v1_shuffle.shuffle_sources(24, 3, "paper")[v1_shuffle.shuffle_sources(24, 3, "megvii")], torch.arange(24)
    )


# ---------------------------------------------------------------------------------------------- whole files
def test_megvii_g3_file_loads_via_create_model_with_identical_outputs(
    tmp_path: Path, photos: list[Image.Image], caplog: pytest.LogCaptureFixture
) -> None:
    reference = megvii_reference(3, "0.5x", photos)
    path = save_megvii(reference, tmp_path / "snetv1_group3_0.5x.pth.tar")
    model = create_model("shufflenet_v1_g3_x0_5", num_classes=10)
    with caplog.at_level(logging.INFO, logger="shufflenet.checkpoints"):
        report = load_pretrained(model, path)
    assert report.source_format == "megvii ShuffleNet v1"
    assert "detected a megvii ShuffleNet v1 checkpoint" in caplog.text
    assert report.preprocessing == MEGVII_PREPROCESSING and report.reinitialized == [] and report.ignored == []
    assert model.shuffle_order == "paper"
    assert torch.equal(model.fc.bias, torch.zeros(10))
    assert_same(our_logits(model, report.preprocessing, photos), reference_logits(reference, megvii_input, photos))


def test_megvii_preprocessing_is_bgr_0_255_without_normalisation(photos: list[Image.Image]) -> None:
    transform = dataclasses.replace(MEGVII_PREPROCESSING, crop_size=CROP, resize_size=RESIZE).eval_transform()
    ours = transform(photos[0])
    torch.testing.assert_close(ours, megvii_input(crops(photos[:1])[0]), rtol=0, atol=1e-4)


def test_mmpretrain_preprocessing_is_rgb_mean_std_on_0_255(photos: list[Image.Image]) -> None:
    transform = dataclasses.replace(MMPRETRAIN_PREPROCESSING, crop_size=CROP, resize_size=RESIZE).eval_transform()
    torch.testing.assert_close(transform(photos[0]), mm_input(crops(photos[:1])[0]), rtol=0, atol=1e-5)


def test_megvii_g8_file_needs_and_records_the_megvii_shuffle_order(tmp_path: Path, photos: list[Image.Image]) -> None:
    reference = megvii_reference(8, "0.5x", photos)
    path = save_megvii(reference, tmp_path / "snetv1_group8_0.5x.pth.tar")
    with pytest.raises(checkpoints.ShuffleOrderError, match=r"stage2\.1 .*shuffle_order='megvii'"):
        create_model("shufflenet_v1_g8_x0_5", num_classes=10, weights=path)
    model = create_model("shufflenet_v1_g8_x0_5", num_classes=10, shuffle_order="megvii", weights=path)
    expected = reference_logits(reference, megvii_input, photos)
    assert_same(our_logits(model, MEGVII_PREPROCESSING, photos), expected)

    out = tmp_path / "g8.safetensors"
    assert main(["convert", "--from", "megvii", str(path), str(out)]) == 0  # model name inferred from shapes
    loaded = load_model(out)
    assert loaded.arch == "shufflenet_v1_g8_x0_5" and loaded.shuffle_order == "megvii"
    assert loaded.checkpoint_meta["model_kwargs"] == {"shuffle_order": "megvii"}
    assert_same(our_logits(loaded, loaded.preprocessing, photos), expected)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_convert_cli_writes_a_self_describing_checkpoint(
    tmp_path: Path, photos: list[Image.Image], suffix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    reference = megvii_reference(3, "0.5x", photos)
    path = save_megvii(reference, tmp_path / "megvii.pth.tar")
    out = tmp_path / f"converted{suffix}"
    assert main(["convert", "--from", "megvii", "--model", "shufflenet_v1_g3_x0_5", str(path), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "megvii ShuffleNet v1" in printed and "BGR" in printed and "shufflenet_v1_g3_x0_5" in printed
    model = load_model(out)
    assert model.preprocessing == MEGVII_PREPROCESSING
    assert model.checkpoint_meta["model_kwargs"] == {}
    assert model.checkpoint_meta["converted_from"]["format"] == "megvii ShuffleNet v1"
    assert model.class_names == [str(i) for i in range(10)]
    assert_same(our_logits(model, model.preprocessing, photos), reference_logits(reference, megvii_input, photos))
    # never overwrites by accident; --overwrite as every command spells it, --force as before (with a warning)
    out.write_bytes(b"an older file")
    assert main(["convert", "--from", "megvii", str(path), str(out)]) == 2
    assert f"{out} already exists; pass overwrite=True (CLI: --overwrite)" in capsys.readouterr().err
    assert out.read_bytes() == b"an older file"
    assert main(["convert", "--from", "megvii", "--overwrite", str(path), str(out)]) == 0
    assert "deprecated" not in capsys.readouterr().err and load_model(out).arch == "shufflenet_v1_g3_x0_5"
    out.write_bytes(b"an older file")
    assert main(["convert", "--from", "megvii", "--force", str(path), str(out)]) == 0
    assert capsys.readouterr().err == "shufflenet convert: warning: --force is deprecated; use --overwrite\n"
    assert load_model(out).arch == "shufflenet_v1_g3_x0_5"
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    shown = capsys.readouterr().out
    assert "--overwrite" in shown and "--force" not in shown


def test_mmpretrain_v1_file_converts_with_classes_and_preprocessing(tmp_path: Path, photos: list[Image.Image]) -> None:
    reference = mm_reference(MmBackboneV1(groups=3, widen_factor=0.5), photos)
    classes = [f"class_{i}" for i in range(10)]
    path = save_mmpretrain(reference, tmp_path / "shufflenet_v1_batch1024_imagenet.pth", classes)
    expected = reference_logits(reference, mm_input, photos)

    model = create_model("shufflenet_v1_g3_x0_5", num_classes=10)
    report = load_pretrained(model, path)
    assert report.source_format == "mmpretrain ShuffleNet v1" and report.preprocessing == MMPRETRAIN_PREPROCESSING
    assert_same(our_logits(model, report.preprocessing, photos), expected)

    out = tmp_path / "mm_v1.pt"
    assert main(["convert", "--from", "mmpretrain", "--model", "shufflenet_v1_g3_x0_5", str(path), str(out)]) == 0
    loaded = load_model(out)
    assert loaded.class_names == classes and loaded.preprocessing == MMPRETRAIN_PREPROCESSING
    assert_same(our_logits(loaded, loaded.preprocessing, photos), expected)


def test_mmpretrain_v2_file_converts_and_loads_through_torch_hub(tmp_path: Path, photos: list[Image.Image]) -> None:
    reference = mm_reference(MmBackboneV2(widen_factor=0.5), photos)
    path = save_mmpretrain(reference, tmp_path / "shufflenet_v2_batch1024_imagenet.pth", [str(i) for i in range(10)])
    expected = reference_logits(reference, mm_input, photos)

    model = create_model("shufflenet_v2_x0_5", num_classes=10)
    report = load_pretrained(model, path)
    assert report.source_format == "mmpretrain ShuffleNet v2"
    assert_same(our_logits(model, report.preprocessing, photos), expected)

    hub_model = torch.hub.load(str(REPO), "shufflenet_v2_x0_5", source="local", weights=str(path), verbose=False)
    assert hub_model.fc.out_features == 10 and hub_model.preprocessing == MMPRETRAIN_PREPROCESSING
    assert_same(our_logits(hub_model, hub_model.preprocessing, photos), expected)


# ---------------------------------------------------------------------------------------------- bad files
@pytest.fixture
def megvii_file(tmp_path: Path) -> Path:
    model = MegviiV1(3, "0.5x", 10)
    return save_megvii(model, tmp_path / "megvii.pth.tar")


def _edit(path: Path, edit: object) -> Path:
    raw = torch.load(path, weights_only=True)
    edit(raw["state_dict"])
    torch.save(raw, path)
    return path


def test_partial_file_names_the_first_missing_key(megvii_file: Path) -> None:
    def drop(state: dict) -> None:
        del state["module.features.9.branch_main_2.1.running_var"]
        del state["module.features.5.branch_main_1.3.weight"]

    _edit(megvii_file, drop)
    with pytest.raises(
        CheckpointError, match=r"no key 'features\.5\.branch_main_1\.3\.weight' \(for our 'stage3\.1\.depthwise"
    ):
        create_model("shufflenet_v1_g3_x0_5", num_classes=10, weights=megvii_file)


def test_wrong_shape_names_the_key_and_the_model_the_file_fits(megvii_file: Path, tmp_path: Path) -> None:
    with pytest.raises(
        CheckpointError, match=r"'first_conv\.0\.weight' has shape \(12, 3, 3, 3\).*shufflenet_v1_g3_x0_5"
    ):
        create_model("shufflenet_v1_g3_x1_0", weights=megvii_file)
    _edit(megvii_file, lambda s: s.update({"module.features.7.branch_main_1.1.bias": torch.zeros(5)}))
    with pytest.raises(
        CheckpointError, match=r"megvii\.pth\.tar: .*'features\.7\.branch_main_1\.1\.bias' has shape \(5,\)"
    ):
        checkpoints.convert_checkpoint(megvii_file, "shufflenet_v1_g3_x0_5", "megvii")
    out = tmp_path / "o.pt"
    assert main(["convert", "--from", "megvii", "--model", "shufflenet_v1_g3_x0_5", str(megvii_file), str(out)]) == 2
    assert not out.exists()


def test_another_architecture_is_refused_by_name(megvii_file: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"megvii ShuffleNet v1 checkpoint but the model is ShuffleNetV2"):
        create_model("shufflenet_v2_x0_5", weights=megvii_file)
    v2 = save_mmpretrain(MmClassifier(MmBackboneV2(0.5), 10), tmp_path / "v2.pth", [])
    with pytest.raises(
        CheckpointError, match=r"mmpretrain ShuffleNet v2 checkpoint but the model is ShuffleNetV1.*shufflenet_v2_x0_5"
    ):
        create_model("shufflenet_v1_g3_x0_5", weights=v2)
    with pytest.raises(
        CheckpointError, match=r"is a mmpretrain ShuffleNet v2 checkpoint, not megvii; use --from mmpretrain"
    ):
        checkpoints.convert_checkpoint(v2, source="megvii")
    mm_g8 = save_mmpretrain(MmClassifier(MmBackboneV1(8, 1.0), 10), tmp_path / "g8.pth", [])
    with pytest.raises(CheckpointError, match=r"'backbone\.layers\.0\.0\.g_conv_1x1_compress\.conv\.weight' has shape"):
        create_model("shufflenet_v1_g3_x1_0", weights=mm_g8)


def test_megvii_v2_files_get_a_clear_refusal(tmp_path: Path) -> None:
    state = {
        "module.first_conv.0.weight": torch.zeros(24, 3, 3, 3),
        "module.features.0.branch_main.0.weight": torch.zeros(22, 24, 1, 1),
        "module.features.0.branch_proj.0.weight": torch.zeros(24, 1, 3, 3),
    }
    path = tmp_path / "ShuffleNetV2.1.0x.pth.tar"
    torch.save({"state_dict": state}, path)
    with pytest.raises(CheckpointError, match="megvii ShuffleNetV2-family checkpoint"):
        create_model("shufflenet_v2_x1_0", weights=path)
    with pytest.raises(CheckpointError, match="megvii ShuffleNetV2-family checkpoint"):
        checkpoints.convert_checkpoint(path, source="megvii")


def test_model_names_are_inferred_from_shapes_for_every_megvii_size() -> None:
    for group, size in MEGVII_SIZES:
        with torch.device("meta"):
            state = MegviiV1(group, size, 1000).state_dict()
        expected = f"shufflenet_v1_g{group}_x{size[:-1].replace('.', '_')}"
        assert checkpoints.infer_model_name({"state_dict": state}) == expected


def test_every_foreign_layout_round_trips_every_key(tmp_path: Path) -> None:
    """No foreign tensor is left over (nothing silently ignored) for the full-size published configurations."""
    cases = [
        (MegviiV1(3, "1.0x", 1000), "shufflenet_v1_g3_x1_0"),
        (MmClassifier(MmBackboneV1(3, 1.0), 1000), "shufflenet_v1_g3_x1_0"),
        (MmClassifier(MmBackboneV2(1.0), 1000), "shufflenet_v2_x1_0"),
    ]
    for index, (foreign, name) in enumerate(cases):
        path = tmp_path / f"{index}.pth"
        torch.save({"state_dict": foreign.state_dict()}, path)
        report = load_pretrained(create_model(name), path)
        assert report.ignored == [] and report.reinitialized == []
        assert report.loaded == len(create_model(name).state_dict())


def test_shuffle_order_is_validated() -> None:
    with pytest.raises(ValueError, match=r"shuffle_order must be one of \('paper', 'megvii'\), got 'reverse'"):
        create_model("shufflenet_v1_g3_x0_5", shuffle_order="reverse")


def test_megvii_order_changes_the_function() -> None:
    """The option is not a no-op: same weights, other order, other logits (g=3 has 20 channels per group)."""
    paper = create_model("shufflenet_v1_g3_x0_5").eval()
    megvii = create_model("shufflenet_v1_g3_x0_5", shuffle_order="megvii").eval()
    megvii.load_state_dict(paper.state_dict())
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        assert not torch.allclose(paper(x), megvii(x), atol=1e-3)


@pytest.mark.parametrize(("group", "grouped_compress"), list(itertools.product([2, 4], [False, True])))
def test_unit_permutation_is_the_identity_for_equal_orders(group: int, grouped_compress: bool) -> None:
    src = v1_shuffle.shuffle_sources(8 * group, group, "paper")
    perm = v1_shuffle.unit_permutation(8 * group, group, group if grouped_compress else 1, src, src)
    assert perm is not None and torch.equal(perm.compress, torch.arange(8 * group))
    assert all(torch.equal(index, torch.arange(8)) for index in perm.expand)
