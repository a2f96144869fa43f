"""The model registry: atomic promotion, refusals naming the file, rollback, the decision rule."""

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from flows.cli import main as ganpipe
from pipeline.registry import FetchSource, Registry, RegistryError, artifact_version, compare


def tiny_onnx(task: str = "generate", pad_bytes: int = 0) -> bytes:
    """A real ganpipe-shaped ONNX model built in microseconds, without torch: a generator
    z [N, 8] -> images [N, 1, 16, 16], or a translator images -> -images (size multiple 4).
    `pad_bytes` adds an unused initializer, for a file that takes a while to copy."""
    if task == "generate":
        weight = np.random.default_rng(0).standard_normal((8, 256)).astype(np.float32)
        nodes = [helper.make_node("MatMul", ["z", "w"], ["h"]), helper.make_node("Tanh", ["h"], ["t"]),
                 helper.make_node("Reshape", ["t", "shape"], ["images"])]  # fmt: skip
        inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.array([-1, 1, 16, 16]), "shape")]
        io = ([helper.make_tensor_value_info("z", TensorProto.FLOAT, ["n", 8])],
              [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 1, 16, 16])])  # fmt: skip
        meta = {"ganpipe.latent_dim": "8", "ganpipe.num_classes": "0", "ganpipe.class_names": "[]"}
    else:
        nodes, inits = [helper.make_node("Neg", ["images"], ["translated"])], []
        io = ([helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 1, "h", "w"])],
              [helper.make_tensor_value_info("translated", TensorProto.FLOAT, ["n", 1, "h", "w"])])  # fmt: skip
        meta = {"ganpipe.size_multiple": "4", "ganpipe.min_size": "8", "ganpipe.direction": "AB"}
    if pad_bytes:
        inits.append(numpy_helper.from_array(np.zeros(pad_bytes // 4, np.float32), "padding"))
    model = helper.make_model(helper.make_graph(nodes, "tiny", *io, inits), opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    meta.update({"ganpipe.task": task, "ganpipe.image_size": "16", "ganpipe.channels": "1", "ganpipe.arch": "tiny"})
    for key, value in meta.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    return model.SerializeToString()


def fake_outputs(root, fid: float, parity: bool = True, onnx: bytes | None = None):
    """What a finished pipeline leaves behind, with a given FID."""
    (root / "exports").mkdir(parents=True, exist_ok=True)
    (root / "metrics").mkdir(exist_ok=True)
    (root / "exports" / "generator.onnx").write_bytes(tiny_onnx() if onnx is None else onnx)
    (root / "exports" / "model_card.json").write_text("{}")
    (root / "metrics" / "eval.json").write_text(json.dumps({"fid": fid}))
    (root / "metrics" / "export.json").write_text(json.dumps({"parity_passed": parity, "max_abs_diff": 1e-7}))
    (root / "params.yaml").write_text("seed: 0\n")
    (root / "dvc.lock").write_text(f"schema: '2.0'\n# fid {fid}\n")
    return root


def test_promote_writes_a_complete_version_and_makes_it_champion(tmp_path):
    work = fake_outputs(tmp_path / "work", fid=3.0)
    reg = Registry(tmp_path / "registry")
    assert reg.promote(work, reason="first", git_rev="abc123") == "v0001"
    assert reg.champion() == "v0001"
    v = tmp_path / "registry" / "v0001"
    assert {p.name for p in v.iterdir()} == {"generator.onnx", "model_card.json", "metrics", "params.yaml",
                                             "version.json"}  # fmt: skip
    info = reg.info()
    assert info["git_rev"] == "abc123" and info["metrics"]["eval"]["fid"] == 3.0
    assert len(info["dvc_lock_sha256"]) == 64 and info["files"] == ["generator.onnx"]
    assert reg.model_path() == v / "generator.onnx"


def test_a_version_records_where_to_fetch_it_or_null_when_nothing_was_shared(tmp_path):
    reg = Registry(tmp_path / "registry")
    assert reg.promote(fake_outputs(tmp_path / "a", fid=3.0), git_rev="a") == "v0001"
    assert reg.info("v0001")["fetch"] is None  # no remotes: the files exist only where they were made
    source = FetchSource(git_remote="/srv/git/gan repo.git", git_rev="f" * 40, dvc_remote="s3://models/gan",
                         artifacts={"generator": "models/generator.pt", "generator-onnx": "exports"},
                         experiment="retrain-1")  # fmt: skip
    for _ in range(11):
        version = reg.promote(fake_outputs(tmp_path / "b", fid=2.0), git_rev="b", fetch=source)
    fetch = reg.info(version)["fetch"]
    assert version == "v0012" and fetch["artifact_version"] == "v0.0.12"
    assert fetch["tags"] == ["generator@v0.0.12", "generator-onnx@v0.0.12"] and fetch["git_rev"] == "f" * 40
    command = "dvc artifacts get '/srv/git/gan repo.git' generator-onnx --rev v0.0.12"  # quoted for a shell
    assert fetch["commands"]["generator-onnx"] == command
    assert fetch["dvc_remote"] == "s3://models/gan" and fetch["experiment"] == "retrain-1"
    with pytest.raises(RegistryError, match="'latest' is not a registry version"):
        artifact_version("latest")


def test_a_crash_while_promoting_leaves_the_registry_as_it_was(tmp_path, monkeypatch):
    import shutil

    reg = Registry(tmp_path / "registry")
    reg.promote(fake_outputs(tmp_path / "a", fid=3.0), git_rev="a")
    before = sorted(p.name for p in (tmp_path / "registry").iterdir())
    real_copy = shutil.copy2

    def crash(src, dst, *a, **k):
        if str(src).endswith("params.yaml"):
            raise OSError("disk full")
        return real_copy(src, dst, *a, **k)

    monkeypatch.setattr(shutil, "copy2", crash)
    with pytest.raises(OSError, match="disk full"):
        reg.promote(fake_outputs(tmp_path / "b", fid=2.0), git_rev="b")
    assert sorted(p.name for p in (tmp_path / "registry").iterdir()) == before  # no v0002, no temporary
    assert reg.champion() == "v0001" and reg.versions() == ["v0001"]


def test_promotion_is_refused_when_parity_failed_or_a_file_is_missing(tmp_path):
    reg = Registry(tmp_path / "registry")
    with pytest.raises(RegistryError, match=r"metrics/export.json: parity_passed is false"):
        reg.promote(fake_outputs(tmp_path / "bad", fid=1.0, parity=False))
    work = fake_outputs(tmp_path / "partial", fid=1.0)
    (work / "metrics" / "eval.json").unlink()
    with pytest.raises(RegistryError, match=r"missing metrics/eval.json"):
        reg.promote(work)
    assert reg.versions() == [] and reg.champion() is None


def test_rollback_steps_back_through_earlier_champions(tmp_path):
    reg = Registry(tmp_path / "registry")
    for i, fid in enumerate((3.0, 2.0, 1.0)):
        reg.promote(fake_outputs(tmp_path / f"w{i}", fid=fid), git_rev=str(i))
    assert reg.champion() == "v0003"
    assert reg.rollback() == "v0002" and reg.rollback() == "v0001"
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        reg.rollback()
    assert [h["action"] for h in reg.history()] == ["promote"] * 3 + ["rollback"] * 2
    assert (tmp_path / "registry" / "champion").read_text() == "v0001\n"


def test_decision_needs_a_margin_and_a_passed_export():
    good = {"eval": {"fid": 2.0}, "export": {"parity_passed": True}}
    assert compare(good, None, 0.05).promote
    assert compare(good, {"eval": {"fid": 2.5}}, 0.05).promote  # 20% better
    kept = compare(good, {"eval": {"fid": 2.05}}, 0.05)  # 2.4% better: not enough
    assert not kept.promote and "does not beat the champion's 2.0500 by 5%" in kept.reason
    failed = compare({"eval": {"fid": 0.1}, "export": {"parity_passed": False}}, {"eval": {"fid": 9.0}}, 0.0)
    assert not failed.promote and "parity" in failed.reason
    inception = {**good, "eval": {"fid": 2.0, "feature_extractor": "inception (pt_inception-2015-12-05)"}}
    other_space = compare(inception, {"eval": {"fid": 90.0, "feature_extractor": "evaluator (classes CNN)"}}, 0.05)
    assert not other_space.promote and "in inception features, the champion's in evaluator" in other_space.reason
    unmeasured = compare(good, {"eval": {}, "export": {"parity_passed": True}}, 0.05)  # was a KeyError
    assert not unmeasured.promote and "champion has no FID" in unmeasured.reason


@pytest.mark.parametrize("parity", ["false", "true", 1, None])
def test_only_a_json_true_passes_the_parity_check(tmp_path, parity):
    # Before: "false" (a string) and 1 passed a truthiness check, in the decision and in promote.
    candidate = {"eval": {"fid": 1.0}, "export": {"parity_passed": parity}}
    decision = compare(candidate, None, 0.05)
    assert not decision.promote and "did not pass the parity check" in decision.reason
    work = fake_outputs(tmp_path / "work", fid=1.0)
    (work / "metrics" / "export.json").write_text(json.dumps({"parity_passed": parity}))
    reg = Registry(tmp_path / "registry")
    with pytest.raises(RegistryError, match=r"metrics/export.json: parity_passed is .*refusing to promote$"):
        reg.promote(work)
    assert reg.versions() == [] and not (tmp_path / "registry" / "champion").exists()


@pytest.mark.parametrize("fid", [float("nan"), float("inf"), "1.0", True])
def test_an_fid_that_is_not_a_finite_number_is_never_promoted(tmp_path, fid):
    # Before: a NaN FID was promoted when there was no champion, then every candidate was refused ("needs < nan").
    bad = {"eval": {"fid": fid}, "export": {"parity_passed": True}}
    decision = compare(bad, None, 0.05)
    assert not decision.promote and "not a finite number" in decision.reason
    good = {"eval": {"fid": 1.0}, "export": {"parity_passed": True}}
    against_bad = compare(good, bad, 0.05)
    assert not against_bad.promote and "not a finite number, to compare with; promote by hand" in against_bad.reason
    work = fake_outputs(tmp_path / "work", fid=1.0)
    (work / "metrics" / "eval.json").write_text(json.dumps({"fid": fid}))  # NaN and Infinity as Python writes them
    reg = Registry(tmp_path / "registry")
    with pytest.raises(RegistryError, match=r"metrics/eval.json: fid is .*, not a finite number; refusing to promote"):
        reg.promote(work)
    assert reg.versions() == []


def test_cli_lists_shows_promotes_and_rolls_back(tmp_path, capsys):
    reg = str(tmp_path / "registry")
    for i, fid in enumerate((3.0, 2.0)):
        assert ganpipe(["registry", "promote", "--registry", reg, "--workdir",
                        str(fake_outputs(tmp_path / f"w{i}", fid=fid))]) == 0  # fmt: skip
    capsys.readouterr()
    assert ganpipe(["registry", "list", "--registry", reg]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("  v0001") and "FID 3.0000" in lines[0] and lines[1].startswith("* v0002")
    assert ganpipe(["registry", "show", "v0001", "--registry", reg]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == "v0001"
    assert ganpipe(["registry", "rollback", "--registry", reg]) == 0
    assert "v0001 is the champion again" in capsys.readouterr().out
    assert ganpipe(["registry", "show", "v0009", "--registry", reg]) == 2
    assert "no version 'v0009'" in capsys.readouterr().err
