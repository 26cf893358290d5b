"""The GPU input path: what the loader workers do and what the training device does (``--input-pipeline``).

* ``workers`` (default): workers decode (PIL, JPEG draft), crop, resize and flip to uint8; the uint8 batch goes
  to the device (pinned, non-blocking) and is normalised there (:func:`~shufflenet.transforms.batch_normalizer`).
* ``device``: workers decode, crop and resize to uint8 and draw each image's flip; the device flips and
  normalises. ``--auto-augment`` and ``--random-erase`` stay per image in the workers.
* ``gpu-decode``: workers read the file's bytes and its header and draw the crop and the flip; the device
  decodes the JPEGs (``torchvision.io.decode_jpeg``, batched: nvJPEG on CUDA), crops, resizes, flips and
  normalises. Files nvJPEG does not take (PNG, CMYK JPEGs...) are decoded by PIL in the worker and only
  cropped and resized on the device. CUDA only in training; the same code runs with ``device="cpu"`` in tests.

Every random draw happens in the worker, inside :class:`~shufflenet.training.loaders.SeededSamples`' per-image
seed, so the crops and flips do not depend on the pipeline's split, the workers, the ranks or a resume.
A batch's ``.to(device)`` finishes its preprocessing on that device and returns the uint8 NCHW tensor the
usual normaliser takes, so the loop and evaluation move batches as before.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import default_collate
from torchvision import tv_tensors
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as F

from shufflenet.data import BadImageError, decode_image
from shufflenet.data.bad_images import BadImageLog
from shufflenet.data.shards import is_shard_dir
from shufflenet.transforms import Preprocessing, eval_transform, train_transform

INPUT_PIPELINES = ("workers", "device", "gpu-decode")
_EXIF_ORIENTATION = 0x0112
_NVJPEG_MODES = ("RGB", "L")  # JPEG colour modes nvJPEG decodes to RGB; CMYK/YCCK go through PIL


@dataclass
class Cropped:
    """``device`` pipeline: a worker's uint8 crop at the training size, and whether the device flips it."""

    image: Tensor
    flip: bool


@dataclass
class Encoded:
    """``gpu-decode`` pipeline: a file as the worker leaves it for the device.

    ``data`` is the JPEG's bytes (1-D uint8) or, for files nvJPEG does not take, the image PIL decoded (uint8
    CHW). ``height``/``width`` are the upright image's; ``orientation`` is the EXIF rotation still to apply
    after decoding the bytes. ``box`` (top, left, height, width) is the training crop, ``None`` for the
    validation resize and centre crop.
    """

    data: Tensor | None  # None once collated: the batch holds every item's data in one buffer
    height: int
    width: int
    source: str
    orientation: int = 1
    box: tuple[int, int, int, int] | None = None
    flip: bool = False
    shape: tuple[int, ...] = ()  # the data's shape, kept when it moves into the batch's buffer


def check_pipeline(name: str, device: torch.device, data: str | Path | None = None) -> None:
    """Raise ValueError for an unknown pipeline, a device pipeline with shards (``data``), or ``gpu-decode`` on
    a device without nvJPEG."""
    if name not in INPUT_PIPELINES:
        raise ValueError(f"input_pipeline must be one of {', '.join(INPUT_PIPELINES)}; got {name!r}")
    if name != "workers" and data is not None and is_shard_dir(data):
        raise ValueError(
            f"--input-pipeline {name} reads image folders; shards in {data} are decoded and augmented by the "
            f"loader workers: drop --input-pipeline (or train from the image folder)"
        )
    if name == "gpu-decode" and device.type != "cuda":
        raise ValueError(
            f"--input-pipeline gpu-decode decodes JPEGs with nvJPEG and needs a CUDA device, not {device}; "
            f"use --input-pipeline device (or workers) here"
        )


# ------------------------------------------------------------------------------------------ in the workers


