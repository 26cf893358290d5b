"""Start-up lists files only; unreadable images are found when loaded, replaced the same way everywhere, counted,
listed in the run folder, and stop a run past --max-bad-images; verify-data checks a tree in parallel."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from image_files import make_tree, write_truncated_jpeg
from PIL import Image

import shufflenet
from shufflenet.cli import main
from shufflenet.data import ImageFolderDataset, build_datasets, scan_image_folder
from shufflenet.data.bad_images import BadImageLog
from shufflenet.data.verify import verify_tree
from shufflenet.transforms import Preprocessing, eval_transform

PRE = Preprocessing.for_size(32)
TINY = {"model": "shufflenet_v2_x0_5", "img_size": 32, "batch_size": 4, "lr": 1e-3, "device": "cpu", "threads": 1}


def _tree_with_bad_files(root: Path) -> Path:
    """Two classes of six distinct noise JPEGs, two of which are unreadable."""
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(root / name / f"img{i:03d}.jpg")
    write_truncated_jpeg(root / "a" / "img001.jpg")  # replaces a good file: a truncated JPEG
    (root / "b" / "img004.jpg").write_bytes(os.urandom(300))  # random bytes with an image name
    return root


def test_listing_decodes_nothing(tmp_path: Path) -> None:
    data = _tree_with_bad_files(tmp_path / "data")
    bundle = build_datasets(data, PRE, val_split=0.25, seed=0)
    # Decoding would have dropped the two bad files; listing keeps every image name.
    assert len(bundle.train) + len(bundle.val) == 12 and bundle.skipped == []


def test_bad_image_is_replaced_by_the_next_readable_one_in_every_worker_layout(tmp_path: Path) -> None:
    data = _tree_with_bad_files(tmp_path / "data")
    samples, classes = scan_image_folder(data)
    log = BadImageLog(tmp_path / "run" / "bad_images.txt")
    dataset = ImageFolderDataset(samples, classes, eval_transform(PRE), bad_log=log)
    batches = {}
    for workers in (0, 2):
        loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=workers)
        batches[workers] = list(loader)
    assert [len(b[1]) for b in batches[0]] == [4, 4, 4]  # the epoch keeps its length and batch shapes
    for (x0, y0), (x2, y2) in zip(batches[0], batches[2], strict=True):
        assert torch.equal(x0, x2) and torch.equal(y0, y2)
    images = torch.cat([x for x, _ in batches[0]])
    assert torch.equal(images[1], images[2])  # a/img001 (truncated) -> a/img002
    assert torch.equal(images[10], images[11])  # b/img004 (index 10) -> b/img005
    assert len({tuple(image.flatten()[:64].tolist()) for image in images}) == 10  # the others are distinct
    found = log.read()
    assert sorted(Path(p).name for p in found) == ["img001.jpg", "img004.jpg"]
    assert "truncated" in found[str(data / "a" / "img001.jpg")]


def test_training_counts_lists_and_stops_past_max_bad_images(tmp_path: Path, capsys) -> None:
    data = _tree_with_bad_files(tmp_path / "data")
    run = tmp_path / "run"
    options = {"epochs": 1, "workers": 1, "val_split": 0.25, "max_bad_images": 0.2, **TINY}
    result = shufflenet.train(data=str(data), out=str(run), **options)
    assert result.history[0]["bad_images"] == 2
    log_text = (run / "train.log").read_text()
    assert "2 unreadable image(s) so far" in log_text
    assert "first step after" in log_text and "data: folder" in log_text and "1 loader workers" in log_text
    assert {Path(p).name for p in BadImageLog(run / "bad_images.txt").read()} == {"img001.jpg", "img004.jpg"}

    argv = ["train", "--data", str(data), "--out", str(tmp_path / "strict"), "--epochs", "1", "--workers", "0"]
    argv += ["--model", "shufflenet_v2_x0_5", "--img-size", "32", "--batch-size", "4", "--device", "cpu", "--quiet"]
    assert main([*argv, "--max-bad-images", "0.1"]) == 2  # 2 of 12 is more than 10%
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the warnings naming each file
    assert last.startswith("shufflenet train: error: 2 of 12 images (16.7%) cannot be read, more than ")
    assert "--max-bad-images 0.1" in last and "bad_images.txt" in last


def test_resume_reads_the_saved_file_lists_and_reports_a_changed_tree(tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_tree(data / "train", {"a": 6, "b": 6}, ext=".png")
    make_tree(data / "val", {"a": 2, "b": 2}, ext=".png")
    run = tmp_path / "run"
    shufflenet.train(data=str(data), out=str(run), epochs=1, workers=0, **TINY)
    Image.new("RGB", (40, 40), (1, 2, 3)).save(data / "train" / "a" / "new.png")
    resumed = shufflenet.train(data=str(data), out=str(run), resume=True, epochs=2, workers=0, device="cpu")
    assert len(resumed.history) == 2
    log_text = (run / "train.log").read_text()
    assert "WARNING the data changed: 1 image(s)" in log_text
    assert "12 train and 4 val images" in log_text.split("the data changed")[-1]  # the new file is not used
    (data / "train" / "b" / "img003.png").unlink()
    with pytest.raises(ValueError, match=r"references 1 file\(s\) missing .*train/b/img003\.png"):
        shufflenet.train(data=str(data), out=str(run), resume=True, epochs=3, workers=0, device="cpu")


def test_verify_data_finds_the_same_bad_files_serially_and_in_processes(tmp_path: Path, capsys) -> None:
    data = _tree_with_bad_files(tmp_path / "data")
    rng = np.random.default_rng(0)
    for i in range(60):  # enough files for the process pool to be used
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(data / "a" / f"x{i}.png")
    serial, parallel = verify_tree(data, workers=1), verify_tree(data, workers=2)
    assert parallel.workers == 2 and serial.images == parallel.images == 72
    assert serial.bad == parallel.bad and sorted(p.name for p, _ in parallel.bad) == ["img001.jpg", "img004.jpg"]
    assert main(["verify-data", str(data), "--workers", "2"]) == 1
    out = capsys.readouterr()
    assert f"{data / 'a' / 'img001.jpg'}: corrupt or truncated" in out.out
    assert "72 images" in out.err and "2 unreadable" in out.err
