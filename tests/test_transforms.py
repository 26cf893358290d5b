"""Training/validation transforms on uint8 images and the batch normaliser, against the per-image pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from shufflenet.transforms import Preprocessing, batch_normalizer, eval_transform


@pytest.mark.parametrize(
    "preprocessing",
    [Preprocessing.for_size(32), Preprocessing.for_size(32, mean=(0.0,) * 3, std=(1.0,) * 3, pixel_scale=255.0,
                                                         channel_order="BGR")],
)  # fmt: skip
def test_uint8_batches_match_the_per_image_transform(image_tree: Path, preprocessing: Preprocessing) -> None:
    images = [Image.open(p).convert("RGB") for p in sorted((image_tree / "val" / "cat").glob("*.jpg"))]
    reference = torch.stack([preprocessing.eval_transform()(im) for im in images])
    batch = torch.stack([eval_transform(preprocessing)(im) for im in images])
    assert batch.dtype == torch.uint8
    normalized = batch_normalizer(preprocessing)(batch.contiguous(memory_format=torch.channels_last))
    assert normalized.is_contiguous(memory_format=torch.channels_last)
    # Resizing uint8 rounds to whole pixel values: within one grey level of the float pipeline.
    one_level = preprocessing.pixel_scale / 255 / min(preprocessing.std)
    assert torch.allclose(normalized, reference, atol=1.01 * one_level)