def read_encoded(path: str | Path) -> Encoded:
    """A file's bytes and upright size from its header (JPEGs nvJPEG takes), else PIL's decoded image.

    Raises BadImageError as :func:`~shufflenet.data.load_image` does for files that cannot be opened; a JPEG
    whose data is corrupt past its header is found on the device (:meth:`EncodedBatch.to`).
    """
    try:
        with open(path, "rb") as file:  # not pathlib: workers read str paths (data/file_list.py)
            data = file.read()
    except OSError as exc:
        raise BadImageError(path, f"cannot read file ({exc.strerror or exc})") from None
    if not data:
        raise BadImageError(path, "zero-byte file")
    try:
        header = Image.open(io.BytesIO(data))
        kind, mode, (width, height) = header.format, header.mode, header.size
        orientation = header.getexif().get(_EXIF_ORIENTATION, 1) if kind == "JPEG" else 1
    except Exception:  # decode_image below names what is wrong with the file
        kind = None
    if kind == "JPEG" and mode in _NVJPEG_MODES and orientation in range(1, 9):
        if orientation >= 5:  # stored sideways: the upright image is the header's transposed
            width, height = height, width
        return Encoded(torch.frombuffer(bytearray(data), dtype=torch.uint8), height, width, str(path), orientation)
    image = F.pil_to_tensor(decode_image(io.BytesIO(data), path))  # upright RGB, or BadImageError
    return Encoded(image, image.shape[1], image.shape[2], str(path))


class DrawCrop:
    """Worker transform of ``gpu-decode``: RandomResizedCrop's box and the flip, drawn from the header's size.

    The draws are RandomResizedCrop's and RandomHorizontalFlip's own, in their order, so with the same seed
    they are the ``workers`` pipeline's (for images the JPEG draft does not shrink).
    """

    def __init__(self, size: int, crop_scale: float, hflip: bool) -> None:
        self.crop = T.RandomResizedCrop(size, scale=(crop_scale, 1.0))
        self.hflip = hflip

    def __call__(self, item: Encoded) -> Encoded:
        """``item`` with its crop box and flip drawn."""
        shape_only = tv_tensors.Image(torch.empty(1, 1, 1).expand(3, item.height, item.width))  # no pixels
        box = self.crop.make_params([shape_only])
        item.box = (box["top"], box["left"], box["height"], box["width"])
        item.flip = self.hflip and bool(torch.rand(1) < 0.5)
        return item


class DrawFlip:
    """Worker transform of ``device``: the uint8 crop (``transform``, without flip) and the flip to apply later."""

    def __init__(self, transform: Callable[[Any], Tensor], hflip: bool) -> None:
        self.transform, self.hflip = transform, hflip

    def __call__(self, image: Any) -> Cropped:
        """The uint8 crop of ``image`` and its flip draw."""
        crop = self.transform(image)
        return Cropped(crop, self.hflip and bool(torch.rand(1) < 0.5))  # RandomHorizontalFlip's draw


def _no_transform(item: Encoded) -> Encoded:
    return item


# ------------------------------------------------------------------------------------------ batches


@dataclass
class CroppedBatch:
    """A batch of :class:`Cropped`; ``.to(device)`` moves the uint8 crops and flips them there."""

    images: Tensor
    flips: Tensor

    def pin_memory(self) -> CroppedBatch:
        """Page-locked copies, so the copy to the GPU is asynchronous (DataLoader's pin_memory calls this)."""
        return CroppedBatch(self.images.pin_memory(), self.flips.pin_memory())

    def to(
        self, device: torch.device | str, non_blocking: bool = False, memory_format: torch.memory_format | None = None
    ) -> Tensor:
        """The batch on ``device``, flipped where drawn: uint8 NCHW in ``memory_format``."""
        images = self.images.to(device, non_blocking=non_blocking)
        flips = self.flips.to(device, non_blocking=non_blocking).view(-1, 1, 1, 1)
        images = torch.where(flips, images.flip(-1), images)
        return images.contiguous(memory_format=memory_format or torch.contiguous_format)


