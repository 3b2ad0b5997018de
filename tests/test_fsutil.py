"""mailstack.fsutil: atomic replacement, file mode, fsync calls and clean-up on failure."""

from __future__ import annotations

import os
import stat

import pytest

from mailstack import fsutil


def _fsyncs(monkeypatch) -> list[str]:
    """Record what is fsynced: "file" for a regular file, "dir" for a directory."""
    calls: list[str] = []
    real = os.fsync

    def spy(fd):
        calls.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(fsutil.os, "fsync", spy)
    return calls


def test_writes_new_file_with_mode(tmp_path):
    target = tmp_path / "f"
    fsutil.atomic_write(str(target), b"hello", mode=0o640)
    assert target.read_bytes() == b"hello"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert os.listdir(tmp_path) == ["f"]


def test_default_mode_is_private(tmp_path):
    target = tmp_path / "f"
    fsutil.atomic_write(str(target), b"x")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_mode_is_exact_whatever_the_umask(tmp_path):
    old = os.umask(0o077)
    try:
        fsutil.atomic_write(str(tmp_path / "f"), b"x", mode=0o644)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o644


def test_replaces_by_rename(tmp_path):
    target = tmp_path / "f"
    target.write_bytes(b"old contents")
    inode = target.stat().st_ino
    fsutil.atomic_write(str(target), b"new")
    assert target.read_bytes() == b"new"
    assert target.stat().st_ino != inode  # a new file renamed over, not rewritten in place
    assert os.listdir(tmp_path) == ["f"]


def test_large_and_empty_data(tmp_path):
    big = os.urandom(3 * 1024 * 1024 + 7)
    fsutil.atomic_write(str(tmp_path / "big"), big)
    assert (tmp_path / "big").read_bytes() == big
    fsutil.atomic_write(str(tmp_path / "empty"), b"")
    assert (tmp_path / "empty").read_bytes() == b""


def test_fsyncs_file_then_directory(tmp_path, monkeypatch):
    calls = _fsyncs(monkeypatch)
    fsutil.atomic_write(str(tmp_path / "f"), b"x")
    assert calls == ["file", "dir"]


def test_no_fsync_when_told(tmp_path, monkeypatch):
    calls = _fsyncs(monkeypatch)
    fsutil.atomic_write(str(tmp_path / "f"), b"x", fsync=False)
    assert calls == []
    assert (tmp_path / "f").read_bytes() == b"x"


def test_fsync_dir(tmp_path, monkeypatch):
    calls = _fsyncs(monkeypatch)
    fsutil.fsync_dir(str(tmp_path))
    assert calls == ["dir"]
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        fsutil.fsync_dir(str(tmp_path / "file"))


def test_failed_write_leaves_target_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "f"
    target.write_bytes(b"old")

    def broken(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(fsutil.os, "fsync", broken)
    with pytest.raises(OSError):
        fsutil.atomic_write(str(target), b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]


def test_failed_rename_removes_temp(tmp_path):
    target = tmp_path / "d"
    target.mkdir()
    (target / "inside").write_bytes(b"")  # a file cannot be renamed over a directory
    with pytest.raises(OSError):
        fsutil.atomic_write(str(target), b"x")
    assert sorted(os.listdir(tmp_path)) == ["d"]


def test_missing_directory_raises(tmp_path):
    with pytest.raises(FileNotFoundError):
        fsutil.atomic_write(str(tmp_path / "no" / "f"), b"x")


def test_relative_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fsutil.atomic_write("rel", b"x")
    assert (tmp_path / "rel").read_bytes() == b"x"
