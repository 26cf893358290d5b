"""Reading shards while training: an epoch stream split over ranks and loader workers, and a validation stream.

:class:`ShardTrainStream` gives every rank the same number of samples and batches in an epoch (exactly
``total // world_size``, one less when a batch of one would be left), whatever the shard counts: the epoch's
seeded shard order is dealt to the ranks, then to the loader workers, and a reader whose shards run out
starts them again (so a few samples repeat and as many are left out in that epoch; more shards than ranks x
workers keep that small). Each reader passes raw samples through a seeded shuffle buffer and decodes only
what it yields, so memory is the buffer's, whatever the data size.

Batches are dealt to the workers round robin, as ``DataLoader`` collects them, so an epoch's batches do not
depend on the worker that reads them: an epoch resumed after ``k`` batches (``set_epoch(epoch, skip)``)
reads and drops the raw samples of those batches, without decoding them, and continues with the same
batches an uninterrupted run would have had (same world size and number of loader workers).

We read the tars ourselves (a small ustar parser, ``tarfile`` for any other tar) rather than through
``webdataset``'s pipeline: its node/worker splitters, ``with_epoch`` and shuffle stages give neither a per-rank
count fixed in advance nor a position to resume from; the files themselves are WebDataset's (the tests read
them with the library).
"""

from __future__ import annotations

import io
import itertools
import math
import random
import tarfile
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from shufflenet.data.bad_images import BadImageLog
from shufflenet.data.images import IMAGE_EXTENSIONS, BadImageError, decode_image
from shufflenet.data.seeding import mix_seed, seeded
from shufflenet.data.shards import Shard

SHUFFLE_BUFFER = 2000  # raw samples per reader: ~0.2 GB of full-size ImageNet JPEGs, ~50 MB at --max-size 256
SHUFFLE_START = 100  # samples read before a reader's first one out (the buffer fills as it goes)
_IMAGE_SUFFIXES = {ext.lstrip(".") for ext in IMAGE_EXTENSIONS}
RawSample = tuple[str, bytes, str, int]  # (shard:key.ext for messages, image bytes, extension, label)


def read_shard(shard: Shard) -> Iterator[RawSample]:
    """The samples of one tar shard in file order (members grouped by key, WebDataset's rule)."""
    key, parts = None, {}
    for name, data in _members(shard):
        stem, _, suffix = name.rsplit("/", 1)[-1].partition(".")
        if stem != key and key is not None:
            yield _raw_sample(shard, key, parts)
            parts = {}
        key = stem
        parts[suffix.lower()] = data
    if key is not None:
        yield _raw_sample(shard, key, parts)


