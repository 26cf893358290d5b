"""Run by test_torchrun_faults.py under torchrun: ``shufflenet train ARGS``. On torchrun's first attempt only,
rank $KILL_RANK SIGKILLs itself when it starts to prepare its $KILL_AT-th training image (mid-epoch), as an
out-of-memory kill or a lost machine would end it: no handler runs, nothing is saved."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

from shufflenet.cli import main
from shufflenet.training import loaders


def kill_at_image(count: int) -> None:
    real = loaders.train_transform
    calls = {"n": 0}

    def killing(*args: object, **kwargs: object) -> Callable:
        transform = real(*args, **kwargs)

        def apply(image: object) -> object:
            calls["n"] += 1
            if calls["n"] == count:
                os.kill(os.getpid(), signal.SIGKILL)
            return transform(image)

        return apply

    loaders.train_transform = killing


if __name__ == "__main__":
    first_attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    if first_attempt and os.environ.get("RANK") == os.environ.get("KILL_RANK"):
        kill_at_image(int(os.environ["KILL_AT"]))
    sys.exit(main(["train", *sys.argv[1:]]))
