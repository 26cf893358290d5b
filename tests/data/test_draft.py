"""JPEGs are decoded at reduced scale (PIL draft) when the target is much smaller, in the loader workers too."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from shufflenet.data import build_datasets, load_image
from shufflenet.transforms import Preprocessing, eval_transform


def _photo_like(path: Path, size: tuple[int, int]) -> Path:
    """A smooth gradient with mild noise, like a photo (JPEG's DCT scaling is exact on smooth content)."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    rng = np.random.default_rng(0)
    pixels = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], axis=-1)
    pixels = (pixels + rng.normal(0, 4, pixels.shape)).clip(0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=92)
    return path


def _identity(batch: list) -> list:
    return batch


def test_draft_decodes_a_large_jpeg_at_the_smallest_scale_that_keeps_the_target(tmp_path: Path) -> None:
    jpeg = _photo_like(tmp_path / "big.jpg", (800, 600))
    assert load_image(jpeg).size == (800, 600)
    assert load_image(jpeg, draft_size=64).size == (100, 75)  # 1/8: both sides still >= 64
    assert load_image(jpeg, draft_size=200).size == (400, 300)  # 1/2: 1/4 would give a 150-px side
    png = tmp_path / "big.png"
    Image.open(jpeg).save(png)
    assert load_image(png, draft_size=64).size == (800, 600)  # only JPEG decoders scale


def test_training_datasets_draft_in_loader_workers(tmp_path: Path) -> None:
    for label in ("a", "b"):
        for i in range(3):
            _photo_like(tmp_path / "data" / label / f"{i}.jpg", (640, 480))
    pre = Preprocessing.for_size(56)  # resize_size 64
    bundle = build_datasets(tmp_path / "data", pre, val_split=0.34, draft=True, transforms=(None, None))
    loader = torch.utils.data.DataLoader(bundle.train, batch_size=4, num_workers=1, collate_fn=_identity)
    sizes = {image.size for batch in loader for image, _ in batch}
    assert sizes == {(160, 120)}  # 640x480 / 4 (/ 8 would give a 60-px side): decoded so by the worker


def test_draft_keeps_the_eval_input_of_real_photos(hymenoptera: Path) -> None:
    """The validation transform (resize to 73, crop 64) sees almost the same pixels with and without draft."""
    transform = eval_transform(Preprocessing.for_size(64))
    photos = sorted((hymenoptera / "val" / "bees").glob("*.jpg"))[:8]
    for photo in photos:
        full = transform(load_image(photo)).float()
        drafted = transform(load_image(photo, draft_size=73)).float()
        assert load_image(photo, draft_size=73).size[0] < load_image(photo).size[0]  # it did scale down
        assert (full - drafted).abs().mean() < 6.0  # of 255: resampling noise (another photo differs by ~50)
