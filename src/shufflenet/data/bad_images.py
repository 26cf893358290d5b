"""Images found unreadable while training: one shared list (``RUN/bad_images.txt``) and the stand-in rule.

Files are not decoded before a run (that costs minutes on a million images); a file that fails when a loader
reads it is replaced by the next readable file of the same list, so an epoch keeps its length, its batch
shapes and its exact resume. Every process (ranks, loader workers) appends what it finds to one text file,
one ``path<TAB>reason`` line each, so the main process can count them whatever process found them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

BAD_IMAGES_FILE = "bad_images.txt"


@dataclass(frozen=True)
class BadImageLog:
    """An append-only list of unreadable images shared by processes (picklable: just its path)."""

    path: Path

    def record(self, image: str | Path, reason: str) -> None:
        """Append one ``path<TAB>reason`` line (one small O_APPEND write, so processes do not interleave)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = f"{image}\t{' '.join(reason.split())}\n".encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def size(self) -> int:
        """Bytes written so far (a cheap check for news)."""
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def read(self) -> dict[str, str]:
        """Each bad image once (several workers may meet the same file), in the order first found."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        found: dict[str, str] = {}
        for line in text.splitlines():
            image, _, reason = line.partition("\t")
            found.setdefault(image, reason)
        return found


def too_many_bad_images(bad: int, total: int, max_fraction: float, where: Path) -> str | None:
    """The one-line error when ``bad`` of ``total`` images exceed ``max_fraction``, else None."""
    if total <= 0 or bad <= max_fraction * total:
        return None
    return (
        f"{bad} of {total} images ({bad / total:.1%}) cannot be read, more than --max-bad-images "
        f"{max_fraction:g}; see {where}, fix or remove those files (shufflenet verify-data DIR lists them all)"
    )
