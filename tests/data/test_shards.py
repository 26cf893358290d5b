"""shufflenet shards: real JPEG/PNG folders written as tar shards, read back by us and by the webdataset library."""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from shufflenet.cli import main
from shufflenet.data import build_datasets
from shufflenet.data.shard_streams import ShardEvalStream, ShardTrainStream, read_shard, shuffled
from shufflenet.data.shards import Shard, read_index, write_shards
from shufflenet.transforms import Preprocessing, eval_transform, train_transform

CLASSES = {"ant": (200, 40, 40), "bee": (40, 40, 200), "fly": (40, 200, 40)}


def write_folder(root: Path, per_class: int, seed: int = 0, size: tuple[int, int] = (40, 48)) -> None:
    """JPEGs (and one PNG per class) whose colour tells the class."""
    rng = np.random.default_rng(seed)
    for name, color in CLASSES.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = (rng.random((*size, 3)) * 80 + np.array(color) - 40).clip(0, 255).astype(np.uint8)
            suffix = "png" if i == 0 else "jpg"
            Image.fromarray(pixels).save(root / name / f"{i}.{suffix}")


def members(shard: Path) -> dict[str, bytes]:
    with tarfile.open(shard) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def shard_samples(index_root: Path, split: str) -> list[tuple[str, int, bytes]]:
    """(source file, class, image bytes) of every sample of a split, read from the tar files."""
    index = read_index(index_root)
    found = []
    for shard in index.shards[split]:
        files = members(shard.path)
        for name in files:
            if name.endswith(".cls"):
                key = name[:-4]
                image = next(files[f"{key}.{ext}"] for ext in ("jpg", "png") if f"{key}.{ext}" in files)
                found.append((files[f"{key}.txt"].decode(), int(files[name]), image))
    return found


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_folder(root, 10)
    (root / "bee" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    return root


def test_shards_round_trip(folder: Path, tmp_path: Path) -> None:
    """Counts, classes, every readable image once in its split (the bad one listed), short side <= --max-size."""
    out = tmp_path / "shards"
    code = main(["shards", "--data", str(folder), "--out", str(out), "--shard-size", "4", "--max-size", "36"])
    assert code == 0
    index = read_index(out)
    assert index.class_names == sorted(CLASSES)
    bundle = build_datasets(folder, Preprocessing.for_size(32))  # train's split: seed 0, 0.2
    for split, dataset in (("train", bundle.train), ("val", bundle.val)):
        expected = sorted((str(p.relative_to(folder)), label) for p, label in dataset.samples if p.name != "broken.jpg")
        written = shard_samples(out, split)
        assert sorted((source, label) for source, label, _ in written) == expected  # each once, right class
        assert index.count(split) == len(expected) == sum(index.class_counts[split].values())
        assert all(shard.count <= 4 for shard in index.shards[split])
        for _, _, data in written:
            assert min(Image.open(io.BytesIO(data)).size) <= 36  # re-encoded from 40 px
    assert [Path(p).name for p, _ in index.skipped] == ["broken.jpg"]
    assert json.loads((out / "index.json").read_text())["preprocessing"]["max_size"] == 36
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary folder left


def test_original_bytes_kept_without_max_size(folder: Path, tmp_path: Path) -> None:
    write_shards(folder, tmp_path / "shards", shard_images=100, workers=1)
    for source, _, data in shard_samples(tmp_path / "shards", "train") + shard_samples(tmp_path / "shards", "val"):
        assert data == (folder / source).read_bytes()


def test_shards_refuse_to_overwrite(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    write_shards(folder, out, shard_images=100, workers=1)
    with pytest.raises(FileExistsError, match="--overwrite"):
        write_shards(folder, out, workers=1)
    (out / "train" / "stale.tar").write_bytes(b"")
    write_shards(folder, out, shard_images=5, overwrite=True, workers=1)
    assert not (out / "train" / "stale.tar").exists() and len(read_index(out).shards["train"]) > 1


def test_same_split_as_folder_training(tmp_path: Path) -> None:
    """A one-tree folder: the shards' train/val file lists are the split.json that train --data DIR saves."""
    folder = tmp_path / "data"
    write_folder(folder, 12, seed=3)
    split_file = tmp_path / "run" / "split.json"
    build_datasets(folder, Preprocessing.for_size(32), val_split=0.3, seed=7, split_file=split_file)
    saved = json.loads(split_file.read_text())
    write_shards(folder, tmp_path / "shards", shard_images=5, val_split=0.3, seed=7, workers=1)
    for split in ("train", "val"):
        expected = sorted(rel for rels in saved[split].values() for rel in rels)
        assert sorted(source for source, _, _ in shard_samples(tmp_path / "shards", split)) == expected
    # and a run's split.json, given as --split, is taken as it is (whatever --seed says)
    write_shards(folder, tmp_path / "again", val_split=0.5, seed=1, split_file=split_file, workers=1)
    assert sorted(s for s, _, _ in shard_samples(tmp_path / "again", "val")) == sorted(
        rel for rels in saved["val"].values() for rel in rels
    )


def test_webdataset_reads_our_shards(folder: Path, tmp_path: Path) -> None:
    """The webdataset library (timm's and OpenCLIP's reader) decodes every sample with its class."""
    wds = pytest.importorskip("webdataset")
    out = tmp_path / "shards"
    write_shards(folder, out, shard_images=4, max_size=36, workers=1)
    index = read_index(out)
    urls = [str(shard.path) for shard in index.shards["train"]]
    dataset = wds.WebDataset(urls, shardshuffle=False).decode("pil").to_tuple("jpg;png", "cls", "txt")
    samples = list(dataset)
    assert len(samples) == index.count("train")
    ours = sorted((source, label) for source, label, _ in shard_samples(out, "train"))
    assert sorted((source, label) for _, label, source in samples) == ours
    assert all(isinstance(image, Image.Image) and min(image.size) <= 36 for image, _, _ in samples)


# ---------------------------------------------------------------------------------------------- streams


@pytest.fixture(scope="module")
def uneven_shards(tmp_path_factory: pytest.TempPathFactory) -> list[Shard]:
    """5 training shards of 7, 7, 7, 7 and 2 samples (30): they divide evenly over neither 2 ranks nor 4 readers."""
    root = tmp_path_factory.mktemp("stream")
    write_folder(root / "data", 12, size=(32, 32))
    write_shards(root / "data", root / "shards", shard_images=7, workers=1)
    shards = read_index(root / "shards").shards["train"]
    assert [s.count for s in shards] == [7, 7, 7, 7, 2]
    return shards


def batches(stream: ShardTrainStream, workers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    loader = DataLoader(stream, batch_size=stream.batch_size, num_workers=workers)
    return list(loader)


def make_stream(shards: list[Shard], rank: int = 0, world: int = 1, batch: int = 4) -> ShardTrainStream:
    pre = Preprocessing.for_size(32)
    return ShardTrainStream(shards, train_transform(pre), batch, rank, world, seed=1, buffer=6)


@pytest.mark.parametrize("workers", [0, 2])
def test_every_rank_gets_the_same_number_of_batches(uneven_shards: list[Shard], workers: int) -> None:
    """2 ranks over shards of 21 and 9 samples: 15 samples (4 batches) each, every epoch."""
    for epoch in (0, 1):
        sizes = []
        for rank in (0, 1):
            stream = make_stream(uneven_shards, rank, 2)
            stream.set_epoch(epoch)
            sizes.append([len(labels) for _, labels in batches(stream, workers)])
        assert sizes == [[4, 4, 4, 3], [4, 4, 4, 3]]


def test_one_process_reads_each_sample_once_per_epoch(uneven_shards: list[Shard]) -> None:
    """World size 1, one reader: the epoch is a permutation of the 30 samples, another one next epoch."""
    stream = ShardTrainStream(uneven_shards, lambda image: image.tobytes(), 4, seed=1, buffer=6)
    expected = sorted(image.tobytes() for _, image in _decoded_all(uneven_shards))
    epochs = []
    for epoch in (0, 1):
        stream.set_epoch(epoch)
        images = [image for image, _ in stream]
        assert sorted(images) == expected
        epochs.append(images)
    assert epochs[0] != epochs[1]


def _decoded_all(shards: list[Shard]) -> list[tuple[int, Image.Image]]:
    return [(label, Image.open(io.BytesIO(data)).convert("RGB")) for s in shards for _, data, _, label in read_shard(s)]


@pytest.mark.parametrize("workers", [0, 2])
def test_resumed_epoch_continues_with_the_same_batches(uneven_shards: list[Shard], workers: int) -> None:
    """set_epoch(epoch, skip=k batches) yields batches k.. of the uninterrupted epoch, image for image."""
    stream = make_stream(uneven_shards, rank=1, world=2)
    stream.set_epoch(3)
    full = batches(stream, workers)
    for done in (1, 2, 3):
        stream.set_epoch(3, skip=done * stream.batch_size)
        assert len(stream) == 15 - done * 4
        rest = batches(stream, workers)
        assert len(rest) == len(full) - done
        for (images, labels), (want_images, want_labels) in zip(rest, full[done:], strict=True):
            assert torch.equal(labels, want_labels) and torch.equal(images, want_images)


def test_validation_stream_reads_each_sample_once_over_ranks(uneven_shards: list[Shard]) -> None:
    transform = eval_transform(Preprocessing.for_size(32))
    seen = []
    for rank in (0, 1, 2):
        loader = DataLoader(ShardEvalStream(uneven_shards, transform, rank, 3), batch_size=4, num_workers=2)
        seen += [label for _, labels in loader for label in labels.tolist()]
    assert sorted(seen) == sorted(label for label, _ in _decoded_all(uneven_shards))


def test_tars_written_by_others_read_the_same(folder: Path, tmp_path: Path) -> None:
    """webdataset's TarWriter output and a PAX tar (read by the tarfile fallback) give our samples back."""
    wds = pytest.importorskip("webdataset")
    write_shards(folder, tmp_path / "shards", shard_images=100, workers=1)
    ours = read_index(tmp_path / "shards").shards["train"][0]
    expected = [(data, label) for _, data, _, label in read_shard(ours)]
    samples = [(key.rsplit(":", 1)[1].split(".")[0], data, ext, label) for key, data, ext, label in read_shard(ours)]
    with wds.TarWriter(str(tmp_path / "wds.tar")) as sink:
        for key, data, ext, label in samples:
            sink.write({"__key__": key, ext: data, "cls": str(label).encode()})
    with tarfile.open(tmp_path / "pax.tar", "w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "x"}) as tar:
        for key, data, ext, label in samples:
            for name, payload in ((f"{key}.{ext}", data), (f"{key}.cls", str(label).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
    for other in ("wds.tar", "pax.tar"):
        read_back = [(data, label) for _, data, _, label in read_shard(Shard(tmp_path / other, 0))]
        assert read_back == expected and len(expected) > 10, other


def test_truncated_shard_is_named(folder: Path, tmp_path: Path) -> None:
    write_shards(folder, tmp_path / "shards", shard_images=100, workers=1)
    shard = read_index(tmp_path / "shards").shards["train"][0]
    whole = shard.path.read_bytes()
    with tarfile.open(shard.path) as tar:
        second_sample = tar.getmembers()[3].offset  # its first header
    for cut, where in ((1000, r" \(in 00000000.\w+\)"), (second_sample, r" \(no end-of-archive block\)")):
        shard.path.write_bytes(whole[:cut])  # inside the first image; between two samples
        with pytest.raises(ValueError, match=rf"shard-000000.tar is truncated{where}"):
            list(read_shard(shard))


def test_fewer_shards_than_readers_still_gives_equal_batches(uneven_shards: list[Shard]) -> None:
    """3 shards for 2 ranks x 2 workers: one rank's 2 workers share its one shard; 8 samples in 2 batches each."""
    for rank in (0, 1):
        stream = make_stream(uneven_shards[2:], rank, 2)  # 7 + 7 + 2 samples
        assert [len(labels) for _, labels in batches(stream, workers=2)] == [4, 4]


def test_shuffle_buffer_starts_early_and_keeps_every_sample() -> None:
    """The first sample out comes after ~100 read (not a whole buffer); all come out once, shuffled."""
    read = []

    def source():
        for i in range(5000):
            read.append(i)
            yield i

    out = shuffled(source(), 2000, random.Random(0))
    first = next(out)
    assert len(read) == 102 and first in read  # 100, then one in and one more while the buffer grows
    rest = [first, *out]
    assert sorted(rest) == list(range(5000)) and rest != sorted(rest)


def test_resumed_with_other_workers_keeps_the_step_count(uneven_shards: list[Shard]) -> None:
    """As documented: another --workers on resume gives the epoch's remaining steps, not the same images."""
    stream = make_stream(uneven_shards, rank=0, world=2)
    stream.set_epoch(0)
    full = batches(stream, workers=2)
    stream.set_epoch(0, skip=stream.batch_size)
    rest = batches(stream, workers=0)
    assert [len(labels) for _, labels in rest] == [len(labels) for _, labels in full[1:]]


def test_an_undecodable_image_in_a_shard_is_recorded_and_replaced(folder: Path, tmp_path: Path) -> None:
    """The epoch keeps its length (the next sample stands in); validation leaves it out; both record it."""
    from shufflenet.data.bad_images import BadImageLog

    write_shards(folder, tmp_path / "shards", shard_images=100, workers=1)
    shard = read_index(tmp_path / "shards").shards["train"][0]
    files = members(shard.path)
    broken = next(name for name in files if name.endswith((".jpg", ".png")))
    files[broken] = b"\xff\xd8\xff garbage"
    with tarfile.open(shard.path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, payload in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    log = BadImageLog(tmp_path / "bad.txt")
    stream = ShardTrainStream([shard], lambda image: image.size, 4, bad_log=log)
    assert len(list(stream)) == stream.per_rank == 24  # 25, less one: no batch of one
    assert list(log.read()) == [f"{shard.path}:{broken}"]
    assert len(list(ShardEvalStream([shard], lambda image: image.size, bad_log=log))) == shard.count - 1
