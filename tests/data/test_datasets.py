"""Datasets (items, pickling, bad files mid-training) and build_datasets on the train/val layout."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from image_files import colour, make_tree, write_truncated_jpeg

from shufflenet.data import ImageFolderDataset, build_datasets, load_image, scan_image_folder
from shufflenet.transforms import Preprocessing

PRE = Preprocessing.for_size(32)


def test_dataset_items_targets_and_pickling(tmp_path: Path) -> None:
    samples, classes = scan_image_folder(make_tree(tmp_path, {"x": 2, "y": 3}))
    ds = ImageFolderDataset(samples, classes, PRE.eval_transform())
    assert len(ds) == 5 and ds.targets == [0, 0, 1, 1, 1] and ds.class_names == ["x", "y"]
    image, label = ds[3]
    assert isinstance(image, torch.Tensor) and image.shape == (3, 32, 32) and label == 1
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[3][0], image)
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=1)
    batch, labels = next(iter(loader))
    assert batch.shape == (5, 3, 32, 32) and labels.tolist() == [0, 0, 1, 1, 1]


def test_dataset_replaces_image_that_breaks_after_verification(tmp_path: Path, caplog) -> None:
    samples, classes = scan_image_folder(make_tree(tmp_path, {"x": 2, "y": 2}))
    ds = ImageFolderDataset(samples, classes)
    samples[1][0].write_bytes(b"")  # the file goes bad mid-training
    with caplog.at_level(logging.WARNING, logger="shufflenet"):
        image, label = ds[1]
    assert label == 1  # the next sample stands in
    assert np.asarray(image)[0, 0].tolist() == list(colour(1))
    assert "img001.png" in caplog.text and "zero-byte" in caplog.text
    for p, _ in samples:
        p.write_bytes(b"")
    with pytest.raises(RuntimeError, match="none of the 4 images"):
        ds[0]


# --------------------------------------------------------------------------------------------- build_datasets


def test_train_val_layout(tmp_path: Path) -> None:
    make_tree(tmp_path / "train", {"ants": 4, "bees": 3}, ext=".jpg")
    make_tree(tmp_path / "val", {"ants": 2, "bees": 2}, ext=".jpg")
    split = tmp_path / "out" / "split.json"
    bundle = build_datasets(tmp_path, PRE, split_file=split)
    assert bundle.layout == "train/val" and bundle.class_names == ["ants", "bees"]
    assert len(bundle.train) == 7 and len(bundle.val) == 4
    assert all(p.parent.parent.name == "val" for p, _ in bundle.val.samples)
    assert json.loads(split.read_text())["val"]["bees"] == ["val/bees/img000.jpg", "val/bees/img001.jpg"]
    make_tree(tmp_path / "train", {"wasps": 1})
    with pytest.raises(ValueError, match=r"differ between .*only in train: \['wasps'\]; only in val: none"):
        build_datasets(tmp_path, PRE)


def test_verify_true_skips_bad_files_with_one_warning(tmp_path: Path, caplog) -> None:
    data = make_tree(tmp_path, {"a": 4, "b": 4})
    write_truncated_jpeg(data / "a" / "cut.jpg")
    (data / "b" / "zero.png").write_bytes(b"")
    (data / "b" / "text.png").write_text("not an image")
    (data / "a" / "notes.txt").write_text("ignored, not skipped")
    (data / "b" / ".DS_Store").write_bytes(b"\x00")
    with caplog.at_level(logging.WARNING, logger="shufflenet"):
        bundle = build_datasets(data, PRE, verify=True)
    assert sorted(p.name for p, _ in bundle.skipped) == ["cut.jpg", "text.png", "zero.png"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "skipped 3" in message and all(n in message for n in ("cut.jpg", "text.png", "zero.png"))
    used = {p.name for p, _ in [*bundle.train.samples, *bundle.val.samples]}
    assert len(used) == 4 and not used & {"cut.jpg", "zero.png", "text.png", "notes.txt"}


def test_missing_data_dir_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nowhere does not exist"):
        build_datasets(tmp_path / "nowhere", PRE)


def test_hymenoptera_real_photos(hymenoptera: Path) -> None:
    bundle = build_datasets(hymenoptera, Preprocessing.for_size(64))
    assert bundle.layout == "train/val" and bundle.class_names == ["ants", "bees"]
    # imageNotFound.gif is a valid 300x300 GIF (a "we're sorry" placeholder), so it decodes and is kept
    assert bundle.skipped == []
    gif = hymenoptera / "train" / "ants" / "imageNotFound.gif"
    assert (gif, 0) in bundle.train.samples
    assert load_image(gif).mode == "RGB"
    image, label = bundle.val[0]
    assert image.shape == (3, 64, 64) and label == 0
