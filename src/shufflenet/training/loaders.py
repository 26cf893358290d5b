"""Training data: datasets with augmentation, an in-memory image cache, samplers that resume mid-epoch, loaders."""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, Subset
from torchvision.transforms import v2 as T

from shufflenet.data import BadImageError, ImageFolderDataset, build_datasets, detect_layout, load_image
from shufflenet.training.config import TrainConfig
from shufflenet.training.distributed import Distributed
from shufflenet.training.run_folder import SPLIT_FILE
from shufflenet.training.signals import ignore_stop_signals
from shufflenet.transforms import Preprocessing, batch_normalizer, eval_transform, train_transform

log = logging.getLogger("shufflenet.training")

CACHE_BUDGET = 2 * 1024**3  # bytes of decoded images kept in memory when cache_images is None


@dataclass
class TrainData:
    """Everything the loop reads data from: loaders, the sampler it positions, the batch normaliser."""

    class_names: list[str]
    preprocessing: Preprocessing
    bundle: Any  # shufflenet.data's datasets bundle: layout, skipped files, the uncached datasets
    val_data: Dataset
    sampler: ResumableSampler
    train_loader: DataLoader
    val_loader: DataLoader  # this rank's shard
    normalize: Callable[[Tensor], Tensor]
    workers: int
    loader_options: dict[str, Any]


def build_data(cfg: TrainConfig, dist: Distributed, run_dir: Path, split_existed: bool) -> TrainData:
    """train/ + val/ folders, or one class tree split (seeded, stratified) and saved to split.json."""
    preprocessing = Preprocessing.for_size(cfg.img_size)
    # Rank 0 writes split.json; the others compute the same seeded split, or read the file if it already was.
    use_split_file = dist.is_main or (split_existed and detect_layout(cfg.data) == "split")
    bundle = build_datasets(
        cfg.data,
        preprocessing,
        val_split=cfg.val_split,
        seed=cfg.seed,
        split_file=run_dir / SPLIT_FILE if use_split_file else None,
        draft=True,
    )
    bundle.train.transform = train_transform(preprocessing, cfg.crop_scale, cfg.hflip)
    bundle.val.transform = eval_transform(preprocessing)
    # Half the budget each: the auto cache is for datasets that fit in memory many times over.
    train_data = maybe_cache(cfg.cache_images, bundle.train, preprocessing, CACHE_BUDGET // 2)
    val_data = maybe_cache(cfg.cache_images, bundle.val, preprocessing, CACHE_BUDGET // 2)
    cached = isinstance(train_data, CachedImages)
    workers = resolve_workers(cfg.workers, dist.device, cached=cached)
    log.info(
        "data %s (%s layout): %d train and %d val images, %d classes%s%s, %d loader workers per process",
        cfg.data,
        bundle.layout,
        len(bundle.train),
        len(bundle.val),
        len(bundle.class_names),
        f"; skipped {len(bundle.skipped)} unreadable file(s)" if bundle.skipped else "",
        "; decoded images cached in memory" if cached else "",
        workers,
    )
    sampler = ResumableSampler(
        DistributedSampler(train_data, num_replicas=dist.world_size, rank=dist.rank, shuffle=True, seed=cfg.seed)
    )
    per_rank = len(sampler.sampler)
    options = loader_options(workers, dist.device)
    # BatchNorm cannot train on a batch of one image.
    drop_last = per_rank % cfg.batch_size == 1
    train_loader = DataLoader(train_data, batch_size=cfg.batch_size, sampler=sampler, drop_last=drop_last, **options)
    if len(train_loader) == 0:
        raise ValueError(f"{cfg.data}: too few training images for one batch per process; add images")
    val_shard = Subset(val_data, list(range(dist.rank, len(val_data), dist.world_size)))
    val_loader = DataLoader(val_shard, batch_size=cfg.batch_size, **options)
    return TrainData(
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


class ResumableSampler(Sampler[int]):
    """A DistributedSampler whose epoch can start part-way through (resuming an interrupted epoch)."""

    def __init__(self, sampler: DistributedSampler) -> None:
        self.sampler = sampler
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Shuffle for ``epoch`` and start after its first ``skip`` samples."""
        self.sampler.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.sampler), self.skip, None)

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


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
            image = load_image(self.dataset.samples[index][0], draft_size=self.size)
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
        return (transform(image) if transform is not None else image), self.dataset.samples[index][1]


def maybe_cache(choice: bool | None, dataset: ImageFolderDataset, pre: Preprocessing, budget: int) -> Dataset:
    """``dataset`` wrapped in :class:`CachedImages` when asked, or (``choice`` None) when it fits ``budget`` bytes."""
    estimate = len(dataset) * 3 * pre.resize_size * round(pre.resize_size * 4 / 3)  # 4:3 photos
    if choice is False or (choice is None and estimate > budget):
        return dataset
    return CachedImages(dataset, pre.resize_size, threads=min(8, os.cpu_count() or 1))
