"""Preprocessing as data: what a checkpoint's model expects of an image, and the transforms that do it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torchvision.transforms import v2 as T

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    def for_size(cls, crop_size: int, **kwargs: Any) -> Preprocessing:
        """Preprocessing for a crop size, resizing by the usual 256/224 ratio."""
        return cls(crop_size=crop_size, resize_size=round(crop_size * 256 / 224), **kwargs)

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
        """PIL image -> model input: resize, centre crop, to float, normalise."""
        return T.Compose(
            [
                T.ToImage(),
                T.Resize(self.resize_size, interpolation=_interpolation(self.interpolation), antialias=True),
                T.CenterCrop(self.crop_size),
                T.ToDtype(torch.float32, scale=True),
                self.normalize(),
            ]
        )

    def train_transform(self) -> T.Transform:
        """PIL image -> augmented model input: RandomResizedCrop + horizontal flip, then normalise."""
        return T.Compose(
            [
                T.ToImage(),
                T.RandomResizedCrop(self.crop_size, interpolation=_interpolation(self.interpolation), antialias=True),
                T.RandomHorizontalFlip(),
                T.ToDtype(torch.float32, scale=True),
                self.normalize(),
            ]
        )


def _interpolation(name: str) -> T.InterpolationMode:
    try:
        return T.InterpolationMode(name)
    except ValueError:
        valid = [m.value for m in T.InterpolationMode]
        raise ValueError(f"unknown interpolation {name!r}; valid: {valid}") from None
