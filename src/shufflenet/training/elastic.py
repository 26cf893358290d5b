"""torchrun's elastic restarts: a restarted worker continues the run from its last.pt by itself.

``torchrun --max-restarts N`` starts every worker of the group again, with the same command line, when one of
them dies (a SIGKILL, an out-of-memory kill, a lost node). It tells them so in ``TORCHELASTIC_RESTART_COUNT``;
with that above 0, or with ``--resume auto``, a run folder whose last.pt holds this run's options is resumed
instead of refused (``--checkpoint-every STEPS`` bounds the steps lost).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from shufflenet.training.config import TrainConfig
from shufflenet.training.state import read_last_checkpoint, resumed_config

RESTART_COUNT = "TORCHELASTIC_RESTART_COUNT"


def restart_count() -> int:
    """How many times torchrun has restarted this worker group (0 outside torchrun or on its first start)."""
    try:
        return int(os.environ.get(RESTART_COUNT, "0") or 0)
    except ValueError:
        return 0


def resolve_auto_resume(cfg: TrainConfig, run_dir: Path, explicit: set[str]) -> tuple[TrainConfig, list[str]]:
    """``cfg`` with ``resume`` True or False, decided for ``--resume auto`` and torchrun restarts; log lines.

    It resumes when ``run_dir/last.pt`` exists and every option given that defines the run (not the runtime
    ones: epochs, workers, ...) equals the one last.pt recorded. A restarted worker with no last.pt yet starts
    the run again, replacing the files the first attempt wrote.
    """
    restarts = restart_count()
    if cfg.resume is True or (cfg.resume != "auto" and restarts == 0):
        return cfg, []
    why = f"torchrun restart {restarts}" if restarts else "--resume auto"
    if not (run_dir / "last.pt").is_file():
        if restarts:
            return dataclasses.replace(cfg, resume=False, overwrite=True), [f"{why}: no last.pt yet, starting again"]
        return dataclasses.replace(cfg, resume=False), [f"{why}: no {run_dir / 'last.pt'}, starting the run"]
    _, differing = resumed_config(read_last_checkpoint(run_dir), cfg, explicit)
    if differing:
        # Not this run's checkpoint: refuse as a new run would (the folder check names --resume/--overwrite).
        note = f"{why}: {run_dir / 'last.pt'} is another run's ({differing[0]})"
        return dataclasses.replace(cfg, resume=False), [note]
    return dataclasses.replace(cfg, resume=True, overwrite=False), [f"{why}: continuing from {run_dir / 'last.pt'}"]
