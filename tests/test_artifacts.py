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


def test_read_metrics_gives_the_whole_evaluation_under_eval(tmp_path):
    """metrics/eval.json (what experiments are compared by) and eval_details.json (the rest) are one
    evaluation to every reader: the pipeline's summary, retraining's comparison."""
    import json

    from pipeline.artifacts import read_metrics

    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics/eval.json").write_text(json.dumps({"fid": 1.0, "precision": 0.9}))
    (tmp_path / "metrics/eval_details.json").write_text(json.dumps({"fid_real_floor": 0.5, "kid": 0.1}))
    (tmp_path / "metrics/export.json").write_text(json.dumps({"parity_passed": True}))
    found = read_metrics(tmp_path)
    assert found == {"eval": {"fid": 1.0, "precision": 0.9, "fid_real_floor": 0.5, "kid": 0.1},
                     "export": {"parity_passed": True}}  # fmt: skip
