import os
import stat

import pytest

from shufflenet.fileio import atomic_path, write_text_atomic


def test_atomic_write_creates_parents_and_gets_umask_permissions(tmp_path) -> None:
    old = os.umask(0o022)
    try:
        path = write_text_atomic(tmp_path / "a" / "b.json", "{}\n")
    finally:
        os.umask(old)
    assert path.read_text() == "{}\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # mkstemp alone would give 0600
    assert sorted(p.name for p in path.parent.iterdir()) == ["b.json"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path) -> None:
    path = write_text_atomic(tmp_path / "last.pt", "good")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert path.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
