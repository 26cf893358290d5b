"""Decoding image files to RGB whatever their mode (RGBA, palette, grayscale, CMYK, 16-bit, GIF), or a clear error.

Files that cannot be decoded raise :class:`BadImageError` naming the file and the reason; :func:`verify_images`
decodes a list of files once and separates the readable from the rest.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_EXIF_ORIENTATION = 0x0112
_WHITE = (255, 255, 255, 255)

Sample = tuple[Path, int]


class BadImageError(ValueError):
    """An image file that cannot be decoded; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"cannot read image {self.path}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle through ``args``; keep both fields so DataLoader workers can re-raise it.
        return (type(self), (self.path, self.reason))


def is_image_file(path: str | Path) -> bool:
    """True for a non-hidden file name with one of :data:`IMAGE_EXTENSIONS` (any case)."""
    name = os.path.basename(path)  # os.path, not pathlib: this runs once per file of a million-image tree
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


# --------------------------------------------------------------------------------------------- decoding


class ImageTooLargeError(BadImageError):
    """An image whose header declares more pixels than allowed (a decompression bomb), refused before decoding."""


def load_image(path: str | Path, draft_size: int | None = None) -> Image.Image:
    """Open and fully decode an image file as 8-bit RGB; raises :class:`BadImageError` when it cannot.

    ``draft_size`` lets the JPEG decoder scale down by 1/2, 1/4 or 1/8 while both sides stay >= draft_size,
    which is much faster for large photos that are resized anyway.
    """
    try:  # os.stat, not Path(path).stat(): loader workers call this with strings (data/file_list.py)
        size = os.stat(path).st_size
    except OSError as exc:
        raise BadImageError(path, f"cannot stat file ({exc.strerror or exc})") from None
    if size == 0:
        raise BadImageError(path, "zero-byte file")
    # Opening from our own file object keeps the decoded pixels valid after the file is closed.
    with open(path, "rb") as f:
        return decode_image(f, path, draft_size)


def decode_image(
    file: BinaryIO, source: str | Path, draft_size: int | None = None, max_pixels: int | None = None
) -> Image.Image:
    """Decode an open image file (or BytesIO) named ``source`` in errors as 8-bit RGB, or raise BadImageError.

    ``max_pixels`` refuses, from the header alone and before any pixel is decoded, an image with more pixels
    (:class:`ImageTooLargeError`): a small file can declare gigapixels (a decompression bomb).
    """
    try:
        im = Image.open(file)
        if max_pixels is not None and im.width * im.height > max_pixels:
            raise ImageTooLargeError(
                source, f"{im.width}x{im.height} is {im.width * im.height} pixels, over the limit of {max_pixels}"
            )
        if draft_size and im.format == "JPEG":
            im.draft(None, (draft_size, draft_size))
        im.load()  # raises on truncated data (PIL's LOAD_TRUNCATED_IMAGES stays False)
    except Image.UnidentifiedImageError:
        raise BadImageError(source, "not an image (unknown format or corrupt header)") from None
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(source, f"too large to decode safely ({exc})") from None
    except BadImageError:
        raise
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        # PIL reports truncated/corrupt data with several exception types depending on the codec.
        raise BadImageError(source, f"corrupt or truncated image data ({exc})") from None
    try:
        orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # a broken EXIF block should not cost the picture
        orientation = 1
    if orientation in range(2, 9):  # camera photos stored sideways
        im = ImageOps.exif_transpose(im)
    try:
        out = _to_rgb(im)
    except (OSError, ValueError) as exc:
        raise BadImageError(source, f"cannot convert mode {im.mode} to RGB ({exc})") from None
    return out


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: alpha composited on white, high bit depths scaled (not clipped)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16") or mode in ("I", "F"):
        return Image.fromarray(_high_depth_to_uint8(im)).convert("RGB")
    if (mode == "P" and "transparency" in im.info) or mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    return im.convert("RGB")


def _high_depth_to_uint8(im: Image.Image) -> np.ndarray:
    """16-bit and 32-bit grayscale -> uint8 by scaling the full range (65535 -> 255), not by clipping."""
    array = np.asarray(im)
    if im.mode == "F":
        data = array.astype(np.float64)
        finite = data[np.isfinite(data)]
        peak = float(finite.max()) if finite.size else 0.0
        scale = 255.0 if peak <= 1.0 else 1.0  # float images are usually in [0, 1]
        return np.clip(np.nan_to_num(data) * scale, 0, 255).round().astype(np.uint8)
    data = array.astype(np.int64)
    # "I;16*" is always 16-bit; "I" is what 16-bit PNG/TIFF become in some Pillow versions; other "I" images
    # are 16-bit data when their values exceed 8 bits.
    sixteen = im.mode.startswith("I;16") or im.format in ("PNG", "TIFF") or data.max(initial=0) > 255
    if sixteen:
        return (np.clip(data, 0, 65535) / 257.0).round().astype(np.uint8)
    return np.clip(data, 0, 255).astype(np.uint8)


def verify_images(samples: Sequence[Sample], workers: int | None = None) -> tuple[list[Sample], list[tuple[Path, str]]]:
    """Decode each file once; returns (readable samples in input order, [(path, reason)] for the others)."""

    def check(sample: Sample) -> str | None:
        try:
            load_image(sample[0])
        except BadImageError as exc:
            return exc.reason
        return None

    workers = workers or min(8, (os.cpu_count() or 1) + 2)
    if len(samples) < 16 or workers <= 1:
        reasons = [check(s) for s in samples]
    else:
        # PIL releases the GIL while decoding, so threads overlap well.
        with ThreadPoolExecutor(max_workers=workers) as pool:
            reasons = list(pool.map(check, samples))
    good = [s for s, r in zip(samples, reasons, strict=True) if r is None]
    bad = [(s[0], r) for s, r in zip(samples, reasons, strict=True) if r is not None]
    return good, bad
