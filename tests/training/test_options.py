"""Training paths beyond the defaults: optimizers, label smoothing, bf16 autocast on a CPU, uncached data."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import shufflenet
from conftest import TINY
from shufflenet.training import loop


@pytest.mark.parametrize(
    ("optimizer", "state_key", "decay"), [("sgd", "momentum_buffer", 4e-5), ("adamw", "exp_avg", 0.05)]
)
def test_sgd_and_adamw_train_with_their_state(
    image_tree: Path, tmp_path: Path, optimizer: str, state_key: str, decay: float
) -> None:
    run = tmp_path / "run"
    result = shufflenet.train(data=str(image_tree), out=str(run), epochs=1, **{**TINY, "optimizer": optimizer})
    assert result.stopped is None and math.isfinite(result.history[0]["train_loss"])
    last = torch.load(run / "last.pt", weights_only=True)
    groups, state = last["optimizer"]["param_groups"], last["optimizer"]["state"]
    assert [g["weight_decay"] for g in groups] == [decay, 0.0]
    assert state and all(state_key in s for s in state.values())
    if optimizer == "sgd":
        assert groups[0]["momentum"] == 0.9


class ConstantLogits(torch.nn.Module):
    """Logits (2, 0) for every image: the training loss of a batch is known in closed form."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(1, 2)  # checkpoints read the class count from the classifier
        with torch.no_grad():
            self.fc.weight.zero_()
            self.fc.bias.copy_(torch.tensor([2.0, 0.0]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(images.new_zeros(len(images), 1))


@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_label_smoothing_is_the_training_loss(
    image_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, smoothing: float
) -> None:
    """Targets (1 - e/2, e/2) over 2 classes: the loss is (1 - e/2)(-log p_true) + e/2 (-log p_other)."""
    monkeypatch.setattr(loop, "create_model", lambda *_a, **_k: ConstantLogits())
    options = {**TINY, "data": str(image_tree), "epochs": 1, "lr": 1e-9}  # the logits stay (2, 0)
    result = shufflenet.train(out=str(tmp_path / "run"), label_smoothing=smoothing, **options)
    cat_nll, dog_nll = math.log1p(math.exp(-2)), 2 + math.log1p(math.exp(-2))  # -log p(cat), -log p(dog)
    cat = (1 - smoothing / 2) * cat_nll + smoothing / 2 * dog_nll
    dog = (1 - smoothing / 2) * dog_nll + smoothing / 2 * cat_nll
    # 12 JPEGs + a grayscale and an RGBA PNG are cats; the two unreadable files are replaced by the next
    # readable one in the list: cat/empty.jpg by cat/gray.png, the last file (dog/notes.png) by the first cat.
    cats, dogs = 16, 12
    assert result.history[0]["train_loss"] == pytest.approx((cats * cat + dogs * dog) / (cats + dogs), rel=1e-6)
    # Validation loss is plain cross-entropy (4 cats, 4 dogs) whatever the smoothing.
    assert result.history[0]["val_loss"] == pytest.approx((cat_nll + dog_nll) / 2, rel=1e-6)


def test_bf16_autocast_on_cpu(image_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--amp bf16 on a CPU runs the convolutions in bfloat16 and keeps the weights float32."""
    seen: set[torch.dtype] = set()
    real = loop.create_model

    def hooked(*args: object, **kwargs: object) -> torch.nn.Module:
        model = real(*args, **kwargs)
        model.conv1.register_forward_hook(lambda _m, _i, out: seen.add(out.dtype) if model.training else None)
        return model

    monkeypatch.setattr(loop, "create_model", hooked)
    run = tmp_path / "run"
    result = shufflenet.train(data=str(image_tree), out=str(run), epochs=1, amp="bf16", **TINY)
    assert result.stopped is None and math.isfinite(result.history[0]["train_loss"])
    assert seen == {torch.bfloat16}
    assert json.loads((run / "config.json").read_text())["resolved"]["amp"] == "bfloat16"
    state = torch.load(run / "last.pt", weights_only=True)["state_dict"]
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())


def test_uncached_images_are_decoded_each_epoch(image_tree: Path, tmp_path: Path) -> None:
    """cache_images=False reads every image from its file each time; the run is still reproducible."""
    options = {**TINY, "data": str(image_tree), "epochs": 2, "cache_images": False}
    first = shufflenet.train(out=str(tmp_path / "a"), **options)
    assert "decoded images cached in memory" not in (tmp_path / "a" / "train.log").read_text()
    again = shufflenet.train(out=str(tmp_path / "b"), **options)
    assert [r["train_loss"] for r in first.history] == [r["train_loss"] for r in again.history]
    a = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