@dataclass
class EncodedBatch:
    """A batch of :class:`Encoded`; ``.to(device)`` decodes, orients, crops, resizes and flips it there.

    The items' bytes (and PIL-decoded images) travel in one ``payload`` tensor: one shared-memory buffer from
    a loader worker per batch, not one per image (each would cost the DataLoader a file descriptor).
    """

    items: list[Encoded]
    payload: Tensor  # every item's data, flattened and concatenated
    size: tuple[int, int]  # the training crop's (height, width)
    resize_size: int  # validation: shorter side, then a centre crop of crop_size
    crop_size: int
    interpolation: T.InterpolationMode
    bad_log: BadImageLog | None = None

    def pin_memory(self) -> EncodedBatch:
        """Unchanged: decode_jpeg reads the bytes from ordinary CPU memory."""
        return self

    def to(
        self, device: torch.device | str, non_blocking: bool = False, memory_format: torch.memory_format | None = None
    ) -> Tensor:
        """The batch decoded and prepared on ``device``: uint8 NCHW in ``memory_format``."""
        device = torch.device(device)
        images = self._decode(device)
        out = [self._crop_and_resize(image, item) for image, item in zip(images, self.items, strict=True)]
        batch = torch.stack(out)
        flips = torch.tensor([item.flip for item in self.items], device=device).view(-1, 1, 1, 1)
        batch = torch.where(flips, batch.flip(-1), batch)
        return batch.contiguous(memory_format=memory_format or torch.contiguous_format)

    def _decode(self, device: torch.device) -> list[Tensor]:
        """Each item's upright uint8 CHW image on ``device``; an undecodable file takes the next good one's."""
        sizes = [math.prod(item.shape) for item in self.items]
        data = [part.view(item.shape) for part, item in zip(self.payload.split(sizes), self.items, strict=True)]
        encoded = [i for i, item in enumerate(self.items) if len(item.shape) == 1]
        images: list[Tensor | None] = [d.to(device) if d.ndim == 3 else None for d in data]
        decoded: list[Tensor | None] = []
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*TorchCodec.*")  # torchvision 0.29 points to TorchCodec
            try:
                if encoded:
                    decoded = decode_jpeg([data[i] for i in encoded], mode=ImageReadMode.RGB, device=device)
            except RuntimeError:  # one bad file fails the whole call: find it
                decoded = [self._decode_one(self.items[i], data[i], device) for i in encoded]
        for i, image in zip(encoded, decoded, strict=True):
            images[i] = None if image is None else _orient(image, self.items[i].orientation)
        good = [i for i, image in enumerate(images) if image is not None]
        if not good:
            raise BadImageError(self.items[0].source, "no image of this batch can be decoded")
        n = len(images)
        return [images[i] if images[i] is not None else images[min(good, key=lambda g: (g - i) % n)] for i in range(n)]

    def _decode_one(self, item: Encoded, data: Tensor, device: torch.device) -> Tensor | None:
        """One JPEG by nvJPEG, else by PIL (features nvJPEG lacks); None, logged, when neither can."""
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            pass
        try:
            image = decode_image(io.BytesIO(data.numpy().tobytes()), item.source)
        except BadImageError as exc:
            if self.bad_log is not None:
                self.bad_log.record(exc.path, exc.reason)
            return None
        item.orientation = 1  # PIL applied it
        return F.pil_to_tensor(image).to(device)

    def _crop_and_resize(self, image: Tensor, item: Encoded) -> Tensor:
        if item.box is None:  # validation: the eval transform's resize and centre crop
            image = F.resize(image, self.resize_size, interpolation=self.interpolation, antialias=True)
            return F.center_crop(image, self.crop_size)
        top, left, height, width = item.box
        return F.resized_crop(image, top, left, height, width, list(self.size), self.interpolation, antialias=True)


