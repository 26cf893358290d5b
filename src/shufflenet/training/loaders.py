"""Training data: datasets with augmentation, an in-memory image cache, samplers that resume mid-epoch, loaders.

Start-up lists files only (or reads the run's saved split.json); images are decoded in the loader workers,
JPEGs at reduced scale (PIL draft), and an unreadable one is replaced by the next readable file and counted
(:class:`WatchedLoader` logs them, stops the run past ``max_bad_images`` and says when the first step ran).
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset
from torchvision.transforms import v2 as T

from shufflenet.data import BadImageError, ImageFolderDataset, build_datasets, load_image
from shufflenet.data.bad_images import BAD_IMAGES_FILE, BadImageLog, too_many_bad_images
from shufflenet.data.seeding import mix_seed, seeded
from shufflenet.training.budget import probe_samples
from shufflenet.training.config import TrainConfig
from shufflenet.training.device_input import build_pipeline
from shufflenet.training.distributed import Distributed
from shufflenet.training.recipes import FitRun
from shufflenet.training.run_folder import SPLIT_FILE
from shufflenet.training.signals import ignore_stop_signals
from shufflenet.transforms import Preprocessing, batch_normalizer, train_transform

log = logging.getLogger("shufflenet.training")

CACHE_BUDGET = 2 * 1024**3  # bytes of decoded images kept in memory when cache_images is None


@dataclass
class TrainData:
    """Everything the loop reads data from: loaders, the sampler it positions, the batch normaliser."""

    config: TrainConfig  # the options, fitted to the training set
    class_names: list[str]
    preprocessing: Preprocessing
    bundle: Any  # shufflenet.data's datasets bundle: layout, skipped files, the uncached datasets
    val_data: Dataset
    sampler: ResumableSampler
    train_loader: WatchedLoader  # a DataLoader that reports bad images and the first step
    val_loader: DataLoader  # this rank's shard
    normalize: Callable[[Tensor], Tensor]
    workers: int
    loader_options: dict[str, Any]


def build_data(
    cfg: TrainConfig, dist: Distributed, run_dir: Path, split_existed: bool, fit: FitRun | None = None
) -> TrainData:
    """train/ + val/ folders, or one class tree split (seeded, stratified) and saved to split.json; ``fit``
    chooses the options from the files listed (image size, recipe, batch, epochs, regularisation:
    ``TrainData.config``), before any transform is built from them."""
    bad_log = BadImageLog(run_dir / BAD_IMAGES_FILE)
    # Rank 0 writes split.json; the others compute the same seeded split, or read the file if it already was
    # (a resume reads the saved file lists: no rescan, no new split). The transforms come after the fit.
    listed = time.perf_counter()
    bundle = build_datasets(
        cfg.data,
        Preprocessing.for_size(cfg.img_size),
        val_split=cfg.val_split,
        seed=cfg.seed,
        split_file=run_dir / SPLIT_FILE if dist.is_main or split_existed else None,
        transforms=(None, None),
        bad_log=bad_log,
    )
    listed = time.perf_counter() - listed
    if fit is not None:
        cfg, notes = fit(cfg, probe_samples(bundle.train.samples, len(bundle.class_names)), dist.world_size)
        for message in notes:
            log.info(message)
    preprocessing = Preprocessing.for_size(cfg.eval_size or cfg.img_size, crop_pct=cfg.eval_crop)
    # What the loader workers do and what the device does (training/device_input.py), from the fitted options
    augment = (cfg.crop_scale, cfg.hflip, cfg.auto_augment, cfg.random_erase, cfg.pad_crop)
    pipeline = build_pipeline(
        cfg.input_pipeline, preprocessing, cfg.img_size, *augment, bad_log=bad_log, make_train=train_transform
    )
    bundle.train.transform, bundle.val.transform = pipeline.transforms
    for dataset in (bundle.train, bundle.val):
        dataset.draft_size = preprocessing.resize_size  # JPEGs decoded at reduced scale, >= the resize size
        dataset.load = pipeline.load
    # Half the budget each: the auto cache is for datasets that fit in memory many times over.
    cache = cfg.cache_images if pipeline.load is None else False  # gpu-decode: the workers decode nothing
    train_data = maybe_cache(cache, bundle.train, preprocessing, CACHE_BUDGET // 2)
    val_data = maybe_cache(cache, bundle.val, preprocessing, CACHE_BUDGET // 2)
    cached = isinstance(train_data, CachedImages)
    workers = resolve_workers(cfg.workers, dist.device, cached=cached)
    log.info(
        "data %s (%s layout, listed in %.1f s): %d train and %d val images, %d classes%s%s, %d loader workers "
        "per process",
        cfg.data,
        bundle.layout,
        listed,
        len(bundle.train),
        len(bundle.val),
        len(bundle.class_names),
        f"; skipped {len(bundle.skipped)} unreadable file(s)" if bundle.skipped else "",
        "; decoded images cached in memory" if cached else "",
        workers,
    )
    train_data = SeededSamples(train_data, cfg.seed)
    sampler = ResumableSampler(
        DistributedSampler(train_data, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=cfg.seed)
    )
    per_rank = len(sampler.sampler)
    options = loader_options(workers, dist.device)
    if pipeline.collate is not None:
        options["collate_fn"] = pipeline.collate
    # BatchNorm cannot train on a batch of one image. The loader's own generator keeps it from drawing on the
    # global RNG, whose state last.pt saves.
    drop_last = per_rank % cfg.batch_size == 1
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = DataLoader(
        train_data, batch_size=cfg.batch_size, sampler=sampler, drop_last=drop_last, generator=generator, **options
    )
    if len(train_loader) == 0:
        raise ValueError(f"{cfg.data}: too few training images for one batch per process; add images")
    source = f"folder {cfg.data}, {workers} loader workers, input pipeline {cfg.input_pipeline}"
    total = len(bundle.train) + len(bundle.val)
    train_loader = WatchedLoader(train_loader, bad_log, total, cfg.max_bad_images, source)
    val_shard = Subset(val_data, range(dist.rank, len(val_data), dist.world_size))  # one object, not one per image
    val_loader = DataLoader(val_shard, batch_size=cfg.batch_size, **options)
    return TrainData(
        config=cfg,
        class_names=bundle.class_names,
        preprocessing=preprocessing,
        bundle=bundle,
        val_data=val_data,
        sampler=sampler,
        train_loader=train_loader,
        val_loader=val_loader,
        normalize=batch_normalizer(preprocessing),
        workers=workers,
        loader_options=options,
    )


def process_seconds() -> float:
    """Seconds since this process started (Linux: from /proc; elsewhere since shufflenet was imported)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rpartition(")")[2].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _IMPORTED


