"""``train --data SHARDS``: the loop's :class:`~shufflenet.training.loaders.TrainData` from WebDataset shards.

The split is the one in the shards (written by ``shufflenet shards``), so no split.json is made. Every rank
takes the same number of steps per epoch (:class:`~shufflenet.data.shard_streams.ShardTrainStream`); a resumed
epoch continues after its consumed batches, exactly when the world size and loader workers are the same.
Loader workers are started per epoch (not persistent): they take the epoch and resume position with them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from shufflenet.data.bad_images import BAD_IMAGES_FILE, BadImageLog
from shufflenet.data.shard_streams import ShardEvalStream, ShardTrainStream
from shufflenet.data.shards import ShardIndex, read_index
from shufflenet.training.budget import probe_index
from shufflenet.training.config import TrainConfig
from shufflenet.training.distributed import Distributed
from shufflenet.training.loaders import TrainData, WatchedLoader, loader_options, resolve_workers
from shufflenet.training.recipes import FitRun
from shufflenet.transforms import Preprocessing, batch_normalizer, eval_transform, train_transform

log = logging.getLogger("shufflenet.training")


@dataclass
class ShardSplit:
    """A split's size as the run folder's records ask for it (``len``)."""

    count: int

    def __len__(self) -> int:
        return self.count


@dataclass
class ShardBundle:
    """What the loop and the run folder read from a data bundle, for shards."""

    train: ShardSplit
    val: ShardSplit
    class_names: list[str]
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # left out when the shards were written
    layout: str = "shards"


def build_shard_data(
    cfg: TrainConfig, dist: Distributed, run_dir: Path, split_existed: bool = False, fit: FitRun | None = None
) -> TrainData:
    """Loaders over ``cfg.data``'s shards: this rank's part of each epoch and of the validation shards."""
    listed = time.perf_counter()
    index: ShardIndex = read_index(cfg.data)
    listed = time.perf_counter() - listed
    train_count, val_count = index.count("train"), index.count("val")
    bundle = ShardBundle(
        ShardSplit(train_count), ShardSplit(val_count), index.class_names, [(Path(p), r) for p, r in index.skipped]
    )
    if fit is not None:
        cfg, notes = fit(cfg, probe_index(index), dist.world_size)
        for message in notes:
            log.info(message)
    preprocessing = Preprocessing.for_size(cfg.eval_size or cfg.img_size, crop_pct=cfg.eval_crop)
    augment = train_transform(
        preprocessing, cfg.crop_scale, cfg.hflip, cfg.img_size, cfg.auto_augment, cfg.random_erase, cfg.pad_crop
    )
    bad_log = BadImageLog(run_dir / BAD_IMAGES_FILE)
    draft = preprocessing.resize_size
    train_data = ShardTrainStream(
        index.shards["train"], augment, cfg.batch_size, dist.rank, dist.world_size, cfg.seed, draft, bad_log=bad_log
    )
    if train_data.batches() == 0:
        raise ValueError(f"{cfg.data}: too few training images for one batch per process; add images")
    workers = resolve_workers(cfg.workers, dist.device)
    options = loader_options(workers, dist.device)
    # Persistent workers would keep the epoch they started with: each epoch starts its own.
    train_options = {**options, "persistent_workers": False}
    # Its own generator keeps the loader from drawing on the global RNG, whose state last.pt saves.
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(train_data, batch_size=cfg.batch_size, generator=generator, **train_options)
    shards = len(index.shards["train"])
    log.info(
        "data: shards (%d shards, %d workers) in %s (index read in %.2f s): %d train and %d val images, %d classes; "
        "%d samples and %d steps per process and epoch",
        shards,
        workers,
        cfg.data,
        listed,
        train_count,
        val_count,
        len(index.class_names),
        train_data.per_rank,
        train_data.batches(),
    )
    if shards < dist.world_size * max(workers, 1):
        log.warning(
            "%d training shards for %d processes x %d loader workers: some readers share a shard and read it "
            "twice an epoch; write smaller shards (shufflenet shards --shard-size)",
            shards,
            dist.world_size,
            max(workers, 1),
        )
    source = f"shards ({shards} shards, {workers} workers)"
    watched = WatchedLoader(train_loader, bad_log, train_count + val_count, cfg.max_bad_images, source)
    evaluate = eval_transform(preprocessing)
    val_shards = index.shards["val"]
    val_loader = DataLoader(
        ShardEvalStream(val_shards, evaluate, dist.rank, dist.world_size, draft, bad_log),
        batch_size=cfg.batch_size,
        **train_options,
    )
    return TrainData(
        config=cfg,
        class_names=index.class_names,
        preprocessing=preprocessing,
        bundle=bundle,
        val_data=ShardEvalStream(val_shards, evaluate, draft_size=draft, bad_log=bad_log),
        sampler=train_data,  # type: ignore[arg-type]  # set_epoch(epoch, skip) as ResumableSampler's
        train_loader=watched,
        val_loader=val_loader,
        normalize=batch_normalizer(preprocessing),
        workers=workers,
        loader_options=train_options,
    )
