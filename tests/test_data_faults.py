"""Faults of the prepare stage found by attacking it: each is built here with real files
(and real processes), and each must end in a clear error naming the file (fail mode) or a
skip-and-report naming it (skip mode), never a crash, a half-written output set or memory
blown by a tiny archive."""

import gzip
import json
import os
import signal
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path

import pytest
from test_data_validation import cfg, png
from test_data_validation import good_folder as shared_good_folder

from pipeline.config import DataConfig, GlyphConfig
from pipeline.data.prepare import DataError, prepare
from pipeline.dataset import load_split

REPO = Path(__file__).resolve().parents[1]
MIB = 1 << 20

# prepare() in a child process, for what a test cannot do to itself: be killed, or have its
# peak memory measured. The peak is VmHWM, the high-water mark of the child's own memory:
# ru_maxrss would also count what the (large) pytest process held when it forked the child.
CHILD = """
import json, sys
from pipeline.config import DataConfig
from pipeline.data.prepare import DataError, prepare
try:
    prepare(DataConfig(**json.loads(sys.argv[1])), sys.argv[2], sys.argv[3])
    msg = "ok"
except DataError as err:
    msg = str(err)
with open("/proc/self/status") as fh:
    peak = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))
print(json.dumps({"rss": peak, "msg": msg}))
"""