_IMPORTED = time.perf_counter()


class WatchedLoader:
    """A training DataLoader that logs when the first step ran and the bad images the workers met.

    Bad images are read from the run's shared list (any process may have found them) when it grows, a cheap
    stat per batch; past ``max_fraction`` of ``total`` images the run stops with one line saying so.
    Everything else (``len``, ``sampler``, ``dataset``...) is the DataLoader's.
    """

    def __init__(self, loader: DataLoader, bad_log: BadImageLog, total: int, max_fraction: float, source: str):
        self.loader = loader
        self.bad_log = bad_log
        self.total = total
        self.max_fraction = max_fraction
        self.source = source
        self.bad_images = len(bad_log.read())  # found by earlier runs of this folder (a resume) or rank 0
        self._seen_size = bad_log.size()
        self._first_step_logged = False

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            self.check_bad_images()
            yield batch
            if not self._first_step_logged:  # the caller asks for the next batch: its first step is done
                self._first_step_logged = True
                log.info(
                    "first step after %.1f s (data: %s, %d bad images so far)",
                    process_seconds(),
                    self.source,
                    self.bad_images,
                )

    def check_bad_images(self) -> int:
        """Log newly found bad images and return their number; raise ValueError past the run's allowance."""
        size = self.bad_log.size()
        if size == self._seen_size:
            return self.bad_images
        self._seen_size = size
        found = self.bad_log.read()
        if len(found) > self.bad_images:
            log.warning(
                "%d unreadable image(s) so far, each replaced by the next readable one; listed in %s",
                len(found),
                self.bad_log.path,
            )
        self.bad_images = len(found)
        error = too_many_bad_images(self.bad_images, self.total, self.max_fraction, self.bad_log.path)
        if error:
            raise ValueError(error)
        return self.bad_images


