"""Decoding every image mode to RGB, bad files named, verification; on real files written by the tests."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from image_files import write_rgb, write_truncated_jpeg
from PIL import Image

from shufflenet.data import BadImageError, load_image, verify_images


def test_rgba_png_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[:, :4] = (255, 0, 0, 255)  # opaque red
    rgba[:, 4:] = (255, 0, 0, 0)  # fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png")
    assert image.mode == "RGB" and image.size == (8, 8)
    array = np.asarray(image)
    assert tuple(array[0, 0]) == (255, 0, 0)
    assert tuple(array[0, 7]) == (255, 255, 255)


def test_grayscale_and_bilevel_become_rgb(tmp_path: Path) -> None:
    Image.new("L", (10, 6), 77).save(tmp_path / "g.png")
    Image.new("1", (10, 6), 1).save(tmp_path / "b.bmp")
    gray = load_image(tmp_path / "g.png")
    assert gray.mode == "RGB" and gray.size == (10, 6)
    assert tuple(np.asarray(gray)[2, 3]) == (77, 77, 77)
    assert tuple(np.asarray(load_image(tmp_path / "b.bmp"))[0, 0]) == (255, 255, 255)


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    Image.new("CMYK", (16, 16), (0, 255, 0, 0)).save(tmp_path / "c.jpg", quality=100)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    image = load_image(tmp_path / "c.jpg")
    assert image.mode == "RGB"
    r, g, b = (int(v) for v in np.asarray(image)[8, 8])
    assert r > 240 and g < 15 and b > 240  # pure magenta ink


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 1000, 128 * 257, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    image = load_image(tmp_path / "deep.png")
    assert image.mode == "RGB"
    assert np.asarray(image)[0, :, 0].tolist() == [0, 4, 128, 255]  # 1000/257 = 3.9: clipping would give 255


def test_gif_first_frame_with_transparency(tmp_path: Path) -> None:
    frames = [Image.new("P", (12, 12), i) for i in range(2)]
    for frame in frames:
        frame.putpalette([0, 0, 0] + [10, 200, 30] + [0] * (3 * 254))
    frames[0].paste(1, (0, 0, 6, 12))  # left half green, right half palette 0 = transparent
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], transparency=0, duration=50)
    image = load_image(tmp_path / "anim.gif")
    assert image.mode == "RGB" and image.size == (12, 12)
    array = np.asarray(image)
    assert tuple(array[5, 1]) == (10, 200, 30)
    assert tuple(array[5, 10]) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    image = Image.new("RGB", (30, 10), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90 degree turn
    image.save(tmp_path / "rot.jpg", exif=exif)
    assert load_image(tmp_path / "rot.jpg").size == (10, 30)


@pytest.mark.parametrize(
    ("name", "writer", "reason"),
    [
        ("empty.jpg", lambda p: p.write_bytes(b""), "zero-byte"),
        ("notes.png", lambda p: p.write_text("this is not a picture\n"), "not an image"),
        ("cut.jpg", write_truncated_jpeg, "truncated"),
    ],
)
def test_bad_files_raise_bad_image_error_naming_file(tmp_path: Path, name: str, writer, reason: str) -> None:
    path = tmp_path / name
    writer(path)
    with pytest.raises(BadImageError, match=reason) as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)
    assert info.value.path == path
    copy = pickle.loads(pickle.dumps(info.value))  # must cross DataLoader worker boundaries
    assert str(copy) == str(info.value)


def test_verify_images_separates_bad_files(tmp_path: Path) -> None:
    good = [(write_rgb(tmp_path / f"{i}.png"), i % 2) for i in range(20)]
    bad_path = write_truncated_jpeg(tmp_path / "cut.jpg")
    (tmp_path / "zero.png").write_bytes(b"")
    samples = [*good[:10], (bad_path, 1), *good[10:], (tmp_path / "zero.png", 0)]
    kept, bad = verify_images(samples)
    assert kept == good
    assert [p for p, _ in bad] == [bad_path, tmp_path / "zero.png"]
    assert all(reason for _, reason in bad)


# --------------------------------------------------------------------------------------------- scanning
