import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from PIL import Image

from flows.cli import main, overrides


def test_overlay_flattens_to_dvc_set_param_arguments_with_typed_values():
    overlay = {"model": {"conditional": True, "d_norm": "none"}, "train": {"betas": [0.0, 0.9], "lr_d": 4e-4}}
    assert overrides(overlay) == [
        "++model.conditional=true",
        '++model.d_norm="none"',
        "++train.betas=[0.0,0.9]",
        "++train.lr_d=0.0004",
    ]


def test_shipped_overlays_are_valid_on_top_of_params_yaml():
    import yaml

    from flows.cli import merge_overlay
    from pipeline.config import load_params, parse_params

    base = load_params(REPO / "params.yaml").model_dump(mode="json")
    names = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))
    assert names == ["conditional-digits.yaml", "digits-10pct-ada.yaml", "digits-10pct-diffaugment.yaml",
                     "digits-10pct.yaml", "emoji-dcgan.yaml", "emoji-stylegan2.yaml", "fashion-mnist.yaml",
                     "glyphs-cyclegan.yaml", "glyphs-pix2pix.yaml", "hinge-sn.yaml", "inception.yaml",
                     "r3gan-digits.yaml", "stacked-digits.yaml", "stylegan2-digits.yaml", "wgan-gp.yaml"]  # fmt: skip
    for name in names:
        overlay = yaml.safe_load((REPO / "configs" / name).read_text())
        parse_params(merge_overlay(base, overlay), name)  # raises on any bad key or combination


def test_exp_refuses_an_invalid_overlay_before_running_anything(tmp_path):
    import shutil

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")  # never the repository's own file
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  loss: wgan-gp\n")  # wgan-gp with the default batch-norm D
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PYTHONPATH"] = str(REPO)
    res = subprocess.run([sys.executable, "-m", "flows.cli", "exp", str(bad)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 2
    assert "bad.yaml" in res.stderr and "set model.d_norm: none" in res.stderr
    assert "Prefect API" not in res.stderr  # refused before a server was started


def test_the_existing_experiment_check_leaves_a_missing_repository_or_commit_to_dvc(tmp_path, monkeypatch):
    from flows.cli import _experiment_exists

    monkeypatch.chdir(tmp_path)
    assert _experiment_exists("x") is False  # not a DVC repository: `dvc exp run` says so itself
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], check=True)
    assert _experiment_exists("x") is False  # no commit yet: the same


def one_stage_repo(root: Path, params: str):
    """A git + DVC repository in `root` with the project's params.yaml and one stage that copies it
    (depending on `params`, e.g. "seed, train.steps"); returns its `git(*args)` (stdout)."""
    import shutil

    def git(*args):
        return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout

    git("init", "-q")
    git("config", "user.email", "t@example.com")
    git("config", "user.name", "t")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    (root / "dvc.yaml").write_text("stages:\n  s:\n    cmd: cp params.yaml out.yaml\n"
                                   f"    params: [{params}]\n    outs: [out.yaml]\n")  # fmt: skip
    return git