def resolve_workers(workers: int | None, device: torch.device, cached: bool = False) -> int:
    """DataLoader worker processes: as given, else picked for the device and whether images are cached."""
    if workers is not None:
        return workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.type == "cpu":
        # Loader processes take cores from the model's own threads; with decoded images cached the main
        # process keeps up, otherwise a quarter of the cores decode (docs/training.md has the measurements).
        return 0 if cached else cores // 4
    return max(1, min(8, cores - 1))


def loader_options(workers: int, device: torch.device) -> dict[str, Any]:
    """DataLoader keyword arguments for ``workers`` processes on ``device`` (persistent, signal-ignoring workers)."""
    options: dict[str, Any] = {"num_workers": workers, "pin_memory": device.type == "cuda"}
    if workers:
        options.update(persistent_workers=True, worker_init_fn=ignore_stop_signals)
    return options


class ResumableSampler(Sampler[tuple[int, int]]):
    """A DistributedSampler whose epoch can start part-way through (resuming an interrupted epoch).

    It yields ``(epoch, index)`` keys for :class:`SeededSamples`: the epoch travels with each index, so loader
    worker processes (persistent ones included) know it without being told.
    """

    def __init__(self, sampler: DistributedSampler) -> None:
        self.sampler = sampler
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Shuffle for ``epoch`` and start after its first ``skip`` samples."""
        self.sampler.set_epoch(epoch)
        self.epoch, self.skip = epoch, skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, index) for index in itertools.islice(iter(self.sampler), self.skip, None))

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


class SeededSamples(Dataset):
    """Each image's random augmentation comes from its own generator, seeded by (seed, epoch, index).

    So the crops and flips of an epoch do not depend on the number of loader workers, on how far they
    prefetched, on the rank an image goes to, or on where an interrupted run was resumed: ``--resume``
    needs no worker RNG state to continue bit for bit, and DDP sees the augmentations a single process would.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        with seeded(mix_seed(self.seed, epoch, index)):  # the caller's global RNG is left as it was
            return self.dataset[index]


class CachedImages(Dataset):
    """A dataset whose images are decoded and resized once (shorter side ``size``), then kept in memory.

    Decoding a photo costs about as much as a training step of a small model on a CPU. The random crops are
    taken from the resized image (the one the validation transform also starts from), so the augmentation
    is the same up to resampling. Filled by threads before the loaders start, so forked workers share it.
    """

    def __init__(self, dataset: ImageFolderDataset, size: int, threads: int = 4) -> None:
        self.dataset = dataset
        self.size = size
        self.images: list[Tensor | None] = [None] * len(dataset)
        with ThreadPoolExecutor(max_workers=threads) as pool:  # PIL decodes without holding the GIL
            self.images = list(pool.map(self._decode, range(len(dataset))))

    def _decode(self, index: int) -> Tensor | None:
        try:
            image = load_image(self.dataset.samples.name(index), draft_size=self.size)
        except BadImageError:
            return None  # the wrapped dataset replaces it (and warns) when it is asked for
        return T.functional.resize(T.functional.pil_to_tensor(image), self.size, antialias=True)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self.images[index]
        if image is None:
            return self.dataset[index]
        transform = self.dataset.transform
        return (transform(image) if transform is not None else image), int(self.dataset.samples.labels[index])


def maybe_cache(choice: bool | None, dataset: ImageFolderDataset, pre: Preprocessing, budget: int) -> Dataset:
    """``dataset`` wrapped in :class:`CachedImages` when asked, or (``choice`` None) when it fits ``budget`` bytes."""
    estimate = len(dataset) * 3 * pre.resize_size * round(pre.resize_size * 4 / 3)  # 4:3 photos
    if choice is False or (choice is None and estimate > budget):
        return dataset
    return CachedImages(dataset, pre.resize_size, threads=min(8, os.cpu_count() or 1))
