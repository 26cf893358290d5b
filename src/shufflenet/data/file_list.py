"""A dataset's (path, label) list packed into a few arrays, so loader workers do not copy it.

A Python list of ``(Path, label)`` tuples is millions of small objects. A forked DataLoader worker shares them
with the trainer only until it touches them, and it touches every one: reading an item updates its reference
count, and the worker's garbage collector writes into every tuple and Path it traverses. Each such write copies
the page the object sits on, so each worker ends up with a private copy of the whole list (PyTorch issue 13246).
:class:`FileList` holds the paths as one ``bytes`` blob plus numpy offsets and the labels as one numpy array: a
handful of objects whatever the number of files, and a worker reading an item creates the ``Path`` on the spot.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import overload

import numpy as np

from shufflenet.data.images import Sample


class FileList(Sequence[Sample]):
    """``(Path, label)`` samples stored as packed bytes, numpy end offsets and numpy labels (a read-only sequence)."""

    def __init__(self, samples: Iterable[tuple[str | Path, int]]) -> None:
        encoded: list[bytes] = []
        labels: list[int] = []
        for path, label in samples:
            encoded.append(os.fsencode(path))  # fsencode keeps undecodable names (surrogateescape) exact
            labels.append(int(label))
        self._blob = b"".join(encoded)
        self._ends = np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded)))
        self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def name(self, index: int) -> str:
        """The ``index``-th file's path as a string (negative indices count from the end).

        What loader workers read: building a ``pathlib.Path`` interns each part of the name in Python 3.11,
        which writes into the interpreter's table of interned strings that the trainer filled while listing,
        so a worker copying that table's pages would grow with the number of files again.
        """
        index = self._check(index)
        start = int(self._ends[index - 1]) if index else 0
        return os.fsdecode(self._blob[start : int(self._ends[index])])

    def path(self, index: int) -> Path:
        """The ``index``-th file's path."""
        return Path(self.name(index))

    @overload
    def __getitem__(self, index: int) -> Sample: ...

    @overload
    def __getitem__(self, index: slice) -> list[Sample]: ...

    def __getitem__(self, index: int | slice) -> Sample | list[Sample]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = self._check(index)
        return self.path(index), int(self.labels[index])

    def __iter__(self) -> Iterator[Sample]:
        return (self[i] for i in range(len(self)))

    def __reduce__(self) -> tuple[object, ...]:
        # Pickled (spawned workers, torch.save) as the packed arrays, not as one object per file.
        return (_restore, (self._blob, self._ends, self.labels))

    def _check(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"sample index {index} out of range for {n} files")
        return index + n if index < 0 else index

    def __repr__(self) -> str:
        return f"FileList({len(self)} files, {len(self._blob)} bytes of paths)"


def _restore(blob: bytes, ends: np.ndarray, labels: np.ndarray) -> FileList:
    files = FileList.__new__(FileList)
    files._blob, files._ends, files.labels = blob, ends, labels
    return files


def as_file_list(samples: Sequence[tuple[str | Path, int]]) -> FileList:
    """``samples`` as a :class:`FileList` (a FileList is returned as it is)."""
    return samples if isinstance(samples, FileList) else FileList(samples)
