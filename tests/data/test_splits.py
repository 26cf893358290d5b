"""Seeded stratified splits, saved and reused; errors for missing files and classes without validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from image_files import make_tree, write_rgb

from shufflenet.data import DataBundle, ImageFolderDataset, build_datasets
from shufflenet.transforms import Preprocessing

PRE = Preprocessing.for_size(32)


def _rel(ds: ImageFolderDataset, root: Path) -> list[str]:
    return [p.relative_to(root).as_posix() for p, _ in ds.samples]


def test_split_layout_is_stratified_seeded_and_saved(tmp_path: Path) -> None:
    data = make_tree(tmp_path / "data", {"a": 10, "b": 5, "c": 2})
    split = tmp_path / "run" / "split.json"
    bundle = build_datasets(data, PRE, val_split=0.2, seed=3, split_file=split)
    assert isinstance(bundle, DataBundle)
    assert bundle.layout == "split" and bundle.class_names == ["a", "b", "c"] and bundle.skipped == []
    assert bundle.val.class_counts() == {"a": 2, "b": 1, "c": 1}  # every class in val, even with 2 images
    assert bundle.train.class_counts() == {"a": 8, "b": 4, "c": 1}
    train, val = _rel(bundle.train, data), _rel(bundle.val, data)
    assert not set(train) & set(val) and len(train) + len(val) == 17
    assert bundle.train.transform is not None and bundle.val.transform is not None
    assert bundle.train[0][0].shape == (3, 32, 32)

    saved = json.loads(split.read_text())
    assert saved["class_names"] == ["a", "b", "c"]
    assert sorted(p for v in saved["val"].values() for p in v) == sorted(val)
    assert sorted(p for v in saved["train"].values() for p in v) == sorted(train)

    again = build_datasets(data, PRE, val_split=0.2, seed=3)  # same seed, no file: same split
    assert _rel(again.val, data) == val
    seeds = {tuple(_rel(build_datasets(data, PRE, seed=s, verify=False).val, data)) for s in range(6)}
    assert len(seeds) > 1  # the seed matters

    write_rgb(data / "a" / "new.png")  # added after the split was saved
    reused = build_datasets(data, PRE, val_split=0.5, seed=99, split_file=split)
    assert _rel(reused.val, data) == val and _rel(reused.train, data) == train
    assert any("not in" in note for note in reused.notes)


def test_saved_split_with_missing_files_is_an_error(tmp_path: Path) -> None:
    data = make_tree(tmp_path / "data", {"a": 4, "b": 4})
    split = tmp_path / "split.json"
    bundle = build_datasets(data, PRE, split_file=split)
    bundle.val.samples[0][0].unlink()
    with pytest.raises(ValueError, match=r"split\.json references 1 file\(s\) missing.*delete the split file"):
        build_datasets(data, PRE, split_file=split)
    split.write_text("{not json")
    with pytest.raises(ValueError, match="cannot be read"):
        build_datasets(data, PRE, split_file=split)


def test_class_without_validation_image_is_an_error(tmp_path: Path) -> None:
    data = make_tree(tmp_path, {"many": 5, "lonely": 1})
    with pytest.raises(ValueError, match=r"class 'lonely' has 1 readable image.*no validation image"):
        build_datasets(data, PRE)
    with pytest.raises(ValueError, match="val_split"):
        build_datasets(make_tree(tmp_path / "ok", {"a": 3, "b": 3}), PRE, val_split=1.0)
