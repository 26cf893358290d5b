"""Run by test_distributed.py under torchrun: the training runs listed in argv[1] (JSON), one after another in
the same processes; after each, this rank's model (parameters and buffers) is saved as RUN/rank<N>.pt, so the
test can compare ranks with each other and runs with runs.

Each run is a dict of ``shufflenet.train`` options plus, optionally, ``cut_after_step`` (stop after that step
of the first epoch, as a Ctrl-C does), ``scramble_rng`` (reseed the global generators first, as a fresh
process would start) and ``bn_eval`` (BatchNorm layers in eval mode: running statistics frozen, all weights
learning)."""

from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import shufflenet
from shufflenet.training import loop
from shufflenet.training.distributed import Distributed


def keep_models(models: list[nn.Module]) -> None:
    real = loop.create_model

    def keep(*args: object, **kwargs: object) -> nn.Module:
        models.append(real(*args, **kwargs))
        return models[-1]

    loop.create_model = keep


def cut_after(step_to_cut: int) -> None:
    real, fired = loop._check, []

    def check(pending: list, counts: list, sums: torch.Tensor, step: int, stop: Any, dist: Any) -> Any:
        if step == step_to_cut and not fired:
            fired.append(step)
            stop.count += 1
        return real(pending, counts, sums, step, stop, dist)

    loop._check = check


def train_mode_with_batchnorm_frozen(model: nn.Module, freeze_backbone: bool = False) -> None:
    """``loop.set_train_mode`` for a run whose BatchNorm statistics stay as they are (every weight learns)."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def main() -> None:
    # Each train() leaves the process group at its end, and gloo cannot join a new one in the same process:
    # the group stays up for all the runs and is left after the last one.
    Distributed.close = lambda self: None  # type: ignore[method-assign]
    originals = (loop.create_model, loop._check, loop.set_train_mode)
    for run in json.loads(sys.argv[1]):
        options = dict(run)
        cut, scramble, bn_eval = (
            options.pop("cut_after_step", None),
            options.pop("scramble_rng", False),
            options.pop("bn_eval", False),
        )
        loop.create_model, loop._check, loop.set_train_mode = originals
        models: list[nn.Module] = []
        keep_models(models)
        if cut is not None:
            cut_after(cut)
        if bn_eval:
            loop.set_train_mode = train_mode_with_batchnorm_frozen
        if scramble:
            torch.manual_seed(12345 + int(os.environ["RANK"]))
            random.seed(12345)
            np.random.seed(12345)
        result = shufflenet.train(**options)
        assert result.stopped == ("interrupted" if cut is not None else None), result.message
        state = {k: v.detach().cpu() for k, v in models[0].state_dict().items()}
        torch.save(state, Path(options["out"]) / f"rank{os.environ['RANK']}.pt")
        torch.distributed.barrier()  # rank 0 has written the run folder before any rank starts the next run
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
