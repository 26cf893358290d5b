"""Image folders, splits and decoding, on real image files written by the tests."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shufflenet.data import (
    IMAGE_EXTENSIONS,
    BadImageError,
    DataBundle,
    ImageFolderDataset,
    build_datasets,
    list_image_paths,
    load_image,
    make_digits_dataset,
    scan_image_folder,
    verify_images,
)
from shufflenet.transforms import Preprocessing

PRE = Preprocessing.for_size(32)


def _colour(label: int) -> tuple[int, int, int]:
    return ((label * 97) % 256, (label * 57 + 40) % 256, (label * 13 + 90) % 256)


def write_rgb(path: Path, colour: tuple[int, int, int] = (200, 30, 60), size: int = 40) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)
    return path


def make_tree(root: Path, counts: dict[str, int], ext: str = ".png") -> Path:
    """One class folder per key with that many real images."""
    for label, (name, n) in enumerate(counts.items()):
        for i in range(n):
            write_rgb(root / name / f"img{i:03d}{ext}", _colour(label))
    return root


def write_truncated_jpeg(path: Path) -> Path:
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)  # noise: the JPEG stream is long
    Image.fromarray(noise).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


# --------------------------------------------------------------------------------------------- load_image


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


# --------------------------------------------------------------------------------------------- dataset


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
    assert np.asarray(image)[0, 0].tolist() == list(_colour(1))
    assert "img001.png" in caplog.text and "zero-byte" in caplog.text
    for p, _ in samples:
        p.write_bytes(b"")
    with pytest.raises(RuntimeError, match="none of the 4 images"):
        ds[0]


# --------------------------------------------------------------------------------------------- build_datasets


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


def test_bad_files_are_skipped_with_one_warning(tmp_path: Path, caplog) -> None:
    data = make_tree(tmp_path, {"a": 4, "b": 4})
    write_truncated_jpeg(data / "a" / "cut.jpg")
    (data / "b" / "zero.png").write_bytes(b"")
    (data / "b" / "text.png").write_text("not an image")
    (data / "a" / "notes.txt").write_text("ignored, not skipped")
    (data / "b" / ".DS_Store").write_bytes(b"\x00")
    with caplog.at_level(logging.WARNING, logger="shufflenet"):
        bundle = build_datasets(data, PRE)
    assert sorted(p.name for p, _ in bundle.skipped) == ["cut.jpg", "text.png", "zero.png"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "skipped 3" in message and all(n in message for n in ("cut.jpg", "text.png", "zero.png"))
    used = {p.name for p, _ in bundle.train.samples + bundle.val.samples}
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


# --------------------------------------------------------------------------------------------- digits


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