def child_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def run_child(data: dict, out: Path, report: Path) -> dict:
    args = [sys.executable, "-c", CHILD, json.dumps(data), str(out), str(report)]
    res = subprocess.run(args, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def good_folder(root: Path) -> Path:
    return shared_good_folder(root, per_class=5)


def write_raw(folder: Path, name: bytes, data: bytes) -> None:
    """A file whose name is raw bytes (not necessarily UTF-8), as Linux file systems allow."""
    try:
        fh = open(os.path.join(os.fsencode(folder), name), "wb")  # noqa: SIM115
    except OSError as err:  # macOS (APFS) refuses names that are not UTF-8
        pytest.skip(f"this file system refuses the file name {name!r} ({err.strerror})")
    with fh:
        fh.write(data)


class Outputs:
    """data/prepared/ and both reports of one tmp_path, with a byte-exact snapshot."""

    def __init__(self, root: Path):
        self.dir, self.report = root / "data" / "prepared", root / "reports" / "data_report.json"
        self.summary, self.thumbs = self.report.with_suffix(".md"), root / "reports" / "data_report_thumbs.png"

    def snapshot(self) -> dict[str, bytes]:
        files = [*sorted(self.dir.rglob("*")), self.report, self.summary, self.thumbs]
        return {str(p): p.read_bytes() for p in files if p.is_file()}

    def temporaries(self) -> list[Path]:
        return [p for d in {self.dir.parent, self.report.parent} if d.is_dir() for p in d.glob(".*.tmp")]


@pytest.fixture
def previous(tmp_path) -> tuple[Outputs, dict[str, bytes]]:
    """A good earlier run, which every failed run must leave exactly as it was."""
    outs = Outputs(tmp_path)
    prepare(cfg(good_folder(tmp_path / "earlier")), outs.dir, outs.report)
    return outs, outs.snapshot()


def table_rows(markdown: str) -> list[list[str]]:
    """The cells of each row of the skipped-files table, split where a GFM renderer splits
    them (at pipes that are not backslash-escaped) and unescaped."""
    rows = []
    for line in markdown.splitlines():
        if not line.startswith("|") or line.startswith("|---"):
            continue
        cells, cell, chars = [], "", iter(line)
        for c in chars:
            if c == "\\":
                cell += next(chars, "")
            elif c == "|":
                cells.append(cell.strip())
                cell = ""
            else:
                cell += c
        cells.append(cell.strip())
        rows.append(cells[1:-1])
    return rows[1:]  # without the header


# --- 11: temporaries left by a killed run --------------------------------------------------


def test_a_killed_runs_temporaries_are_removed_by_the_next_run_but_a_live_runs_are_kept(tmp_path):
    outs, src = Outputs(tmp_path), good_folder(tmp_path / "src")
    run_a = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps({"image_size": 32}), str(outs.dir), str(outs.report)],
        cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (live := list(outs.dir.parent.glob(".prepared.*.tmp"))):
            assert run_a.poll() is None and time.monotonic() < deadline, "run A never created its temporary"
            time.sleep(0.002)
        time.sleep(0.1)  # A is now digesting sklearn's digits into that folder, for a second or more
        os.kill(run_a.pid, signal.SIGSTOP)

        hour_ago = time.time() - 3600
        stale = [outs.dir.parent / ".prepared.abcdefgh.tmp", outs.report.parent / ".data_report.json.k3j4h5g6.tmp",
                 outs.report.parent / ".data_report.md.zz_00000.tmp"]  # fmt: skip
        stale[0].mkdir(parents=True)
        outs.report.parent.mkdir(exist_ok=True)
        (stale[0] / "train_images.raw").write_bytes(b"\0" * 64)
        for p in stale[1:]:
            p.write_text("{half")
        precious = tmp_path / "precious"
        precious.mkdir()
        (precious / "keep.png").write_bytes(png(1))
        unrelated = [
            outs.dir.parent / "keep.txt",
            outs.dir.parent / ".prepared.short.tmp",  # not tempfile's 8 characters
            outs.dir.parent / ".raw.abcdefgh.tmp",  # another output's temporary
            outs.report.parent / ".samples.png.abcdefgh.tmp",  # another stage's
            outs.report.parent / ".data_report.json.ABCDEFGH.tmp",  # not tempfile's alphabet
        ]
        for p in unrelated:
            p.write_text("mine")
        link = outs.dir.parent / ".prepared.linklink.tmp"  # the right name, but a symlink: never followed
        link.symlink_to(precious)
        young = outs.dir.parent / ".prepared.young000.tmp"  # newer than the run: another run may own it
        young.mkdir()
        for p in [*stale, *unrelated, link]:
            os.utime(p, (hour_ago, hour_ago), follow_symlinks=False)
        os.utime(young, (time.time() + 3600,) * 2)

        prepare(cfg(src), outs.dir, outs.report)  # B, while A is alive (stopped) and holds its temporary
        assert all(p.exists() for p in live), "B removed the temporary of a live run"
        assert not [p for p in stale if p.exists()], "B left stale temporaries of its own outputs"

        os.kill(run_a.pid, signal.SIGKILL)
        run_a.wait(timeout=30)
    finally:
        if run_a.poll() is None:
            run_a.kill()
            run_a.wait()
    assert all(p.exists() for p in live)  # SIGKILL runs no clean-up: without the next run it stays forever

    prepare(cfg(src), outs.dir, outs.report)  # C
    assert not [p for p in live if p.exists()], "the killed run's temporary is still there"
    assert all(p.read_text() == "mine" for p in unrelated)
    assert link.is_symlink() and (precious / "keep.png").exists() and young.is_dir()
    assert load_split(outs.dir, "train").classes == ["cat", "dog"]


# --- 12: symlink loop ----------------------------------------------------------------------


def add_loops(src: Path) -> None:
    (src / "cat" / "loop.png").symlink_to("loop.png")
    (src / "dog" / "ping.png").symlink_to("pong.png")
    (src / "dog" / "pong.png").symlink_to("ping.png")


def test_symlink_loops_fail_the_run_by_name_and_keep_the_previous_outputs(tmp_path, previous):
    outs, before = previous
    src = good_folder(tmp_path / "src")
    add_loops(src)
    with pytest.raises(DataError) as err:
        prepare(cfg(src), outs.dir, outs.report)
    lines = str(err.value).splitlines()
    assert lines[0].startswith("3 of 13 input files are unusable")
    assert lines[1:] == [
        "  cat/loop.png: symlink loop (loop.png never reaches a file); refused",
        "  dog/ping.png: symlink loop (pong.png never reaches a file); refused",
        "  dog/pong.png: symlink loop (ping.png never reaches a file); refused",
    ]
    assert outs.snapshot() == before and not outs.temporaries()