def test_exp_lays_its_overlay_on_the_committed_params_not_on_the_last_experiments(tmp_path, prefect_api):
    """`dvc exp run` leaves an experiment's params in params.yaml; the next overlay must not inherit them."""
    import yaml

    git = one_stage_repo(tmp_path, "seed, train.steps")
    (tmp_path / "steps.yaml").write_text("train:\n  steps: 7\n")
    (tmp_path / "seed.yaml").write_text("seed: 3\ntrain:\n  steps: 9\n")
    git("add", "-A")
    git("commit", "-qm", "init")
    committed = (tmp_path / "params.yaml").read_bytes()
    subprocess.run([sys.executable, "-m", "dvc", "exp", "run", "-q", "-S", "seed=5", "--name", "first"], cwd=tmp_path,
                   check=True, capture_output=True)  # fmt: skip
    assert yaml.safe_load((tmp_path / "params.yaml").read_text())["seed"] == 5  # what DVC leaves behind
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": prefect_api}
    run = [sys.executable, "-m", "flows.cli", "exp", "steps.yaml"]
    res = subprocess.run(run, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "held experiment 'first'" in res.stderr
    refs = {r.rsplit("/", 1)[1]: r for r in git("for-each-ref", "--format=%(refname)", "refs/exps").split()}
    second = yaml.safe_load(git("show", f"{refs['steps']}:params.yaml"))
    assert (second["seed"], second["train"]["steps"]) == (0, 7)  # the commit's seed, the overlay's steps
    # several overlays: each laid on the ones before it, the experiment named after all of them
    res = subprocess.run([*run, "seed.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    refs = {r.rsplit("/", 1)[1]: r for r in git("for-each-ref", "--format=%(refname)", "refs/exps").split()}
    both = yaml.safe_load(git("show", f"{refs['steps-seed']}:params.yaml"))
    assert (both["seed"], both["train"]["steps"]) == (3, 9)  # the later overlay wins where both set a key
    # an edit of the user's is refused, untouched, and nothing runs
    (tmp_path / "params.yaml").write_bytes(committed.replace(b"seed: 0", b"seed: 9"))
    res = subprocess.run([*run, "--name", "third"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "params.yaml: has changes that are not committed" in res.stderr
    assert b"seed: 9" in (tmp_path / "params.yaml").read_bytes() and "third" not in git("for-each-ref", "refs/exps")


def test_exp_help_says_where_its_other_arguments_go(capsys):
    with pytest.raises(SystemExit):
        main(["exp", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "Other arguments go to dvc exp run: -S key=value (checked like the overlay, each sweep point too), -f" in out


def test_unknown_options_are_errors_except_where_they_go_to_dvc():
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--bogus"])
    assert exc.value.code == 2


def test_preview_augment_shows_originals_beside_augmented_copies(prepared_digits, tmp_path):
    import numpy as np
    from PIL import Image

    out = tmp_path / "aug.png"
    code = main(["preview-augment", "--params", str(REPO / "params.yaml"), "--prepared", str(prepared_digits),
                 "--policy", "translation,cutout", "-n", "8", "--nrow", "4", "--out", str(out)])  # fmt: skip
    assert code == 0
    img = np.asarray(Image.open(out).convert("L"))
    third = img.shape[1] // 3
    original, augmented = img[:, :third], img[:, third : 2 * third]
    assert img.shape[0] == 3 * (2 * 18 + 2) and not np.array_equal(original, augmented)
    bad = main(["preview-augment", "--params", str(REPO / "params.yaml"), "--policy", "blur",
                "--prepared", str(prepared_digits), "--out", str(tmp_path / "never.png")])  # fmt: skip
    assert bad == 2 and not (tmp_path / "never.png").exists()


def test_pipeline_summary_reads_both_export_formats_and_adds_latency_from_the_details_file():
    from flows.export import split_details
    from flows.pipeline import summary_markdown

    lat = {"onnxruntime": 1.0, "torch": 2.0}
    one = {"max_abs_diff": 1e-7, "tolerance": 1e-4, "parity_passed": True, "providers": ["CPUExecutionProvider"],
           "latency_ms_batch16": lat}  # fmt: skip
    quality, timing = split_details({**one, "max_abs_diff_per_batch": {"batch_1": 1e-7}})
    assert set(quality) == {"max_abs_diff", "tolerance", "parity_passed", "providers"}
    assert timing == {"latency_ms_batch16": lat, "max_abs_diff_per_batch": {"batch_1": 1e-7}}
    assert summary_markdown({"export": quality}).endswith("(tolerance 0.0001, passed)")  # no latency file: none
    line = summary_markdown({"export": quality}, timing)
    assert "ONNX parity: max |onnx - torch| = 1.00e-07" in line and "onnxruntime 1.0 ms, torch 2.0 ms" in line
    both = {**one, "directions": {"AB": one, "BA": {**one, "parity_passed": False}}}
    quality, timing = split_details(both)
    assert "latency" not in json.dumps(quality) and set(timing["directions"]) == {"AB", "BA"}
    text = summary_markdown({"export": quality}, timing)
    assert "ONNX parity AB:" in text and "ONNX parity BA:" in text and "FAILED" in text
    assert text.count("onnxruntime 1.0 ms") == 2


def test_pipeline_summary_of_eval_json_without_its_details_names_the_numbers_and_what_brings_the_rest():
    """A clone has metrics/eval.json from git but eval_details.json only from DVC: `ganpipe repro prepare` there
    summarises the compared numbers instead of failing on the report's missing anchors."""
    from flows.pipeline import summary_markdown

    text = summary_markdown({"eval": {"fid": 1.0028, "fid_vs_floor": 2.15, "precision": 0.9662}})
    assert text == ("metrics/eval.json: fid 1.0028, fid_vs_floor 2.15, precision 0.9662 (metrics/eval_details.json "
                    "is not in this workspace: `dvc pull` or a run of the evaluate stage brings it)")  # fmt: skip


# -- argument ranges and output paths: one-line errors, never a traceback --------------------------------------------


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from test_registry import tiny_onnx

    root = tmp_path_factory.mktemp("tiny-models")
    (root / "generator.onnx").write_bytes(tiny_onnx("generate"))
    (root / "translator.onnx").write_bytes(tiny_onnx("translate"))
    return root


PSI_RANGE = "from -100 to 100 (1: no truncation, 0: the average image)"
RANGE_CASES = [
    (["generate", "--nrow", "-1"], "argument --nrow: must be at least 1, got -1"),
    (["generate", "--nrow", "0"], "argument --nrow: must be at least 1, got 0"),
    (["generate", "--seed", "-1"], "argument --seed: must be between 0 and 9223372036854775807, got -1"),
    (["generate", "--scale", "0"], "argument --scale: must be at least 1, got 0"),
    (["generate", "-n", "0"], "argument -n: must be at least 1, got 0"),
    (["generate", "-n", "many"], "argument -n: must be a whole number, got 'many'"),
    (["generate", "--psi", "nan"], f"argument --psi/--trunc: must be a finite number {PSI_RANGE}, got nan"),
    (["generate", "--psi=-inf"], f"argument --psi/--trunc: must be a finite number {PSI_RANGE}, got -inf"),
    (["generate", "--psi", "1e9"], f"argument --psi/--trunc: must be a finite number {PSI_RANGE}, got 1e9"),
    (["generate", "--psi", "half"], "argument --psi/--trunc: must be a number, got 'half'"),
    (["translate", "a", "b", "--max-pixels", "0"], "argument --max-pixels: must be at least 1, got 0"),
    (["serve", "--port", "99999"], "argument --port: must be between 0 and 65535, got 99999"),
    (["serve", "--port", "-1"], "argument --port: must be between 0 and 65535, got -1"),
    (["serve", "--max-n", "0"], "argument --max-n: must be at least 1, got 0"),
    (["serve", "--max-upload-bytes", "0"], "argument --max-upload-bytes: must be at least 1, got 0"),
    (["serve", "--max-pixels", "-5"], "argument --max-pixels: must be at least 1, got -5"),
    (["serve", "--max-concurrency", "0"], "argument --max-concurrency: must be at least 1, got 0"),
    (["serve", "--max-queue", "-1"], "argument --max-queue: must be at least 0, got -1"),
    (["preview-augment", "-n", "0"], "argument -n: must be at least 1, got 0"),
    (["preview-augment", "--nrow", "0"], "argument --nrow: must be at least 1, got 0"),
    (["preview-augment", "--seed", "-3"], "argument --seed: must be between 0 and 9223372036854775807, got -3"),
    (["retrain", "--margin", "-0.1"], "argument --margin: must be at least 0 and below 1 (0.02 = 2%), got -0.1"),
    (["retrain", "--margin", "nan"], "argument --margin: must be at least 0 and below 1 (0.02 = 2%), got nan"),
    (["schedule", "--margin", "1.5"], "argument --margin: must be at least 0 and below 1 (0.02 = 2%), got 1.5"),
]


@pytest.mark.parametrize("argv, error", RANGE_CASES, ids=[" ".join(argv) for argv, _ in RANGE_CASES])
def test_out_of_range_numbers_are_refused_when_parsing_naming_the_flag(argv, error, capsys):
    # Before: accepted, then a traceback (--nrow -1, --seed -1, --port 99999), a silent no-op
    # (--scale 0), a service refusing every request (--max-n 0), or a Prefect server started first.
    from flows.cli import build_parser

    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"ganpipe {argv[0]}: error: {error}" and "Traceback" not in err


def test_port_zero_still_means_any_free_port():
    from flows.cli import build_parser

    assert build_parser().parse_args(["serve", "--port", "0"]).port == 0  # what the serve tests rely on


def test_serve_limits_given_as_flags_reach_the_service(tiny_models):
    import contextlib
    import queue
    import re
    import signal
    import threading
    import time

    import httpx

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("GANPIPE_SERVE_TOKEN", None)
    cmd = [sys.executable, "-m", "flows.cli", "serve", "--model", str(tiny_models / "generator.onnx"), "--port", "0",
           "--max-n", "7", "--max-concurrency", "3", "--max-queue", "0"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    try:
        address, seen, deadline = None, [], time.monotonic() + 60
        while address is None:
            assert time.monotonic() < deadline and (proc.poll() is None or not lines.empty()), "".join(seen)
            with contextlib.suppress(queue.Empty):
                seen.append(lines.get(timeout=0.2))
                address = re.search(r"Uvicorn running on (http://[\d.]+:\d+)", seen[-1])
        limits = httpx.get(f"{address.group(1)}/v1/model").json()["limits"]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    assert limits["max_n"] == 7 and limits["max_concurrency"] == 3 and limits["max_queue"] == 0
    assert limits["max_pixels"] == 1024 * 1024  # left out: the service's default


def test_unwritable_outputs_are_one_line_errors_naming_the_path(tiny_models, tmp_path, capsys):
    # Before: FileNotFoundError tracebacks from mkdir.
    gen, tr = str(tiny_models / "generator.onnx"), str(tiny_models / "translator.onnx")
    assert main(["generate", "--model", gen, "--out", "/proc/x/a.png"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ganpipe generate: error: /proc/x/a.png: cannot write") and err.count("\n") == 1
    src = tmp_path / "in"
    src.mkdir()
    Image.new("L", (16, 16)).save(src / "a.png")
    assert main(["translate", "--model", tr, str(src), "/proc/x"]) == 2
    err = capsys.readouterr().err
    assert err == "ganpipe translate: error: /proc/x: cannot create the output folder: No such file or directory\n"
    assert main(["translate", "--model", tr, str(src / "a.png"), "/proc/x/y.png"]) == 2
    assert capsys.readouterr().err.startswith("ganpipe translate: error: /proc/x: cannot create the output folder")


def test_an_output_that_is_a_folder_is_refused_not_deleted(tiny_models, tmp_path, capsys):
    # Before: the atomic writer replaced the folder with the PNG, deleting everything in it.
    keep = tmp_path / "results"
    keep.mkdir()
    (keep / "precious.txt").write_text("a week of work")
    assert main(["generate", "--model", str(tiny_models / "generator.onnx"), "--out", str(keep)]) == 2
    err = capsys.readouterr().err
    assert err == f"ganpipe generate: error: {keep}: is a folder; --out takes the file to write\n"
    assert (keep / "precious.txt").read_text() == "a week of work"
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    Image.new("L", (16, 16)).save(src / "a.png")
    Image.new("L", (16, 16)).save(src / "b.png")
    (out / "a.png").mkdir(parents=True)  # where a.png's translation would go
    (out / "a.png" / "precious.txt").write_text("keep me")
    assert main(["translate", "--model", str(tiny_models / "translator.onnx"), str(src), str(out)]) == 1
    err = capsys.readouterr().err
    assert f"skipped {src / 'a.png'}: its output {out / 'a.png'} is a folder" in err and "Traceback" not in err
    assert (out / "a.png" / "precious.txt").read_text() == "keep me" and (out / "b.png").is_file()


def test_psi_on_a_model_without_truncation_is_one_line_before_generating(tiny_models, tmp_path, capsys):
    gen = str(tiny_models / "generator.onnx")  # no ganpipe.inputs, as files exported before truncation
    assert main(["generate", "--model", gen, "--psi", "0.7", "--out", str(tmp_path / "g.png")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == (f"ganpipe generate: error: --psi: {gen}: this model (arch tiny) has no truncation "
                                 "input; --psi applies to generators such as stylegan2\n")  # fmt: skip
    assert not (tmp_path / "g.png").exists()
    assert main(["generate", "--model", gen, "--out", str(tmp_path / "g.png")]) == 0  # without --psi: as before


def test_a_huge_grid_is_refused_before_generating(tiny_models, tmp_path):
    # Before: --scale 100000 went on to allocate a 2,000,000-pixel-square image (MemoryError here
    # under a 4 GB address-space limit; without one, the machine's memory).
    import resource

    def limit_memory():
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "flows.cli", "generate", "--model",
                          str(tiny_models / "generator.onnx"), "-n", "1", "--scale", "100000", "--out",
                          str(tmp_path / "g.png")], cwd=tmp_path, env=env, capture_output=True, text=True,
                         preexec_fn=limit_memory, timeout=120)  # fmt: skip
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr == ("ganpipe generate: error: -n 1, --nrow 1, --scale 100000: the grid would be 2000000x2000000"
                          " = 4000000000000 pixels > 536870912; lower them\n")  # fmt: skip
    assert not (tmp_path / "g.png").exists()


# -- translate: pixel limits, a file at a time ------------------------------------------------------------------------


def png_of_zeros(path: Path, width: int, height: int, bit_depth: int = 8) -> Path:
    """A valid greyscale PNG, written row by row: a huge image (or a bomb) costs no memory to make."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row, comp = b"\0" * (1 + (width * bit_depth + 7) // 8), zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_translate_skips_bombs_and_oversized_images_and_translates_every_other_file(tiny_models, tmp_path, capsys):
    # Before: the decompression bomb ended the whole run with a traceback after the files sorted before it.
    src, out = tmp_path / "in", tmp_path / "out"
    (src / "sub").mkdir(parents=True)
    good = ["a.png", "b.jpg", "d.bmp", "f.gif", "sub/g.png"]
    for i, name in enumerate(good):
        Image.new("L", (16 + 4 * i, 16), 40 * i).save(src / name)
    png_of_zeros(src / "c_bomb.png", 20000, 20000, bit_depth=1)  # 400 M pixels in 50 KB: Pillow's own bomb error
    png_of_zeros(src / "e_large.png", 1100, 1000)  # 1.1 M pixels: over the default --max-pixels
    (src / "notes.png").write_text("not an image")
    rc = main(["translate", "--model", str(tiny_models / "translator.onnx"), str(src), str(out)])
    captured = capsys.readouterr()
    assert rc == 1 and "Traceback" not in captured.err and "Warning" not in captured.err
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == ["a.png", "b.jpg", "d.bmp", "f.png", "sub/g.png"]  # .gif is written as PNG
    skipped = sorted(line for line in captured.err.splitlines() if line.startswith("skipped "))
    assert [line.split(":")[0] for line in skipped] == [f"skipped {src / n}" for n in ("c_bomb.png", "e_large.png",
                                                                                        "notes.png")]  # fmt: skip
    assert "exceeds limit" in skipped[0] and "1100x1000 = 1100000 pixels > 1048576" in skipped[1]
    assert "translated 5 of 8 file(s)" in captured.out and "3 skipped" in captured.out
    assert main(["translate", "--model", str(tiny_models / "translator.onnx"), str(src / "a.png"),
                 str(tmp_path / "small.png"), "--max-pixels", "100"]) == 1  # fmt: skip
    assert "16x16 = 256 pixels > 100" in capsys.readouterr().err and not (tmp_path / "small.png").exists()
    assert main(["translate", "--model", str(tiny_models / "translator.onnx"), str(src / "a.png"),
                 str(tmp_path / "one.png")]) == 0  # fmt: skip
    assert Image.open(tmp_path / "one.png").size == (16, 16)


def test_translate_refuses_a_huge_image_from_its_header_without_decoding_it(tiny_models, tmp_path):
    # Before: a 10000x10000 PNG was decoded in full (100 MB more resident here; GBs in colour) and only then refused.
    # The child reports its own VmHWM: getrusage's peak would include this (large) process's, inherited at fork.
    report = "import sys; from flows.cli import main; code = main(sys.argv[1:]); " \
             "print(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1], " \
             "file=open(sys.argv[-1] + '.peak', 'w')); sys.exit(code)"  # fmt: skip

    def run(image: Path) -> tuple[int, float, str]:
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
        out = tmp_path / f"{image.stem}-out.png"
        model = str(tiny_models / "translator.onnx")
        res = subprocess.run([sys.executable, "-c", report, "translate", "--model", model, str(image), str(out)],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
        return res.returncode, int(Path(f"{out}.peak").read_text()) / 1024, res.stderr

    small = tmp_path / "small.png"
    Image.new("L", (16, 16)).save(small)
    huge = png_of_zeros(tmp_path / "huge.png", 10000, 10000)
    small_code, small_peak, _ = run(small)
    code, peak, err = run(huge)
    assert small_code == 0
    assert peak < small_peak + 50, f"{peak:.0f} MB resident to refuse it, {small_peak:.0f} MB to translate 16x16"
    assert code == 1 and err == f"skipped {huge}: 10000x10000 = 100000000 pixels > 1048576 (decompression-bomb guard)\n"


def test_version_and_help_show_what_a_user_needs(capsys):
    from importlib.metadata import version

    from flows.cli import main
    from pipeline.serve.app import ServeConfig

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"ganpipe {version('ganpipe')}"
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 8000)" in text and "(default: auto)" in text and "(default: registry)" in text
    cfg = ServeConfig.__dataclass_fields__  # the service's own defaults, quoted in the help
    assert f"(default {cfg['max_concurrency'].default})" in text and f"(default {cfg['max_queue'].default})" in text
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "the params file to validate and run with (default: params.yaml)" in text


def test_every_form_of_set_param_dvc_accepts_is_found():
    from flows.cli import set_params

    args = ["-S", "train.steps=3", "--set-param=seed=2", "-Sdata.image_size=16", "--force", "--set-param", "a.b=1"]
    assert set_params(args) == ["train.steps=3", "seed=2", "data.image_size=16", "a.b=1"]


def test_set_params_are_validated_as_dvc_would_apply_them_each_sweep_point_and_file(tmp_path, monkeypatch):
    import pytest

    from flows.cli import validate_set_params
    from pipeline.config import ConfigError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("seed: 0\ntrain:\n  steps: 10\n")
    validate_set_params(["train.steps=20", "++train.lr_g=0.001", "other.yaml:x=abc"])  # another file: DVC's to check
    assert (tmp_path / "params.yaml").read_text() == "seed: 0\ntrain:\n  steps: 10\n"  # validated on a copy
    with pytest.raises(ConfigError, match=r"params.yaml with -S train.steps=abc: .*\n  train.steps: Input should be"):
        validate_set_params(["train.steps=abc"])
    with pytest.raises(ConfigError, match=r"-S train.steps=-1 .*\n  train.steps: Input should be greater"):
        validate_set_params(["train.steps=5,-1", "seed=1"])  # the second point of the sweep is bad
    with pytest.raises(ConfigError, match=r"^-S train.stepz=1: .*Could not override 'train.stepz'"):
        validate_set_params(["train.stepz=1"])
    with pytest.raises(ConfigError, match=r"^-S train.steps=\[: "):
        validate_set_params(["train.steps=["])


def test_repro_repairs_the_stage_lock_file_a_full_disk_left_cut_short(tmp_path, prefect_api):
    """DVC rewrites .dvc/tmp/rwlock in place; a disk that fills up while it does leaves it cut short,
    and every later DVC command fails ("JSON structure is corrupted") until it is deleted by hand."""
    git = one_stage_repo(tmp_path, "seed")
    git("add", "-A")
    git("commit", "-qm", "init")
    rwlock = tmp_path / ".dvc" / "tmp" / "rwlock"
    rwlock.parent.mkdir(exist_ok=True)
    rwlock.write_text('{"write": {"out.yaml": {"pid": 1')  # as a full disk cuts DVC's json.dump short
    env = {**os.environ, "PYTHONPATH": str(REPO), "PREFECT_API_URL": prefect_api}
    dvc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=tmp_path, capture_output=True, text=True)
    assert dvc.returncode != 0 and "JSON structure is corrupted" in dvc.stderr  # DVC's own behaviour
    res = subprocess.run([sys.executable, "-m", "flows.cli", "repro"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert [line for line in res.stderr.splitlines() if "rwlock" in line] == [
        f"ganpipe: {Path('.dvc/tmp/rwlock')}: DVC's stage-lock file was unreadable (32 bytes; DVC rewrites it in "
        "place, so a full disk leaves it cut short) and every DVC command would fail on it: removed it (no stage "
        "holds a lock)"
    ]
    assert (tmp_path / "out.yaml").read_bytes() == (tmp_path / "params.yaml").read_bytes()  # the stage ran
    json.loads(rwlock.read_text())  # DVC wrote a readable one again
    again = subprocess.run([sys.executable, "-m", "flows.cli", "repro"], cwd=tmp_path, env=env, capture_output=True,
                           text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0 and "rwlock" not in again.stderr  # a readable file is left alone


def test_serve_flags_left_out_keep_serveconfigs_defaults_which_its_help_shows(capsys):
    from flows.cli import build_parser
    from flows.cli.common import given, resolve
    from pipeline.serve.app import ServeConfig

    args = build_parser().parse_args(["serve"])
    for name in ("registry", "direction", "max_n", "max_upload_bytes", "max_pixels", "max_concurrency", "max_queue",
                 "reload_check_s", "device", "model_name"):  # fmt: skip
        assert not given(getattr(args, name)) and resolve(getattr(args, name)) == getattr(ServeConfig, name), name
    assert build_parser().parse_args(["serve", "--max-n", "7"]).max_n == 7
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert f"(default: {ServeConfig.max_n})" in shown and f"(default {ServeConfig.max_queue})" in shown


def test_parsing_a_command_imports_neither_torch_nor_the_service():
    # `ganpipe generate` / `translate` need only onnxruntime, NumPy and Pillow; the parser imports none of the
    # heavy modules, not even for the defaults that serve and translate take from the library
    commands = [["generate"], ["interpolate", "--seeds", "0,1"], ["translate", "a", "b"], ["serve"], ["train"]]
    code = ("import sys; from flows.cli import build_parser; p = build_parser(); "
            f"[p.parse_args(a) for a in {commands!r}]; "
            "print(sorted(m for m in ('torch', 'fastapi', 'onnxruntime', 'prefect') if m in sys.modules))")  # fmt: skip
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"
