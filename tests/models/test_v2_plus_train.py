"""ShuffleNetV2+ trains with the scratch and megvii recipes, under channels_last and bf16 autocast on the CPU."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import shufflenet
from shufflenet.checkpoints import load_model
from shufflenet.evaluation import evaluate, load_eval_dataset

ARCH = "shufflenet_v2_plus_small"


@pytest.mark.parametrize("recipe", ["scratch", "megvii"])
def test_one_epoch_under_channels_last_and_bf16(image_tree: Path, tmp_path: Path, recipe: str) -> None:
    run = tmp_path / recipe
    options = {"img_size": 64, "batch_size": 8, "epochs": 1, "workers": 0, "threads": 1, "device": "cpu"}
    result = shufflenet.train(
        data=str(image_tree), out=str(run), model=ARCH, recipe=recipe, channels_last=True, amp="bf16", **options
    )
    (row,) = result.history
    assert math.isfinite(row["train_loss"]) and row["train_loss"] > 0
    config = json.loads((run / "config.json").read_text())["options"]
    assert config["recipe"] == recipe and config["model"] == ARCH and config["amp"] == "bf16"
    assert config["channels_last"] is True and "amp bfloat16, channels_last True" in (run / "train.log").read_text()
    model = load_model(run / "best.pt")
    assert model.arch == ARCH and model.fc.bias is None and model.fc.out_features == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
    val, _ = load_eval_dataset(image_tree / "val", model.class_names, model.preprocessing)
    evaluated = evaluate(model, val, model.class_names)
    assert evaluated.num_images == 8 and math.isfinite(evaluated.loss)


def test_small_input_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="ShuffleNetV2\\+ has none"):
        shufflenet.create_model(ARCH, small_input=True)
