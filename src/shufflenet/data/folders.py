"""Scanning class-per-folder image trees and prediction inputs; errors name the path and what to do."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from shufflenet.data.images import IMAGE_EXTENSIONS, Sample, is_image_file


def _check_dir(root: Path, what: str = "data directory") -> None:
    if not root.exists():
        raise ValueError(f"{what} {root} does not exist; check the path")
    if not root.is_dir():
        raise ValueError(f"{what} {root} is not a directory; pass a folder with one sub-folder per class")


def _image_names_under(folder: str | Path) -> list[str]:
    """Image file paths below ``folder`` as strings (recursive, hidden files and folders skipped), sorted.

    Strings, not Paths, while listing: building a pathlib.Path costs more than reading its directory entry.
    """
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(os.path.join(dirpath, f) for f in filenames if is_image_file(f))
    return sorted(found)


def _images_under(folder: Path) -> list[Path]:
    """Image files below ``folder`` (recursive, hidden files and folders skipped), sorted."""
    return [Path(p) for p in _image_names_under(folder)]


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "__MACOSX")


def scan_image_folder(root: str | Path) -> tuple[list[Sample], list[str]]:
    """Scan a class-per-folder tree; returns ([(path, label)], sorted class names). Errors name what is wrong."""
    root = Path(root)
    _check_dir(root)
    class_dirs = _class_dirs(root)
    if not class_dirs:
        loose = len(_images_under(root))
        hint = f" (found {loose} images directly in it)" if loose else ""
        raise ValueError(
            f"no class folders in {root}{hint}; put the images in one sub-folder per class, e.g. {root}/cats/1.jpg"
        )
    per_class = {d.name: _images_under(d) for d in class_dirs}
    empty = [name for name, files in per_class.items() if not files]
    if empty:
        raise ValueError(
            f"class folder(s) with no images in {root}: {', '.join(empty)}; add images "
            f"({', '.join(IMAGE_EXTENSIONS)}) or remove the folder(s)"
        )
    class_names = sorted(per_class)
    if len(class_names) < 2:
        raise ValueError(
            f"only one class folder ({class_names[0]!r}) in {root}; classification needs at least 2 classes, "
            f"add a folder per class"
        )
    samples = [(path, label) for label, name in enumerate(class_names) for path in per_class[name]]
    return samples, class_names


def list_image_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files and folders (searched recursively, sorted) -> image files, for prediction; errors name bad paths."""
    result: list[Path] = []
    seen: set[Path] = set()
    for item in paths:
        path = Path(item)
        if not path.exists():
            raise ValueError(f"{path} does not exist; pass image files or folders of images")
        if path.is_dir():
            found = _images_under(path)
            if not found:
                raise ValueError(f"folder {path} contains no images ({', '.join(IMAGE_EXTENSIONS)})")
        else:
            found = [path]
        for f in found:
            if f not in seen:
                seen.add(f)
                result.append(f)
    if not result:
        raise ValueError("no image paths given; pass image files or folders of images")
    return result
