"""Preprocessing as data: what a checkpoint's model expects of an image, and the transforms that do it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import Tensor
from torchvision.transforms import v2 as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_CROP_PCT = 0.875  # ImageNet's 224/256; checkpoints that predate eval crops store exactly this
AUTO_AUGMENT = {"trivialaugment": T.TrivialAugmentWide, "randaugment": T.RandAugment}


def _resize_size(crop_size: int, crop_pct: float) -> int:
    """The shorter side an eval crop of ``crop_pct`` resizes to (timm's crop_pct), checked."""
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"eval crop (crop_pct) must be in (0, 1], got {crop_pct}")
    return round(crop_size / crop_pct)


@dataclass(frozen=True)
class Preprocessing:
    """How to turn an RGB image into the model's input.

    The image is resized (shorter side ``resize_size``), centre-cropped to ``crop_size``, scaled to
    [0, ``pixel_scale``], put in ``channel_order`` and normalised with ``mean``/``std`` (in that scale).
    ImageNet/torchvision: scale 1, RGB, ImageNet mean/std. megvii v1: scale 255, BGR, mean 0, std 1.
    """

    crop_size: int = 224
    resize_size: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    pixel_scale: float = 1.0
    channel_order: str = "RGB"
    interpolation: str = "bilinear"
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_size(cls, crop_size: int, crop_pct: float = DEFAULT_CROP_PCT, **kwargs: Any) -> Preprocessing:
        """Preprocessing for a crop size; the shorter side is resized to ``crop_size / crop_pct`` (224/256 usual)."""
        return cls(crop_size=crop_size, resize_size=_resize_size(crop_size, crop_pct), **kwargs)

    @property
    def crop_pct(self) -> float:
        """timm's crop_pct: the fraction of the resized shorter side that the centre crop keeps."""
        return self.crop_size / self.resize_size

    def with_crop_pct(self, crop_pct: float) -> Preprocessing:
        """The same preprocessing with another eval crop (1.0: resize the shorter side to the crop size)."""
        return replace(self, resize_size=_resize_size(self.crop_size, crop_pct))

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form (stored in checkpoints and ONNX metadata)."""
        data = asdict(self)
        data["mean"], data["std"] = list(self.mean), list(self.std)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Preprocessing:
        """Inverse of :meth:`to_dict`; unknown keys are kept in ``extra``."""
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        kwargs = {k: v for k, v in data.items() if k in known}
        for key in ("mean", "std"):
            if key in kwargs:
                kwargs[key] = tuple(float(v) for v in kwargs[key])
        extra = dict(data.get("extra", {}))
        extra.update({k: v for k, v in data.items() if k not in known and k != "extra"})
        return cls(**kwargs, extra=extra)

    def normalize(self) -> T.Transform:
        """Float tensor in [0, 1] RGB -> the model's input scale, channel order and normalisation."""
        return T.Compose(
            [
                T.Lambda(self._scale_and_order),
                T.Normalize(mean=list(self.mean), std=list(self.std)),
            ]
        )

    def _scale_and_order(self, image: torch.Tensor) -> torch.Tensor:
        if self.channel_order == "BGR":
            image = image.flip(-3)
        return image * self.pixel_scale if self.pixel_scale != 1.0 else image

    def eval_transform(self) -> T.Transform:
        """PIL image -> model input for inference: resize, centre crop, to float, normalise.

        Training uses :func:`train_transform` and :func:`eval_transform` (uint8, normalised per batch).
        """
        return T.Compose(
            [
                T.ToImage(),
                T.Resize(self.resize_size, interpolation=_interpolation(self.interpolation), antialias=True),
                T.CenterCrop(self.crop_size),
                T.ToDtype(torch.float32, scale=True),
                self.normalize(),
            ]
        )


# Training and validation transforms on uint8 images, normalised a whole batch at a time.


def train_transform(
    preprocessing: Preprocessing,
    crop_scale: float = 0.08,
    hflip: bool = True,
    size: int | None = None,
    auto_augment: str | None = None,
    random_erase: float = 0.0,
    pad_crop: int = 0,
) -> T.Transform:
    """Training augmentation to a uint8 tensor: RandomResizedCrop(size, scale=(crop_scale, 1)), optional flip,
    TrivialAugmentWide or RandAugment, RandomErasing (torchvision's reference order).

    ``pad_crop`` > 0 is the small-image practice (CIFAR's) in place of RandomResizedCrop: the whole image (the
    shorter side resized to ``size``, centre-cropped square), zero-padded by ``pad_crop`` pixels on every side
    and cropped back to ``size`` at a random place: shifts of the object at its own scale, nothing cut away.
    ``size`` defaults to the preprocessing's crop size (torchvision's recipe trains smaller than it evaluates).
    Images stay uint8 until :func:`batch_normalizer` turns whole batches into the model's input: converting
    and normalising image by image costs more than decoding a photo (docs/training.md).
    """
    interpolation = T.InterpolationMode(preprocessing.interpolation)
    size = size or preprocessing.crop_size
    steps: list[T.Transform] = [T.ToImage()]
    if pad_crop > 0:
        steps += [
            T.Resize(size, interpolation=interpolation, antialias=True),
            T.CenterCrop(size),
            T.RandomCrop(size, padding=pad_crop),
        ]
    else:
        steps.append(T.RandomResizedCrop(size, scale=(crop_scale, 1.0), interpolation=interpolation, antialias=True))
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    if auto_augment is not None:
        if auto_augment not in AUTO_AUGMENT:
            raise ValueError(f"auto_augment must be one of {', '.join(AUTO_AUGMENT)}; got {auto_augment!r}")
        steps.append(AUTO_AUGMENT[auto_augment](interpolation=interpolation))
    if random_erase > 0:
        steps.append(T.RandomErasing(p=random_erase))
    return T.Compose(steps)


def eval_transform(preprocessing: Preprocessing) -> T.Transform:
    """Validation resize + centre crop to a uint8 tensor (normalised per batch by :func:`batch_normalizer`)."""
    return T.Compose(
        [
            T.ToImage(),
            T.Resize(
                preprocessing.resize_size,
                interpolation=T.InterpolationMode(preprocessing.interpolation),
                antialias=True,
            ),
            T.CenterCrop(preprocessing.crop_size),
        ]
    )


def batch_normalizer(preprocessing: Preprocessing) -> Callable[[Tensor], Tensor]:
    """uint8 NCHW batch -> the model's float input, as ``preprocessing.normalize()`` does for one image.

    One multiply-add per element on the whole batch; the memory format of the batch is kept.
    """
    std = torch.tensor(preprocessing.std, dtype=torch.float32).view(1, 3, 1, 1)
    mean = torch.tensor(preprocessing.mean, dtype=torch.float32).view(1, 3, 1, 1)
    scale, shift = preprocessing.pixel_scale / (255.0 * std), -mean / std
    flip = preprocessing.channel_order == "BGR"

    def normalize(images: Tensor) -> Tensor:
        if images.is_floating_point():
            raise TypeError("batch_normalizer expects uint8 images (0-255), got floats")
        if flip:
            images = images.flip(1)
        a, b = scale.to(images.device), shift.to(images.device)
        return torch.addcmul(b, images.float(), a)

    return normalize


def _interpolation(name: str) -> T.InterpolationMode:
    try:
        return T.InterpolationMode(name)
    except ValueError:
        valid = [m.value for m in T.InterpolationMode]
        raise ValueError(f"unknown interpolation {name!r}; valid: {valid}") from None
