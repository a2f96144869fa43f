"""Registry faults, measured for real: concurrent promotions (separate processes), a truncated
ONNX file, corrupt registry records read by `ganpipe registry` and by the running service."""

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from test_registry import fake_outputs, tiny_onnx
from test_serve import grew, request_counts, running

from flows.cli import main as ganpipe
from pipeline.registry import Registry
from pipeline.serve.app import ServeConfig

REPO = Path(__file__).resolve().parents[1]


def promote_cli(registry: Path, work: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "flows.cli", "registry", "promote", "--registry", str(registry), "--workdir",
           str(work)]  # fmt: skip
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(procs: list[subprocess.Popen]) -> list[str]:
    """Each process's `promoted vNNNN`, after checking it succeeded without a traceback."""
    versions = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0 and "Traceback" not in err, err
        versions.append(out.split()[1].rstrip(";"))
    return versions


def staged(registry: Path) -> list[Path]:
    return [p for p in registry.iterdir() if p.is_dir() and p.name.startswith(".")] if registry.is_dir() else []


def test_concurrent_promotions_all_land_as_distinct_versions(tmp_path):
    # Before the fix, promotions that overlapped picked the same number and the loser died with
    # "OSError: Directory not empty", its promotion lost. The padding makes each copy take a while.
    big = tiny_onnx(pad_bytes=64 << 20)
    works = [fake_outputs(tmp_path / f"w{i}", fid=float(i + 1), onnx=big) for i in range(3)]
    registry = tmp_path / "registry"
    try:
        printed = []
        for _ in range(3):
            printed += finished([promote_cli(registry, w) for w in works])
        reg = Registry(registry)
        expected = [f"v{i:04d}" for i in range(1, 10)]
        assert reg.versions() == expected and sorted(printed) == expected
        history = reg.history()
        assert [e["version"] for e in history] == expected and {e["action"] for e in history} == {"promote"}
        assert reg.champion() == "v0009"
        assert sorted(reg.info(v)["metrics"]["eval"]["fid"] for v in expected) == [1.0] * 3 + [2.0] * 3 + [3.0] * 3
        assert not staged(registry)
    finally:  # 800 MB: not left behind in pytest's kept temporaries
        for folder in [registry, *works]:
            shutil.rmtree(folder, ignore_errors=True)


def test_promotions_wait_for_the_registry_lock_then_land_one_after_the_other(tmp_path):
    registry = tmp_path / "registry"
    registry.mkdir()
    works = [fake_outputs(tmp_path / f"w{i}", fid=float(i + 1)) for i in range(2)]
    with open(registry / ".lock", "a+b") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # as a promotion in progress would
        procs = [promote_cli(registry, w) for w in works]
        deadline = time.monotonic() + 60
        # params.yaml is the last file a promotion copies before it needs the lock
        while sum((d / "params.yaml").exists() for d in staged(registry)) < 2 and time.monotonic() < deadline:
            if any(p.poll() is not None for p in procs):
                break
            time.sleep(0.02)
        time.sleep(1.0)
        assert [p.poll() for p in procs] == [None, None], "a promotion went ahead while the registry was locked"
        assert Registry(registry).versions() == [] and not (registry / "champion").exists()
    assert sorted(finished(procs)) == ["v0001", "v0002"]
    reg = Registry(registry)
    assert [e["version"] for e in reg.history()] == ["v0001", "v0002"] and reg.champion() == "v0002"
    assert not staged(registry)


