"""Scanning class folders and prediction inputs: what counts as an image, errors naming the problem."""

from __future__ import annotations

from pathlib import Path

import pytest
from image_files import make_tree, write_rgb

from shufflenet.data import IMAGE_EXTENSIONS, list_image_paths, scan_image_folder


def test_scan_ignores_non_images_and_hidden_files(tmp_path: Path) -> None:
    make_tree(tmp_path, {"cat": 2, "dog": 3})
    (tmp_path / "cat" / "notes.txt").write_text("hello")
    (tmp_path / "cat" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (tmp_path / "dog" / "._img000.png").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork
    write_rgb(tmp_path / "dog" / "nested" / "UPPER.JPG")
    (tmp_path / ".hidden_class").mkdir()
    write_rgb(tmp_path / ".hidden_class" / "x.png")
    (tmp_path / "README.txt").write_text("readme")
    samples, classes = scan_image_folder(tmp_path)
    assert classes == ["cat", "dog"]
    names = [p.relative_to(tmp_path).as_posix() for p, _ in samples]
    assert names == [
        "cat/img000.png",
        "cat/img001.png",
        "dog/img000.png",
        "dog/img001.png",
        "dog/img002.png",
        "dog/nested/UPPER.JPG",
    ]
    assert [label for _, label in samples] == [0, 0, 1, 1, 1, 1]
    assert ".jpg" in IMAGE_EXTENSIONS and ".tiff" in IMAGE_EXTENSIONS


def test_scan_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"missing.*does not exist"):
        scan_image_folder(tmp_path / "missing")
    write_rgb(tmp_path / "file.png")
    with pytest.raises(ValueError, match="not a directory"):
        scan_image_folder(tmp_path / "file.png")
    with pytest.raises(ValueError, match=r"no class folders.*1 images directly"):
        scan_image_folder(tmp_path)
    make_tree(tmp_path / "one", {"only": 2})
    with pytest.raises(ValueError, match=r"only one class folder \('only'\)"):
        scan_image_folder(tmp_path / "one")
    make_tree(tmp_path / "holes", {"a": 2, "b": 2})
    (tmp_path / "holes" / "empty1").mkdir()
    (tmp_path / "holes" / "empty2").mkdir()
    (tmp_path / "holes" / "empty2" / "notes.txt").write_text("no pictures")
    with pytest.raises(ValueError, match=r"no images in .*holes: empty1, empty2"):
        scan_image_folder(tmp_path / "holes")


def test_list_image_paths(tmp_path: Path) -> None:
    make_tree(tmp_path / "imgs", {"b": 2, "a": 1})
    (tmp_path / "imgs" / "a" / "skip.txt").write_text("x")
    single = write_rgb(tmp_path / "single.jpg")
    paths = list_image_paths([single, tmp_path / "imgs", str(single)])
    rel = [p.relative_to(tmp_path).as_posix() for p in paths]
    assert rel == ["single.jpg", "imgs/a/img000.png", "imgs/b/img000.png", "imgs/b/img001.png"]
    with pytest.raises(ValueError, match=r"nope\.png does not exist"):
        list_image_paths([single, tmp_path / "nope.png"])
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="blank contains no images"):
        list_image_paths([tmp_path / "blank"])
