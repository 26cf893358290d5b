"""Run by test_distributed.py under torchrun: train with the JSON options in argv[1], then save this rank's
model (parameters and buffers) as RUN/rank<N>.pt, so the test can compare the ranks with each other."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

import shufflenet
from shufflenet.training import loop


def main() -> None:
    options = json.loads(sys.argv[1])
    models = []
    real = loop.create_model

    def keep(*args: object, **kwargs: object) -> torch.nn.Module:
        models.append(real(*args, **kwargs))
        return models[-1]

    loop.create_model = keep
    result = shufflenet.train(**options)
    assert result.stopped is None, result.message
    state = {k: v.detach().cpu() for k, v in models[0].state_dict().items()}
    torch.save(state, Path(options["out"]) / f"rank{os.environ['RANK']}.pt")


if __name__ == "__main__":
    main()
