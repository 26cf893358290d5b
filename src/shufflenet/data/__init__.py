"""Image-folder datasets: scanning, seeded stratified splits, robust decoding, the bundled digits demo data.

Two layouts are understood: ``DIR/train/<class>/…`` + ``DIR/val/<class>/…`` (the seed's), or one
``DIR/<class>/…`` tree that is split into train/val by a seeded, stratified fraction and saved so reruns match.
Every image is decoded to RGB whatever its mode (RGBA, palette, grayscale, CMYK, 16-bit, GIF); files that cannot
be decoded are skipped with one warning, and non-image files are ignored.

:mod:`~shufflenet.data.images` decodes files; :mod:`~shufflenet.data.folders` scans class folders and prediction
inputs; :mod:`~shufflenet.data.splits` makes, saves and reads splits; :mod:`~shufflenet.data.datasets` builds the
train/val datasets; :mod:`~shufflenet.data.digits` writes the offline demo data.
"""

from __future__ import annotations

from shufflenet.data.datasets import DataBundle, ImageFolderDataset, build_datasets, detect_layout, logger
from shufflenet.data.digits import make_digits_dataset
from shufflenet.data.folders import list_image_paths, scan_image_folder
from shufflenet.data.images import (
    IMAGE_EXTENSIONS,
    BadImageError,
    ImageTooLargeError,
    Sample,
    decode_image,
    is_image_file,
    load_image,
    verify_images,
)
from shufflenet.data.splits import (
    LAYOUT_SPLIT,
    LAYOUT_TRAIN_VAL,
    SPLIT_FORMAT,
    SPLIT_VERSION,
    read_split,
    stratified_split,
    write_split,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "LAYOUT_SPLIT",
    "LAYOUT_TRAIN_VAL",
    "SPLIT_FORMAT",
    "SPLIT_VERSION",
    "BadImageError",
    "DataBundle",
    "ImageFolderDataset",
    "ImageTooLargeError",
    "Sample",
    "build_datasets",
    "decode_image",
    "detect_layout",
    "is_image_file",
    "list_image_paths",
    "load_image",
    "logger",
    "make_digits_dataset",
    "read_split",
    "scan_image_folder",
    "stratified_split",
    "verify_images",
    "write_split",
]
