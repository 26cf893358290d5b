"""Training options: defaults and unknown names."""

from __future__ import annotations

import pytest

import shufflenet
from shufflenet.training import TrainConfig


def test_config_rejects_unknown_option() -> None:
    with pytest.raises(TypeError, match="learning_rate"):
        shufflenet.train(data="x", out="y", learning_rate=0.1)
    assert TrainConfig().optimizer == "adam" and TrainConfig().epochs == 5 and TrainConfig().lr == 1e-4
