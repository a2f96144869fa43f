"""The atomic writer every artifact goes through."""

import pytest

from pipeline.artifacts import atomic_path, write_bytes


def test_a_file_is_never_written_over_a_folder(tmp_path):
    keep = tmp_path / "results"
    keep.mkdir()
    (keep / "precious.txt").write_text("a week of work")
    with pytest.raises(IsADirectoryError):
        write_bytes(keep, b"\x89PNG")
    assert (keep / "precious.txt").read_text() == "a week of work"
    assert [p.name for p in tmp_path.iterdir()] == ["results"]  # no temporary left behind


def test_a_folder_replaces_a_folder_whole(tmp_path):
    target = tmp_path / "prepared"
    target.mkdir()
    (target / "old.npy").write_bytes(b"old")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "new.npy").write_bytes(b"new")
    assert sorted(p.name for p in target.iterdir()) == ["new.npy"]
    assert [p.name for p in tmp_path.iterdir()] == ["prepared"]
