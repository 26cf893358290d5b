"""What the service accepts: body and pixel limits, content types, and decoding an upload to a model input.

Every refusal is a :class:`Rejection` carrying its HTTP status and a short machine-readable reason (the
``reason`` label of the rejections metric), so no bad input ever becomes a 500.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image
from torch import Tensor

from shufflenet.data import BadImageError, ImageTooLargeError, decode_image

# Content types read as one raw image body; multipart/form-data carries one or more images as files.
RAW_TYPES = ("image/", "application/octet-stream")
MULTIPART = "multipart/form-data"


@dataclass(frozen=True)
class Limits:
    """The service's limits: request size, pixels per image, images per request, queue, time."""

    max_body_bytes: int = 10 * 1024 * 1024
    # 40 MP: a 7,000 x 5,700 photo passes; a small file declaring gigapixels is refused before decoding.
    max_pixels: int = 40_000_000
    max_images: int = 64
    max_queue: int = 256
    timeout_s: float = 30.0

    def validate(self) -> Limits:
        """Raise ValueError naming the first limit that is not positive."""
        for name in ("max_body_bytes", "max_pixels", "max_images", "max_queue", "timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"serve limit {name} must be > 0, got {getattr(self, name)}")
        return self


class Rejection(Exception):
    """A request refused with ``status`` (4xx/5xx), a short ``reason`` and a message saying what to do."""

    def __init__(self, status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.headers = headers or {}


def media_type(content_type: str | None) -> str:
    """The media type of a Content-Type header, lower case, without parameters."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def is_raw_image_type(content_type: str | None) -> bool:
    """Whether a body (or multipart part) of this type is read as one image."""
    kind = media_type(content_type)
    return any(kind.startswith(prefix) for prefix in RAW_TYPES)


def check_content_type(content_type: str | None) -> str:
    """The request's media type, or a 415 Rejection naming what is accepted."""
    kind = media_type(content_type)
    if kind == MULTIPART or is_raw_image_type(kind):
        return kind
    raise Rejection(
        415,
        "unsupported_type",
        f"Content-Type {kind or '(none)'!r} is not accepted; send an image body (image/png, image/jpeg, ... or "
        "application/octet-stream) or multipart/form-data with image files",
    )


def image_to_input(
    data: bytes,
    name: str,
    transform: Callable[[Image.Image], Tensor],
    max_pixels: int,
    draft_size: int | None = None,
) -> Tensor:
    """Decode an upload and apply ``transform`` (the checkpoint's eval preprocessing); 413/422 when it cannot.

    ``draft_size``: a JPEG larger than needed decodes at 1/2, 1/4 or 1/8 scale while both sides stay >= it.
    """
    if not data:
        raise Rejection(422, "empty_image", f"{name} is empty; send the image file's bytes")
    try:
        image = decode_image(io.BytesIO(data), name, draft_size=draft_size, max_pixels=max_pixels)
    except ImageTooLargeError as err:
        raise Rejection(413, "too_many_pixels", f"{name}: {err.reason}; send a smaller image") from None
    except BadImageError as err:
        raise Rejection(422, "bad_image", f"{name}: {err.reason}") from None
    return transform(image)
