"""The packed file list: the samples a loader worker reads, held in a few objects whatever the number of files."""

from __future__ import annotations

import gc
import os
import pathlib
import pickle
import types
from pathlib import Path

import pytest
import torch
from image_files import make_tree

from shufflenet.data import ImageFolderDataset, scan_image_folder
from shufflenet.data.file_list import FileList
from shufflenet.transforms import Preprocessing

PRE = Preprocessing.for_size(32)
SHARED = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType)


def objects_held(root: object) -> int:
    """Python objects reachable from ``root`` (not counting classes, modules and functions: shared by all)."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, SHARED):
            continue
        seen.add(id(obj))
        stack.extend(gc.get_referents(obj))
    return len(seen)


def fake_samples(n: int) -> list[tuple[str, int]]:
    return [(f"/data/train/class_{i % 100:03d}/{i:07d}.jpg", i % 100) for i in range(n)]


def test_dataset_holds_the_same_number_of_objects_for_10_and_10000_files() -> None:
    # Every object a forked worker touches (reference count, garbage collector) is a page it copies: the
    # dataset's own objects must not grow with the number of files.
    small = ImageFolderDataset(fake_samples(10), [f"c{i}" for i in range(100)], PRE.eval_transform())
    large = ImageFolderDataset(fake_samples(10_000), [f"c{i}" for i in range(100)], PRE.eval_transform())
    assert objects_held(large) == objects_held(small)
    assert large.samples[9_999] == (Path("/data/train/class_099/0009999.jpg"), 99)


@pytest.mark.skipif(not hasattr(pathlib.PurePath, "_from_parts"), reason="pathlib interns names in Python 3.11 only")
def test_reading_an_item_builds_no_pathlib_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Python 3.11's pathlib interns every part of a name it parses: in a forked worker that writes into the
    # trainer's table of interned strings (filled while listing), a copied page per few names read.
    samples, classes = scan_image_folder(make_tree(tmp_path, {"x": 2, "y": 2}))
    dataset = ImageFolderDataset(samples, classes, PRE.eval_transform())
    dataset[0]  # PIL loads its format plugins on the first read (once per process)
    built: list[tuple] = []
    original = pathlib.PurePath._from_parts.__func__

    def counting(cls: type, args: tuple) -> pathlib.PurePath:
        built.append(args)
        return original(cls, args)

    monkeypatch.setattr(pathlib.PurePath, "_from_parts", classmethod(counting))
    images = [dataset[i][0] for i in range(4)]
    assert len(images) == 4 and built == []


def test_file_list_gives_back_paths_labels_and_survives_pickling(tmp_path: Path) -> None:
    odd = os.fsdecode(b"caf\xe9-not-utf8.jpg")  # a Latin-1 file name on a UTF-8 system (surrogateescape)
    samples = [(Path("a/x.jpg"), 0), ("b/été/ü.png", 1), (Path("b") / odd, 1), ("/abs/z.JPEG", 7)]
    files = FileList(samples)
    expected = [(Path(p), label) for p, label in samples]
    assert list(files) == expected and len(files) == 4
    assert files[-1] == expected[-1] and files[1:3] == expected[1:3]
    assert os.fsencode(files.path(2)) == b"b/caf\xe9-not-utf8.jpg"
    clone = pickle.loads(pickle.dumps(files))
    assert list(clone) == expected and clone.labels.tolist() == [0, 1, 1, 7]
    try:
        files[4]
    except IndexError as exc:
        assert "4 out of range for 4 files" in str(exc)
    else:
        raise AssertionError("index 4 of 4 files did not raise")


def test_dataset_on_real_files_reads_the_same_in_a_worker_process(tmp_path: Path) -> None:
    samples, classes = scan_image_folder(make_tree(tmp_path, {"x": 3, "y": 2}))
    dataset = ImageFolderDataset(samples, classes, PRE.eval_transform())
    assert dataset.targets == [0, 0, 0, 1, 1] and dataset.class_counts() == {"x": 3, "y": 2}
    assert [dataset.samples[i] for i in range(5)] == samples
    here = torch.stack([dataset[i][0] for i in range(5)])
    loader = torch.utils.data.DataLoader(dataset, batch_size=5, num_workers=1)
    images, labels = next(iter(loader))
    assert torch.equal(images, here) and labels.tolist() == [0, 0, 0, 1, 1]