def test_symlink_loops_are_skipped_and_reported(tmp_path):
    outs, src = Outputs(tmp_path), good_folder(tmp_path / "src")
    add_loops(src)
    res = prepare(cfg(src, on_error="skip"), outs.dir, outs.report)
    report = json.loads(outs.report.read_text())
    assert [(s["file"], s["kind"]) for s in report["skipped"]] == [
        ("cat/loop.png", "bad"), ("dog/ping.png", "bad"), ("dog/pong.png", "bad")
    ]  # fmt: skip
    assert all("symlink loop" in s["reason"] for s in report["skipped"])
    assert sum(res.counts.values()) == 10
    assert [r[0] for r in table_rows(outs.summary.read_text())] == ["cat/loop.png", "dog/ping.png", "dog/pong.png"]


# --- 13: class names that look like numbers --------------------------------------------------


def test_only_ascii_digits_order_classes_as_numbers(tmp_path):
    src = tmp_path / "src"
    for i, cls in enumerate(["²", "٣", "10", "2", "cat"]):  # superscript two, Arabic-Indic three
        (src / cls).mkdir(parents=True)
        for j in range(3):
            (src / cls / f"{j}.png").write_bytes(png(20 * i + j))
    prepare(cfg(src), tmp_path / "out", tmp_path / "r.json")
    assert load_split(tmp_path / "out", "train").classes == ["2", "10", "cat", "²", "٣"]


def test_numeric_class_names_that_tie_get_the_same_order_in_every_process():
    # '7' and '07' are both 7: before names broke the tie, set order (PYTHONHASHSEED) did,
    # so label indices could change from one run to the next
    code = "from pipeline.data.prepare import _class_order; print(_class_order(['7', '07', '10', '2']))"
    runs = [
        subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env={**child_env(), "PYTHONHASHSEED": str(seed)},
                         stdout=subprocess.PIPE, text=True)
        for seed in (0, 1)  # two seeds that order {'7', '07'} differently
    ]  # fmt: skip
    assert {r.communicate(timeout=60)[0].strip() for r in runs} == {"['2', '07', '7', '10']"}


def test_a_font_collection_index_must_be_ascii_digits(tmp_path):
    data = DataConfig(source="glyphs", image_size=16, glyphs=GlyphConfig(font_a="DejaVuSans.ttf#²"))
    with pytest.raises(DataError, match=r"data.glyphs.font_a: 'DejaVuSans.ttf#²': the part after '#' must be"):
        prepare(data, tmp_path / "out", tmp_path / "r.json")


# --- 14: file names that are not UTF-8; the three outputs commit together ----------------------


@pytest.mark.parametrize("mode", ["skip", "fail"])
def test_undecodable_file_names_are_reported_with_escapes(tmp_path, previous, mode):
    outs, _ = previous
    src = good_folder(tmp_path / "src")
    write_raw(src / "dog", b"dup\xfe.png", png(41))  # same pixels as cat/01.png: a duplicate, in both modes
    if mode == "skip":
        write_raw(src / "cat", b"bad\xff.png", b"not an image")
    prepare(cfg(src, on_error=mode), outs.dir, outs.report)
    report = json.loads(outs.report.read_text(encoding="utf-8"))
    expected = {"dog/dup\\xfe.png"} | ({"cat/bad\\xff.png"} if mode == "skip" else set())
    assert {s["file"] for s in report["skipped"]} == expected
    assert {r[0] for r in table_rows(outs.summary.read_text(encoding="utf-8"))} == expected
    assert len(json.loads((outs.dir / "manifest.json").read_text(encoding="utf-8"))["files"]) == 10
    assert not outs.temporaries()


def test_a_used_file_with_an_undecodable_name_is_in_the_manifest_as_text(tmp_path):
    src = good_folder(tmp_path / "src")
    write_raw(src / "cat", b"ok\xff.png", png(99))
    prepare(cfg(src), tmp_path / "out", tmp_path / "r.json")
    names = {f["name"] for f in json.loads((tmp_path / "out/manifest.json").read_text(encoding="utf-8"))["files"]}
    assert "cat/ok\\xff.png" in names


