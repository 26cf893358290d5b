"""Evaluation and prediction on small real images, with models and with plain callables."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from PIL import Image

import shufflenet
from conftest import TINY
from shufflenet.evaluation import evaluate, predict
from shufflenet.transforms import Preprocessing


def test_evaluate_accepts_any_callable(image_tree: Path) -> None:
    samples, names = shufflenet.data.scan_image_folder(image_tree / "val")
    dataset = shufflenet.data.ImageFolderDataset(samples, names, Preprocessing.for_size(32).eval_transform())

    def always_cat(batch: torch.Tensor) -> torch.Tensor:
        return torch.tensor([[2.0, 0.0]]).repeat(len(batch), 1)

    result = evaluate(always_cat, dataset, names, batch_size=3)
    assert result.num_images == 8 and result.top1 == 0.5 and result.top5 == 1.0
    assert result.confusion == [[4, 0], [4, 0]]
    cat, dog = result.per_class
    assert (cat["precision"], cat["recall"], dog["recall"], dog["precision"]) == (0.5, 1.0, 0.0, 0.0)
    # cross-entropy of logits (2, 0): log(1 + e^-2) for the cats, 2 more for the dogs
    assert result.loss == pytest.approx(math.log1p(math.exp(-2)) + 1.0)


def test_predict_ranks_classes_and_skips_bad_files(image_tree: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shufflenet.train(data=str(image_tree), out=str(run), epochs=1, **TINY)
    model = shufflenet.load_model(run / "best.pt")
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (50, 40), (200, 40, 40)).save(folder / "red.jpg")
    Image.new("CMYK", (50, 40), (0, 200, 200, 0)).save(folder / "cmyk.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result = predict(model, [folder], topk=5)
    assert sorted(p.path.name for p in result.predictions) == ["cmyk.jpg", "red.jpg"]
    assert [p.name for p, _ in result.skipped] == ["broken.png"]
    for prediction in result.predictions:
        probs = [p for _, p in prediction.topk]
        assert len(probs) == 2 and probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0)
    logits = model(Preprocessing.for_size(32).eval_transform()(Image.open(folder / "red.jpg"))[None])
    red = next(p for p in result.predictions if p.path.name == "red.jpg")
    assert red.probability == pytest.approx(logits.softmax(1).max().item(), rel=1e-5)