def test_promote_refuses_a_truncated_onnx_naming_it(tmp_path, capsys):
    # Before: promoted (only metrics/export.json's parity flag was looked at), and served as a broken champion.
    work = fake_outputs(tmp_path / "work", fid=1.0, onnx=tiny_onnx(pad_bytes=4096)[:-1000])
    registry = tmp_path / "registry"
    assert ganpipe(["registry", "promote", "--registry", str(registry), "--workdir", str(work)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{work / 'exports' / 'generator.onnx'}: cannot be loaded by ONNX Runtime" in err and "refusing" in err
    assert Registry(registry).versions() == [] and not (registry / "champion").exists() and not staged(registry)


def test_registry_list_marks_an_unreadable_version_and_lists_the_others(tmp_path, capsys):
    reg = Registry(tmp_path / "registry")
    for i in range(3):
        reg.promote(fake_outputs(tmp_path / f"w{i}", fid=3.0 - i), git_rev=str(i))
    (tmp_path / "registry" / "v0002" / "version.json").write_text('{"version": "v0002", "crea')  # a torn write
    assert ganpipe(["registry", "list", "--registry", str(tmp_path / "registry")]) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("  v0001") and "FID 3.0000" in lines[0]
    assert lines[1] == "  v0002  unreadable"
    assert lines[2].startswith("* v0003") and "FID 1.0000" in lines[2]
    assert err.count("\n") == 1 and "Traceback" not in err
    assert f"{tmp_path / 'registry' / 'v0002' / 'version.json'}: not valid JSON" in err


def break_version_json(root: Path) -> str:
    (root / "v0001" / "version.json").write_bytes(b'{"version": "v0001", "created": "2024')
    return f"{root / 'v0001' / 'version.json'}: not valid JSON"


def drop_files_key(root: Path, version: str = "v0001") -> str:
    path = root / version / "version.json"
    record = json.loads(path.read_text())
    del record["files"]
    path.write_text(json.dumps(record))
    return f"{path}: missing key 'files'"


def binary_pointer(root: Path) -> str:
    (root / "champion").write_bytes(b"\x89PNG\r\n\x1a\n\xff")
    return f"{root / 'champion'}: not UTF-8 text"


def torn_history(root: Path) -> str:
    with open(root / "history.jsonl", "a") as fh:
        fh.write('{"time": "2024-01-01T00:00:00Z", "vers')
    return f"{root / 'history.jsonl'}: line 3 is not valid JSON"


@pytest.mark.parametrize(
    "action, corrupt",
    [("show", break_version_json), ("show", drop_files_key), ("show", binary_pointer), ("rollback", torn_history)],
    ids=["version.json-not-json", "version.json-missing-key", "pointer-not-utf8", "history-torn-line"],
)
def test_every_registry_read_names_the_corrupt_file(tmp_path, capsys, action, corrupt):
    reg = Registry(tmp_path / "registry")
    for i in range(2):
        reg.promote(fake_outputs(tmp_path / f"w{i}", fid=2.0 - i), git_rev=str(i))
    if corrupt is not torn_history:
        (tmp_path / "registry" / "champion").write_text("v0001\n")
    message = corrupt(tmp_path / "registry")
    capsys.readouterr()
    assert ganpipe(["registry", action, "--registry", str(tmp_path / "registry")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ganpipe registry: error: {message}") and err.count("\n") == 1 and "Traceback" not in err


def corrupt_new_version_json(root: Path) -> str:
    path = root / "v0002" / "version.json"
    path.write_bytes(path.read_bytes()[:40])  # cut short, as by a full disk
    return f"{path}: not valid JSON"


def corrupt_new_record_key(root: Path) -> str:
    return drop_files_key(root, "v0002")


def corrupt_pointer(root: Path) -> str:
    (root / ".champion.new").write_bytes(b"v0002\xff\xfe\n")
    os.replace(root / ".champion.new", root / "champion")  # replaced as the registry replaces it
    return f"{root / 'champion'}: not UTF-8 text"


@pytest.mark.parametrize("corrupt", [corrupt_new_version_json, corrupt_new_record_key, corrupt_pointer],
                         ids=["version.json-not-json", "version.json-missing-key", "pointer-not-utf8"])  # fmt: skip
def test_a_corrupt_new_champion_is_reported_while_the_old_one_keeps_serving(tmp_path, corrupt):
    # Before: the first request after the change answered 500, /healthz said reload_error null and
    # ganpipe_model_reloads{result="failed"} did not move.
    reg = Registry(tmp_path / "registry")
    reg.promote(fake_outputs(tmp_path / "w1", fid=2.0), git_rev="one")
    with running(ServeConfig(registry=tmp_path / "registry")) as url:
        assert httpx.post(f"{url}/v1/generate", json={"n": 1}).headers["x-model-version"] == "v0001"
        before = request_counts(url)
        assert reg.promote(fake_outputs(tmp_path / "w2", fid=1.0), git_rev="two") == "v0002"
        message = corrupt(tmp_path / "registry")  # before any request could load v0002
        res = httpx.post(f"{url}/v1/generate", json={"n": 2})
        assert res.status_code == 200 and res.headers["x-model-version"] == "v0001"
        health = httpx.get(f"{url}/healthz").json()
        assert health["version"] == "v0001" and health["reload_error"].startswith(message)
        assert grew(before, request_counts(url)).get(("reload", "failed")) == 1
        assert httpx.post(f"{url}/v1/generate", json={"n": 1}).status_code == 200


def paused_promotion(registry: Path, work: Path) -> subprocess.Popen:
    """A real `Registry.promote` in another process, stopped once its files are staged (where a
    kill leaves a folder behind); returns when it got there."""
    script = ("import sys, time\nimport pipeline.registry as r\n"
              "def pause(staged, source):\n    print('staged', flush=True)\n    time.sleep(600)\n"
              "r._verify_onnx = pause\nr.Registry(sys.argv[1]).promote(sys.argv[2])\n")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script, str(registry), str(work)], env=env,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline() == "staged\n"
    return proc


def test_a_killed_promotions_folder_is_removed_by_the_next_but_a_live_ones_is_kept(tmp_path):
    # Before: each `kill -9` during a promotion left a `.promote.*` folder of the model's size forever.
    registry = tmp_path / "registry"
    work = fake_outputs(tmp_path / "work", fid=1.0, onnx=tiny_onnx(pad_bytes=1 << 20))
    killed = paused_promotion(registry, work)
    killed.kill()  # SIGKILL: no clean-up runs
    killed.wait()
    (left,) = staged(registry)
    live = paused_promotion(registry, work)
    try:
        (in_progress,) = [p for p in staged(registry) if p != left]
        assert Registry(registry).promote(work) == "v0001"
        assert staged(registry) == [in_progress]  # the killed one's removed, the live one's kept
    finally:
        live.kill()
        live.wait()
    assert Registry(registry).promote(work) == "v0002"
    assert staged(registry) == [] and Registry(registry).versions() == ["v0001", "v0002"]


def test_registry_list_shows_a_name_with_a_newline_on_one_line_and_versions_are_readable_by_others(tmp_path, capsys):
    # Before: a file name with a newline printed raw (one version as two lines), and version folders
    # were made 0700 (tempfile.mkdtemp), so a service running as another user could not read them.
    import stat

    registry = tmp_path / "registry"
    registry.mkdir(mode=0o755)
    os.chmod(registry, 0o755)  # whatever the umask
    work = fake_outputs(tmp_path / "work", fid=1.0)
    (work / "exports" / "generator.onnx").rename(work / "exports" / "gen\nerator.onnx")
    assert ganpipe(["registry", "promote", "--registry", str(registry), "--workdir", str(work)]) == 0
    capsys.readouterr()
    assert ganpipe(["registry", "list", "--registry", str(registry)]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("* v0001  ") and line.endswith("  gen\\nerator.onnx")
    assert stat.S_IMODE((registry / "v0001").stat().st_mode) == 0o755
    assert stat.S_IMODE((registry / "v0001" / "metrics").stat().st_mode) & 0o005 == 0o005
