"""Published ImageNet weights as data, in the manner of torchvision's ``Weights`` enums: one entry per file.

Each :class:`PretrainedWeights` names the model it fits, where it comes from (its URL, whose file name carries
a sha256 prefix as torch.hub expects), the top-1/top-5 its publisher measured, the preprocessing that reproduces
them and the licence as published. :mod:`shufflenet.checkpoints.hub` downloads, checks and loads them.
The torchvision entries are checked against torchvision's own enums by the tests; the mmpretrain ones against
mmpretrain's ``configs/shufflenet_v*/metafile.yml``.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from shufflenet.checkpoints.formats.mmpretrain import MMPRETRAIN_PREPROCESSING
from shufflenet.checkpoints.formats.torchvision import imagenet_class_names
from shufflenet.transforms import Preprocessing

SOURCES = ("torchvision", "mmpretrain")

TORCHVISION_LICENSE = (
    'torchvision code: BSD 3-Clause. Its model card: "The pre-trained models provided in this library may have '
    "their own licenses or terms and conditions derived from the dataset used for training. It is your "
    'responsibility to determine whether you have permission to use the models for your use case."'
)
MMPRETRAIN_LICENSE = (
    'Apache License 2.0 (open-mmlab/mmpretrain: "This project is released under the Apache 2.0 license.")'
)
_MMPRETRAIN = "https://download.openmmlab.com/mmclassification/v0"


@dataclass(frozen=True)
class PretrainedWeights:
    """One published checkpoint: which model it fits, where it lives, what it scored and how to feed it."""

    model: str  # our registered model name
    source: str  # one of SOURCES
    url: str
    sha256_prefix: str  # the start of the file's sha256, which its name carries after the last '-' (torch.hub's rule)
    top1: float  # published ImageNet-1k validation accuracy, percent
    top5: float
    preprocessing: Preprocessing
    license: str
    recipe: str  # where the publisher says how it was trained

    @property
    def file_name(self) -> str:
        """The file's name in the URL (and in the torch.hub cache)."""
        return urlsplit(self.url).path.rsplit("/", 1)[-1]

    @property
    def num_classes(self) -> int:
        """ImageNet-1k: all of these have a 1000-class classifier."""
        return 1000

    def class_names(self) -> list[str]:
        """The 1000 ImageNet class names in the classifier's order (torchvision's table; numbers without it)."""
        return imagenet_class_names() or [str(i) for i in range(self.num_classes)]


def _torchvision(
    model: str, file: str, sha256_prefix: str, top1: float, top5: float, resize: int, recipe: str
) -> PretrainedWeights:
    return PretrainedWeights(
        model=model,
        source="torchvision",
        url=f"https://download.pytorch.org/models/{file}",
        sha256_prefix=sha256_prefix,
        top1=top1,
        top5=top5,
        # torchvision's ImageClassification: bilinear resize of the shorter side, centre crop 224, ImageNet mean/std
        preprocessing=Preprocessing(crop_size=224, resize_size=resize, extra={"source": "torchvision"}),
        license=TORCHVISION_LICENSE,
        recipe=recipe,
    )


def _mmpretrain(model: str, path: str, sha256_prefix: str, top1: float, top5: float, recipe: str) -> PretrainedWeights:
    return PretrainedWeights(
        model=model,
        source="mmpretrain",
        url=f"{_MMPRETRAIN}/{path}",
        sha256_prefix=sha256_prefix,
        top1=top1,
        top5=top5,
        # imagenet_bs64_pil_resize.py: ResizeEdge(256, short, pillow bilinear), CenterCrop(224), mean/std on 0-255
        preprocessing=MMPRETRAIN_PREPROCESSING,
        license=MMPRETRAIN_LICENSE,
        recipe=recipe,
    )


_ERICSUN = "https://github.com/ericsun99/Shufflenet-v2-Pytorch"
_TV_RECIPE = "https://github.com/pytorch/vision/pull/5906"
# The first entry of a model is its default (``pretrained=True``): torchvision's where it has one.
WEIGHTS: tuple[PretrainedWeights, ...] = (
    _torchvision("shufflenet_v2_x0_5", "shufflenetv2_x0.5-f707e7126e.pth", "f707e7126e", 60.552, 81.746, 256, _ERICSUN),
    _torchvision("shufflenet_v2_x1_0", "shufflenetv2_x1-5666bf0f80.pth", "5666bf0f80", 69.362, 88.316, 256, _ERICSUN),
    _torchvision("shufflenet_v2_x1_5", "shufflenetv2_x1_5-3c479a10.pth", "3c479a10", 72.996, 91.086, 232, _TV_RECIPE),
    _torchvision("shufflenet_v2_x2_0", "shufflenetv2_x2_0-8be3c8ee.pth", "8be3c8ee", 76.230, 93.006, 232, _TV_RECIPE),
    _mmpretrain(
        "shufflenet_v2_x1_0",
        "shufflenet_v2/shufflenet_v2_batch1024_imagenet_20200812-5bf4721e.pth",
        "5bf4721e",
        69.55,
        88.92,
        "configs/shufflenet_v2/shufflenet-v2-1x_16xb64_in1k.py",
    ),
    _mmpretrain(
        "shufflenet_v1_g3_x1_0",
        "shufflenet_v1/shufflenet_v1_batch1024_imagenet_20200804-5d6cec73.pth",
        "5d6cec73",
        68.13,
        87.81,
        "configs/shufflenet_v1/shufflenet_v1_1x_b64x16_linearlr_bn_nowd_imagenet.py",
    ),
)


def weights_of(model: str) -> list[PretrainedWeights]:
    """Every published checkpoint for ``model``, its default first (empty when there is none)."""
    return [w for w in WEIGHTS if w.model == model]


def find_weights(model: str, source: str | None = None) -> PretrainedWeights:
    """The checkpoint of ``model`` from ``source`` (None: the model's default); errors say what exists."""
    if source is not None and source not in SOURCES:
        raise ValueError(f"unknown weights source {source!r}; named weights come from {' or '.join(SOURCES)}")
    available = weights_of(model)
    if not available:
        have = sorted({w.model for w in WEIGHTS})
        raise ValueError(
            f"{model} has no published weights; these models have: {', '.join(have)} (`shufflenet models`); "
            "or pass a weights file"
        )
    match = [w for w in available if source in (None, w.source)]
    if not match:
        sources = ", ".join(w.source for w in available)
        raise ValueError(f"{model} has no {source} weights; it has {sources}")
    return match[0]
