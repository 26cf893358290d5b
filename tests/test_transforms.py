"""Training/validation transforms on uint8 images and the batch normaliser, against the per-image pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from shufflenet.transforms import Preprocessing, batch_normalizer, eval_transform, train_transform


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


def test_pad_crop_shifts_the_whole_image_at_its_own_scale() -> None:
    # The small-image practice: each output is the input moved by at most pad pixels, zeros where it moved in;
    # nothing is rescaled or cut beyond the shift.
    pixels = torch.arange(32 * 32 * 3, dtype=torch.int64).reshape(3, 32, 32) % 251 + 1  # no zeros in the image
    image = Image.fromarray(pixels.permute(1, 2, 0).numpy().astype("uint8"))
    transform = train_transform(Preprocessing.for_size(32), hflip=False, pad_crop=4)
    padded = torch.nn.functional.pad(pixels, (4, 4, 4, 4))
    torch.manual_seed(0)
    shifts = set()
    for _ in range(20):
        out = transform(image).to(torch.int64)
        assert out.shape == (3, 32, 32)
        (shift,) = [(y, x) for y in range(9) for x in range(9) if torch.equal(out, padded[:, y : y + 32, x : x + 32])]
        shifts.add(shift)
    assert len(shifts) > 3