def _members(shard: Shard) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of the files in a tar, read in one sequential pass.

    Our shards are plain ustar (:func:`~shufflenet.data.shards.write_shards`): their headers are parsed here
    in a few microseconds, where ``tarfile`` takes 0.1-0.2 ms per sample (5-8 % of decoding a 224-px
    training image, benchmarks/data_throughput.py); any other tar goes through ``tarfile``.
    """
    with open(shard.path, "rb", buffering=1 << 20) as f:
        header = f.read(512)
        if header[257:262] != b"ustar" or header[156:157] not in (b"0", b"\0"):
            yield from _tarfile_members(shard)
            return
        while header.strip(b"\0"):  # two zero blocks end the archive
            if len(header) < 512 or header[257:262] != b"ustar" or header[156:157] not in (b"0", b"\0"):
                raise ValueError(f"{shard.path} is truncated or has an entry that is not a plain file; rewrite it")
            size = int(header[124:136].strip(b"\0 ") or b"0", 8)
            name = (header[345:500].rstrip(b"\0") + b"/" if header[345] else b"") + header[:100].rstrip(b"\0")
            data = f.read(size)
            if len(data) < size or len(f.read(-size % 512)) < -size % 512:
                raise ValueError(f"{shard.path} is truncated (in {name.decode()}); rewrite the shards")
            yield name.decode(), data
            header = f.read(512)
        if len(header) < 512:
            raise ValueError(f"{shard.path} is truncated (no end-of-archive block); rewrite the shards")


def _tarfile_members(shard: Shard) -> Iterator[tuple[str, bytes]]:
    with tarfile.open(shard.path, "r|") as tar:  # a stream: one sequential read
        for member in tar:
            if member.isfile():
                yield member.name, tar.extractfile(member).read()  # type: ignore[union-attr]


def _raw_sample(shard: Shard, key: str, parts: dict[str, bytes]) -> RawSample:
    image = next((s for s in parts if s in _IMAGE_SUFFIXES), None)
    if image is None or "cls" not in parts:
        raise ValueError(f"{shard.path}: sample {key!r} lacks an image or a .cls entry; rewrite the shards")
    return f"{shard.path}:{key}.{image}", parts[image], image, int(parts["cls"])


def shuffled(
    samples: Iterator[RawSample], buffer: int, rng: random.Random, initial: int = SHUFFLE_START
) -> Iterator[RawSample]:
    """A shuffle buffer: each sample out is a random one of those read so far and not yet out; the rest at the end.

    The first comes after ``initial`` samples and the buffer grows by one per sample out up to ``buffer``
    (WebDataset's rule), so a reader does not read a whole buffer (0.2 GB of ImageNet JPEGs) before its first batch.
    """
    pool = list(itertools.islice(samples, min(initial, buffer)))
    for sample in samples:
        pool.append(sample)
        if len(pool) < buffer:
            pool.extend(itertools.islice(samples, 1))
        slot = rng.randrange(len(pool))
        pool[slot], pool[-1] = pool[-1], pool[slot]
        yield pool.pop()
    rng.shuffle(pool)
    yield from pool


def _passes(shards: Sequence[Shard], buffer: int, rng: random.Random) -> Iterator[RawSample]:
    """The shards' samples through the shuffle buffer, pass after pass without end; the buffer empties at the
    end of each pass, so a reader whose quota is its shards' size yields each of their samples once."""
    if not shards:
        raise ValueError("a shard reader was given no shards")  # endless empty passes would hang the loader
    while True:
        yield from shuffled(itertools.chain.from_iterable(map(read_shard, shards)), buffer, rng)


def _dealt(items: Sequence[Shard], part: int, parts: int) -> list[Shard]:
    """Part ``part`` of ``parts`` of ``items`` round robin; a part left empty shares one item with another."""
    return list(items[part::parts]) or [items[part % len(items)]]


class ShardTrainStream(IterableDataset):
    """One rank's training samples of an epoch: ``(transform(image), label)``, the same count on every rank.

    ``batch_size`` must be the DataLoader's: batch ``b`` of the epoch comes from logical reader ``b % W``
    (``W`` loader workers, or one reader in the main process). Each sample's augmentation draws from its
    own generator, seeded by (seed, epoch, rank, position in the epoch).
    """

    def __init__(
        self,
        shards: Sequence[Shard],
        transform: Callable[[Any], Any],
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        draft_size: int | None = None,
        buffer: int = SHUFFLE_BUFFER,
        bad_log: BadImageLog | None = None,
    ) -> None:
        self.shards = list(shards)
        self.total = sum(shard.count for shard in self.shards)
        per_rank = self.total // world_size
        self.per_rank = per_rank - 1 if per_rank % batch_size == 1 and per_rank > 1 else per_rank  # no batch of 1
        self.transform, self.batch_size, self.rank, self.world_size = transform, batch_size, rank, world_size
        self.seed, self.draft_size, self.buffer, self.bad_log = seed, draft_size, buffer, bad_log
        self.epoch = self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Read ``epoch`` next, starting after its first ``skip`` samples (a multiple of the batch size)."""
        self.epoch, self.skip = epoch, skip

    def __len__(self) -> int:
        return max(0, self.per_rank - self.skip)

    def batches(self) -> int:
        """Batches per epoch on every rank."""
        return math.ceil(self.per_rank / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        info = get_worker_info()
        readers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        first = self.skip // self.batch_size
        reader = (worker + first) % readers  # DataLoader asks worker 0 first, whatever batch comes next
        order = list(self.shards)
        random.Random(mix_seed(self.seed, self.epoch)).shuffle(order)  # the same on every rank
        mine = _dealt(_dealt(order, self.rank, self.world_size), reader, readers)
        rng = random.Random(mix_seed(self.seed, self.epoch, self.rank, reader))
        stream = _passes(mine, self.buffer, rng)
        for batch in range(reader, self.batches(), readers):
            start = batch * self.batch_size
            for position in range(start, min(start + self.batch_size, self.per_rank)):
                if batch < first:
                    next(stream)  # read, not decoded: a resumed epoch continues where it stopped
                    continue
                yield self._decoded(stream, mix_seed(self.seed, self.epoch, self.rank, position))

    def _decoded(self, stream: Iterator[RawSample], seed: int) -> tuple[Any, int]:
        """The next readable sample of ``stream``, transformed with generator ``seed`` (a bad one is replaced
        by the one after it, recorded in the run's bad image list)."""
        for name, data, _, label in stream:
            image = decode_or_record(name, data, self.draft_size, self.bad_log)
            if image is None:
                continue
            with seeded(seed):
                return self.transform(image), label
        raise RuntimeError("a shard stream ended")  # _passes never ends


def decode_or_record(name: str, data: bytes, draft_size: int | None, bad_log: BadImageLog | None) -> Any:
    """The sample's decoded image, or None for an unreadable one (recorded in the run's bad image list)."""
    try:
        return decode_image(io.BytesIO(data), name, draft_size)
    except BadImageError as exc:
        if bad_log is not None:
            bad_log.record(name, exc.reason)
        return None


class ShardEvalStream(IterableDataset):
    """Every sample of the shards once, in order: this rank's share of them (shards dealt round robin to the
    ranks, then to the loader workers), for validation; unreadable images are recorded and left out."""

    def __init__(
        self,
        shards: Sequence[Shard],
        transform: Callable[[Any], Any],
        rank: int = 0,
        world_size: int = 1,
        draft_size: int | None = None,
        bad_log: BadImageLog | None = None,
    ) -> None:
        self.shards = list(shards)[rank::world_size]
        self.transform, self.draft_size, self.bad_log = transform, draft_size, bad_log

    def __len__(self) -> int:
        return sum(shard.count for shard in self.shards)

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        info = get_worker_info()
        readers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        for shard in self.shards[worker::readers]:
            for name, data, _, label in read_shard(shard):
                image = decode_or_record(name, data, self.draft_size, self.bad_log)
                if image is not None:
                    yield self.transform(image), label
