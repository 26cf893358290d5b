"""Atomic file writes: a reader (or a crash) never sees half a checkpoint, CSV, JSON or PNG."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds.

    The parent folder is created, and the file gets the permissions a plain ``open()`` would give
    (``mkstemp`` alone would leave it readable by its owner only).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def check_output_path(path: str | Path, overwrite: bool, directory: bool = False) -> None:
    """Refuse to replace an existing output unless ``overwrite``, or one of the other kind; the parent must exist."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True (CLI: --overwrite) to replace it")
    if path.exists() and path.is_dir() != directory:
        kind = "a file" if directory else "a directory"
        raise FileExistsError(f"{path} is {kind}; give a {'folder' if directory else 'file'} name")
    if not path.parent.exists():
        raise FileNotFoundError(f"directory {path.parent} does not exist; create it first")