def test_a_report_that_cannot_be_written_leaves_all_three_outputs_as_they_were(tmp_path, previous):
    outs, before = previous
    src = good_folder(tmp_path / "src")
    (src / "cat" / "new.png").write_bytes(png(7))  # this run's dataset would differ
    for p in (outs.report, outs.summary, outs.thumbs):
        before.pop(str(p))
        p.unlink()
    outs.report.parent.rmdir()
    outs.report.parent.write_text("a file where the reports folder should be")
    with pytest.raises(OSError):
        prepare(cfg(src), outs.dir, outs.report)
    assert outs.snapshot() == before and not outs.temporaries()


def test_the_flow_exits_2_with_the_undecodable_name_escaped(tmp_path, monkeypatch, capsys, prefect_api):
    from flows.prepare import prepare_flow
    from flows.stage import run_stage

    good_folder(tmp_path / "src")
    write_raw(tmp_path / "src" / "cat", b"bad\xff.png", b"not an image")
    (tmp_path / "params.yaml").write_text("data:\n  source: folder\n  path: src\n  image_size: 8\n  workers: 1\n")
    monkeypatch.chdir(tmp_path)  # the flow writes data/prepared and reports/ under the working directory
    code = run_stage(prepare_flow, ["--params", "params.yaml"])  # what `python -m flows.prepare` exits with
    stderr = capsys.readouterr().err
    assert code == 2, stderr[-4000:]
    assert [line for line in stderr.splitlines() if line.startswith("ganpipe prepare: error:")] == [
        "ganpipe prepare: error: 1 of 11 input files are unusable (data.on_error=fail; "
        "set it to 'skip' to leave them out):"
    ]
    bad_line = "  cat/bad\\xff.png: not an image in a supported format (PNG, JPEG, WEBP, BMP, GIF, TIFF)"
    assert bad_line in stderr.splitlines()
    assert not (tmp_path / "data" / "prepared").exists() and not (tmp_path / "reports" / "data_report.json").exists()


# --- 15: file names that forge report rows or error lines ------------------------------------

FORGERS = ["evil\n| injected | row |.png", "tick`code`|pipe.png", "<b>bold<i>*_[x](y)~$&.png", "rtl\u202egnp.exe"]


def test_file_names_cannot_forge_report_rows(tmp_path):
    src = good_folder(tmp_path / "src")
    for name in FORGERS:
        (src / "cat" / name).write_bytes(b"not an image")
    (src / "cat" / "0\n|0.png").write_bytes(png(40))  # kept; cat/00.png, the same pixels, quotes its name
    prepare(cfg(src, on_error="skip"), tmp_path / "out", tmp_path / "r.json")
    skipped = json.loads((tmp_path / "r.json").read_text())["skipped"]
    assert sorted(s["file"] for s in skipped) == sorted(f"cat/{n}" for n in [*FORGERS, "00.png"])  # the real names
    rows = table_rows((tmp_path / "r.md").read_text())
    assert all(len(r) == 2 for r in rows) and len(rows) == len(FORGERS) + 1  # one row each, two cells each
    shown = dict(rows)
    assert "cat/evil\\n| injected | row |.png" in shown  # the newline as an escape, the pipes as text
    assert {"cat/tick`code`|pipe.png", "cat/<b>bold<i>*_[x](y)~$&.png", "cat/rtl\\u202egnp.exe"} <= set(shown)
    assert shown["cat/00.png"] == "exact duplicate of cat/0\\n|0.png (same decoded pixels); the first is kept"


def test_file_names_cannot_forge_error_lines(tmp_path, previous):
    outs, before = previous
    src = good_folder(tmp_path / "src")
    (src / "cat" / FORGERS[0]).write_bytes(b"not an image")
    with pytest.raises(DataError) as err:
        prepare(cfg(src), outs.dir, outs.report)
    assert str(err.value).splitlines()[1:] == [
        "  cat/evil\\n| injected | row |.png: not an image in a supported format (PNG, JPEG, WEBP, BMP, GIF, TIFF)"
    ]
    assert outs.snapshot() == before


