"""The offline digits demo data: the real scikit-learn scans, idempotent writes, both layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shufflenet.data import build_datasets, load_image, make_digits_dataset, scan_image_folder
from shufflenet.transforms import Preprocessing

PRE = Preprocessing.for_size(32)


def test_digits_dataset_matches_sklearn(tmp_path: Path) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = make_digits_dataset(tmp_path / "digits", image_size=16)
    samples, classes = scan_image_folder(root)
    assert classes == [str(d) for d in range(10)]
    expected = np.bincount(digits.target, minlength=10).tolist()
    assert np.bincount([label for _, label in samples], minlength=10).tolist() == expected
    first = Image.open(root / str(digits.target[0]) / "0000.png")
    assert first.size == (16, 16) and first.mode == "L"
    small = np.asarray(first.resize((8, 8), Image.Resampling.BOX), dtype=np.float64)
    assert np.corrcoef(small.ravel(), digits.images[0].ravel())[0, 1] > 0.9  # it is that scan
    assert load_image(root / "0" / "0000.png").mode == "RGB"

    stamp = (root / "0" / "0000.png").stat().st_mtime_ns
    make_digits_dataset(root, image_size=16)  # idempotent: nothing rewritten
    assert (root / "0" / "0000.png").stat().st_mtime_ns == stamp
    (root / "3" / f"{int(np.flatnonzero(digits.target == 3)[0]):04d}.png").unlink()
    make_digits_dataset(root, image_size=16)  # incomplete: rewritten
    assert len(scan_image_folder(root)[0]) == 1797
    with pytest.raises(ValueError, match="layout"):
        make_digits_dataset(root, image_size=16, layout="train/val")


def test_digits_train_val_layout(tmp_path: Path) -> None:
    root = make_digits_dataset(tmp_path / "d", image_size=8, layout="train/val")
    bundle = build_datasets(root, PRE, verify=False)
    assert bundle.layout == "train/val" and len(bundle.train) + len(bundle.val) == 1797
    assert min(bundle.val.class_counts().values()) >= 30
