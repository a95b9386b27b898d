"""Atomic writes (captum_paths._io): every file the package writes goes through them."""

import os

import pytest

from captum_paths._io import atomic_path


def test_atomic_path_replaces_in_one_step_with_ordinary_permissions(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        open(tmp, "w").write("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]
    with atomic_path(target) as tmp:
        open(tmp, "w").write("new")
    mask = os.umask(0)
    os.umask(mask)
    assert target.read_text() == "new" and (target.stat().st_mode & 0o777) == (0o666 & ~mask)