def test_a_pair_partners_reason_escapes_the_name_it_quotes(tmp_path):
    src = tmp_path / "p"
    for side, base in (("A", 10), ("B", 100)):
        (src / side).mkdir(parents=True)
        for i in range(4):
            (src / side / f"{i}.png").write_bytes(png(base + i))
    (src / "A" / "x\n|y.png").write_bytes(png(99))
    (src / "B" / "x\n|y.png").write_bytes(b"")
    prepare(cfg(src, layout="paired", on_error="skip"), tmp_path / "out", tmp_path / "r.json")
    rows = table_rows((tmp_path / "r.md").read_text())
    assert [r[0] for r in rows] == ["B/x\\n|y.png", "A/x\\n|y.png"] and all(len(r) == 2 for r in rows)
    assert rows[1][1] == "its pair partner B/x\\n|y.png is unusable"


# --- 16: archive bombs and other unbounded reads -----------------------------------------------


def zeros_deflated(prefix: bytes, mib: int, suffix: bytes = b"") -> tuple[bytes, int, int]:
    """Raw deflate of prefix + mib MiB of zeros + suffix, built in well under a second: each
    full flush resets the compressor, so one compressed MiB of zeros can be repeated."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(prefix) + c.flush(zlib.Z_FULL_FLUSH)
    segment = c.compress(bytes(MIB)) + c.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(prefix)
    for _ in range(mib):
        crc = zlib.crc32(bytes(MIB), crc)
    deflated = head + segment * mib + c.compress(suffix) + c.flush()
    return deflated, zlib.crc32(suffix, crc), len(prefix) + mib * MIB + len(suffix)


def gzip_of(deflated: bytes, crc: int, size: int) -> bytes:
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + deflated + struct.pack("<II", crc, size & 0xFFFFFFFF)


def write_zip(path: Path, members: list[dict]) -> None:
    """A zip written field by field, so that a member can say what zipfile never would: a
    size that lies, an encryption flag, an unknown method, a name flagged UTF-8 that is not."""
    body, central = b"", b""
    for m in members:
        data = m.get("payload", m.get("data"))
        crc = m.get("crc", zlib.crc32(m.get("data", b"")))
        size = m.get("declared", m.get("size", len(data)))
        method, flags, name = m.get("method", 0), m.get("flags", 0), m["name"]
        fields = (flags, method, 0, 0x21, crc, len(data), size, len(name))
        central += struct.pack("<IHH4H3IH4HII", 0x02014B50, 20, 20, *fields, 0, 0, 0, 0, 0, len(body)) + name
        body += struct.pack("<IH4H3I2H", 0x04034B50, 20, *fields, 0) + name + data
    eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(body), 0)
    path.write_bytes(body + central + eocd)


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bombs")
    gib, crc, size = zeros_deflated(b"", 1024)
    huge = {"name": b"cat/huge.png", "payload": gib, "crc": crc, "size": size, "method": 8}
    write_zip(root / "honest.zip", [huge])
    write_zip(root / "lying.zip", [{**huge, "declared": 4096}])
    header = tarfile.TarInfo("cat/huge.png")
    header.size = 1 << 30
    (root / "huge.tar.gz").write_bytes(gzip_of(*zeros_deflated(header.tobuf(), 1024, bytes(1024))))
    (root / "idx").mkdir()
    idx_header = struct.pack(">HBB3I", 0, 8, 3, 5, 4, 4)  # says 5 images of 4x4, then 1 GiB follows
    (root / "idx" / "x-images-idx3-ubyte.gz").write_bytes(gzip_of(*zeros_deflated(idx_header, 1024)))
    (root / "idx" / "x-labels-idx1-ubyte.gz").write_bytes(gzip.compress(struct.pack(">HBBI", 0, 8, 1, 5) + bytes(5)))
    (root / "folder" / "cat").mkdir(parents=True)
    with open(root / "folder" / "cat" / "huge.png", "wb") as fh:
        fh.truncate(1 << 30)  # sparse: 1 GiB to read, nothing on disk
    return root


BOMBS = {
    # case: (data config, what the error must say); data.max_pixels is the default 64 M (528 MB limit)
    "zip member of 1 GiB": ({"path": "honest.zip"}, "cat/huge.png: 1,073,741,824 bytes, more than the 528,777,216"),
    "zip member that claims 4 kB": ({"path": "lying.zip"}, "cat/huge.png: cannot be extracted"),
    "tar.gz member of 1 GiB": ({"path": "huge.tar.gz"}, "cat/huge.png: 1,073,741,824 bytes, more than the"),
    "file of 1 GiB": ({"path": "folder"}, "cat/huge.png: 1,073,741,824 bytes, more than the"),
    "idx.gz that expands to 1 GiB": ({"source": "idx", "path": "idx"}, "header says (5, 4, 4) (80 bytes) but more"),
}


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="measures memory with Linux's VmHWM")
@pytest.mark.parametrize("case", list(BOMBS))
def test_a_bomb_is_refused_by_name_without_filling_memory(bombs, tmp_path, case):
    data, message = BOMBS[case]
    data = {"source": "folder", "image_size": 8, "workers": 1, **data, "path": str(bombs / data["path"])}
    res = run_child(data, tmp_path / "out", tmp_path / "r.json")
    assert res["rss"] < 400 * MIB, f"peak memory {res['rss'] / MIB:.0f} MiB"  # reading the member: > 1 GiB
    assert message in res["msg"]


# --- siblings: other archive faults that crashed instead of naming the file --------------------


def test_a_zip_whose_names_are_flagged_utf8_but_are_not_is_a_clear_error(tmp_path):
    write_zip(tmp_path / "a.zip", [{"name": b"cat/ok.png", "data": png(1)},
                                   {"name": b"cat/bad\xff.png", "data": png(2), "flags": 0x800}])  # fmt: skip
    with pytest.raises(DataError, match=r"a.zip': its zip directory cannot be read \('utf-8' codec"):
        prepare(cfg(tmp_path / "a.zip", on_error="skip"), tmp_path / "out", tmp_path / "r.json")


@pytest.mark.parametrize("mode", ["fail", "skip"])
def test_encrypted_or_unsupported_zip_members_are_bad_files(tmp_path, mode):
    members = [{"name": f"cat/{i}.png".encode(), "data": png(10 + i)} for i in range(4)]
    members += [{"name": b"cat/secret.png", "data": png(50), "flags": 0x1},
                {"name": b"cat/odd.png", "data": png(60), "method": 99}]  # fmt: skip
    write_zip(tmp_path / "a.zip", members)
    if mode == "fail":
        with pytest.raises(DataError) as err:
            prepare(cfg(tmp_path / "a.zip"), tmp_path / "out", tmp_path / "r.json")
        assert "cat/odd.png: cannot be extracted" in str(err.value)
        assert "cat/secret.png: cannot be extracted" in str(err.value) and "encrypted" in str(err.value)
        return
    prepare(cfg(tmp_path / "a.zip", on_error="skip"), tmp_path / "out", tmp_path / "r.json")
    skipped = json.loads((tmp_path / "r.json").read_text())["skipped"]
    assert [s["file"] for s in skipped] == ["cat/odd.png", "cat/secret.png"]


def test_a_truncated_tar_is_a_clear_error(tmp_path, previous):
    outs, before = previous
    src = good_folder(tmp_path / "src")
    with tarfile.open(tmp_path / "a.tar", "w") as tf:
        for f in sorted(src.rglob("*.png")):
            tf.add(f, f.relative_to(src).as_posix())
    data = (tmp_path / "a.tar").read_bytes()
    (tmp_path / "a.tar").write_bytes(data[: len(data) // 2 + 100])  # cut inside a member
    with pytest.raises(DataError, match=r"a.tar'.*cannot be read to the end"):
        prepare(cfg(tmp_path / "a.tar"), outs.dir, outs.report)
    assert outs.snapshot() == before


@pytest.mark.parametrize("mode", ["fail", "skip"])
def test_zip_members_that_share_a_name_are_refused_by_name(tmp_path, mode):
    # Before: both entries were read through getinfo(name), which returns the last: a valid image
    # was reported bad, or a garbage entry passed on_error=fail and one image was stored twice.
    import warnings
    import zipfile

    with warnings.catch_warnings(), zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        warnings.simplefilter("ignore", UserWarning)  # zipfile's "Duplicate name" warning
        for i in range(4):
            zf.writestr(f"cat/{i}.png", png(10 + i))
        zf.writestr("cat/dup.png", b"not an image")
        zf.writestr("cat/dup.png", png(99))
    reason = "2 members of the zip have this name: which one is meant is ambiguous (an extractor keeps one of them)"
    if mode == "fail":
        with pytest.raises(DataError) as err:
            prepare(cfg(tmp_path / "a.zip"), tmp_path / "out", tmp_path / "r.json")
        assert f"\n  cat/dup.png: {reason}; rejected" in str(err.value) and "2 of 6 input files" in str(err.value)
        return
    prepare(cfg(tmp_path / "a.zip", on_error="skip"), tmp_path / "out", tmp_path / "r.json")
    report = json.loads((tmp_path / "r.json").read_text())
    assert [(s["file"], s["reason"]) for s in report["skipped"]] == [("cat/dup.png", f"{reason}; rejected")] * 2
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert sorted(f["name"] for f in manifest["files"]) == [f"cat/{i}.png" for i in range(4)]


def test_tar_links_and_special_members_are_reported_as_a_folder_reports_them(tmp_path):
    # Before: a tar's symlinks (even to /etc/passwd), hard links, devices and FIFOs were dropped without a
    # report entry, so on_error=fail passed and files_seen left them out; a folder reported them as bad files.
    src = good_folder(tmp_path / "src")
    (tmp_path / "outside.png").write_bytes(png(7))
    os.symlink("/etc/passwd", src / "cat" / "passwd.png")
    os.symlink("../../outside.png", src / "cat" / "up.png")
    os.symlink("00.png", src / "cat" / "same.png")  # inside: read, so a duplicate of 00.png
    os.mkfifo(src / "cat" / "fifo.png")
    with tarfile.open(tmp_path / "a.tar", "w") as tf:
        for f in sorted(src.rglob("*")):
            tf.add(f, f.relative_to(src).as_posix(), recursive=False)
        for name, kind, link in (("cat/hard.png", tarfile.LNKTYPE, "cat/01.png"), ("cat/dev.png", tarfile.CHRTYPE, ""),
                                 ("cat/hard-out.png", tarfile.LNKTYPE, "../x.png")):  # fmt: skip
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, link
            tf.addfile(info)  # what a folder cannot hold without privileges
    reports = {}
    for source in ("src", "a.tar"):
        prepare(cfg(tmp_path / source, on_error="skip"), tmp_path / f"out-{source}", tmp_path / f"{source}.json")
        reports[source] = json.loads((tmp_path / f"{source}.json").read_text())
    skipped = {k: {(s["file"], s["reason"]) for s in r["skipped"]} for k, r in reports.items()}
    assert skipped["src"] == {
        ("cat/passwd.png", "symlink to /etc/passwd points outside data.path; refused"),
        ("cat/up.png", "symlink to ../../outside.png points outside data.path; refused"),
        ("cat/fifo.png", "not a regular file (device, pipe or socket)"),
        ("cat/same.png", "exact duplicate of cat/00.png (same decoded pixels); the first is kept"),
    }
    assert skipped["a.tar"] == skipped["src"] | {
        ("cat/hard.png", "exact duplicate of cat/01.png (same decoded pixels); the first is kept"),
        ("cat/dev.png", "not a regular file (device, pipe or socket)"),
        ("cat/hard-out.png", "hard link to ../x.png points outside data.path; refused"),
    }
    assert reports["a.tar"]["files_seen"] == reports["src"]["files_seen"] + 3 == 17
    with pytest.raises(DataError) as err:  # and on_error=fail stops on them
        prepare(cfg(tmp_path / "a.tar"), tmp_path / "out-fail", tmp_path / "fail.json")
    for name in ("passwd", "up", "fifo", "dev", "hard-out"):
        assert f"\n  cat/{name}.png: " in str(err.value)