def _orient(image: Tensor, orientation: int) -> Tensor:
    """EXIF orientation 2-8 applied to a CHW tensor, as PIL's ImageOps.exif_transpose does to an image."""
    if orientation == 2:
        return image.flip(-1)
    if orientation == 3:
        return image.flip(-1, -2)
    if orientation == 4:
        return image.flip(-2)
    if orientation == 5:
        return image.transpose(-1, -2)
    if orientation == 6:
        return image.rot90(-1, (-2, -1))
    if orientation == 7:
        return image.transpose(-1, -2).flip(-1, -2)
    if orientation == 8:
        return image.rot90(1, (-2, -1))
    return image


class Collate:
    """DataLoader collate_fn for the device pipelines: plain tensors as usual, their items into their batches."""

    def __init__(self, preprocessing: Preprocessing, size: int, bad_log: BadImageLog | None = None) -> None:
        self.preprocessing, self.size, self.bad_log = preprocessing, size, bad_log

    def __call__(self, samples: Sequence[tuple[Any, int]]) -> tuple[Any, Tensor]:
        """(batch, labels) from a list of (item, label)."""
        first = samples[0][0]
        labels = torch.tensor([label for _, label in samples])
        if isinstance(first, Cropped):
            images = torch.stack([item.image for item, _ in samples])
            return CroppedBatch(images, torch.tensor([item.flip for item, _ in samples])), labels
        if isinstance(first, Encoded):
            pre = self.preprocessing
            mode = T.InterpolationMode(pre.interpolation)
            items = [item for item, _ in samples]
            payload = torch.cat([item.data.reshape(-1) for item in items])
            for item in items:
                item.shape, item.data = tuple(item.data.shape), None
            size = (self.size, self.size)
            return EncodedBatch(items, payload, size, pre.resize_size, pre.crop_size, mode, self.bad_log), labels
        return default_collate(samples)


# ------------------------------------------------------------------------------------------ choosing


@dataclass
class Pipeline:
    """What build_data needs for one ``--input-pipeline``: worker transforms, file reader, collate_fn."""

    name: str
    transforms: tuple[Callable[[Any], Any], Callable[[Any], Any]]  # (train, val) in the workers
    load: Callable[[Path], Any] | None  # None: PIL decoding (data.load_image)
    collate: Callable[[Sequence[tuple[Any, int]]], Any] | None  # None: DataLoader's default


def build_pipeline(
    name: str,
    preprocessing: Preprocessing,
    size: int,
    crop_scale: float,
    hflip: bool,
    auto_augment: str | None,
    random_erase: float,
    pad_crop: int = 0,
    bad_log: BadImageLog | None = None,
    make_train: Callable[..., Callable[[Any], Tensor]] = train_transform,
) -> Pipeline:
    """The worker side of pipeline ``name`` for training crops of ``size`` and validation by ``preprocessing``.

    ``make_train`` builds the workers' uint8 training transform (:func:`~shufflenet.transforms.train_transform`).
    """
    if name not in INPUT_PIPELINES:
        raise ValueError(f"input_pipeline must be one of {', '.join(INPUT_PIPELINES)}; got {name!r}")
    if name == "workers":
        train = make_train(preprocessing, crop_scale, hflip, size, auto_augment, random_erase, pad_crop)
        return Pipeline(name, (train, eval_transform(preprocessing)), None, None)
    collate = Collate(preprocessing, size, bad_log)
    if name == "device":
        train = make_train(preprocessing, crop_scale, False, size, auto_augment, random_erase, pad_crop)
        return Pipeline(name, (DrawFlip(train, hflip), eval_transform(preprocessing)), None, collate)
    if auto_augment or random_erase or pad_crop:
        raise ValueError(
            "--auto-augment, --random-erase and --pad-crop work on decoded images in the loader workers; with "
            "--input-pipeline gpu-decode the workers decode nothing: use --input-pipeline device for them"
        )
    return Pipeline(name, (DrawCrop(size, crop_scale, hflip), _no_transform), read_encoded, collate)
