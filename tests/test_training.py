import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_params

from pipeline.models.artifact import load_generator
from pipeline.training.checkpoint import checkpoint_files
from pipeline.training.runner import TrainingDiverged, TrainPaths, fingerprint, train


def paths(root, prepared) -> TrainPaths:
    return TrainPaths(prepared=prepared, checkpoints=root / "ckpt", generator=root / "generator.pt",
                      live_dir=root / "dvclive", samples=root / "samples.png")  # fmt: skip


def weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_training_writes_generator_samples_checkpoints_and_dvclive(prepared_digits, tmp_path):
    p = paths(tmp_path, prepared_digits)
    res = train(tiny_params(), p, progress=False)
    assert res.steps == 12 and res.resumed_from == 0
    g, spec = load_generator(p.generator)
    assert spec["image_size"] == 16 and spec["num_classes"] == 0 and not g.training
    # one folder per parameter set, named by the checkpoint fingerprint
    assert res.checkpoints == p.checkpoints / fingerprint(tiny_params(), prepared_digits)
    assert [c.name for c in checkpoint_files(res.checkpoints)] == ["ckpt_0000012.pt", "ckpt_0000006.pt"]
    assert (p.live_dir / "plots/metrics/train/loss_D.tsv").read_text().count("\n") == 1 + 12 // 3
    assert sorted(f.name for f in (p.live_dir / "plots/images/samples").iterdir()) == ["0000006.png", "0000012.png"]
    assert p.samples.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def assert_same_logs(a: Path, b: Path) -> None:
    """Two DVCLive folders hold the same curves, grids and summary, timings aside."""
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    assert "plots/metrics/train/loss_D.tsv" in files and "metrics.json" in files
    for rel in files:
        if rel.endswith("images_per_s.tsv"):  # the machine's speed, not the model's
            assert len((a / rel).read_text().splitlines()) == len((b / rel).read_text().splitlines())
        elif rel == "metrics.json":
            summary_a, summary_b = (json.loads((d / rel).read_text()) for d in (a, b))
            summary_a["train"].pop("images_per_s"), summary_b["train"].pop("images_per_s")
            assert summary_a == summary_b
        else:
            assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel


def test_resume_after_interruption_matches_an_uninterrupted_run_bit_for_bit(prepared_digits, tmp_path):
    full = paths(tmp_path / "full", prepared_digits)
    full_res = train(tiny_params(), full, progress=False)
    # "crash" after step 6: keep only the step-6 checkpoint, then rerun with the same settings,
    # the logs removed first as DVC removes a stage's outputs before running it
    part = paths(tmp_path / "part", prepared_digits)
    train(tiny_params(train={"steps": 6}), part, progress=False)
    shutil.rmtree(part.live_dir)
    res = train(tiny_params(), part, progress=False)
    assert res.resumed_from == 6
    assert_same_weights(weights(full.generator), weights(part.generator))
    assert full.generator.read_bytes() == part.generator.read_bytes()  # what DVC hashes, too
    full_ckpt = torch.load(full_res.checkpoints / "ckpt_0000012.pt", weights_only=True)
    part_ckpt = torch.load(res.checkpoints / "ckpt_0000012.pt", weights_only=True)
    assert_same_weights(full_ckpt["objective"]["D"], part_ckpt["objective"]["D"])
    # the curves continue too, rebuilt from the checkpoint: same rows, same values, no step twice
    assert_same_logs(full.live_dir, part.live_dir)


def test_a_run_whose_outputs_were_removed_after_its_last_checkpoint_rebuilds_them_without_training(
    prepared_digits, tmp_path
):
    p = paths(tmp_path, prepared_digits)
    train(tiny_params(), p, progress=False)
    before = {f: f.read_bytes() for f in (p.generator, p.samples)}
    shutil.copytree(p.live_dir, tmp_path / "logs_before")
    for f in before:
        f.unlink()
    shutil.rmtree(p.live_dir)
    res = train(tiny_params(), p, progress=False)
    assert res.resumed_from == 12  # no step trained
    assert {f: f.read_bytes() for f in before} == before
    assert_same_logs(tmp_path / "logs_before", p.live_dir)


def test_crash_after_the_last_checkpoint_drops_the_logs_written_after_it(prepared_digits, tmp_path):
    full = paths(tmp_path / "full", prepared_digits)
    train(tiny_params(), full, progress=False)
    # killed after logging steps 7-12 but before the step-12 checkpoint landed
    crashed = paths(tmp_path / "crashed", prepared_digits)
    res = train(tiny_params(), crashed, progress=False)
    (res.checkpoints / "ckpt_0000012.pt").unlink()
    crashed.generator.unlink()
    res = train(tiny_params(), crashed, progress=False)
    assert res.resumed_from == 6
    assert_same_weights(weights(full.generator), weights(crashed.generator))
    assert_same_logs(full.live_dir, crashed.live_dir)
    grids = sorted(p.name for p in (crashed.live_dir / "plots/images/samples").iterdir())
    assert grids == ["0000006.png", "0000012.png"]


def test_changed_settings_never_resume_from_old_checkpoints(prepared_digits, tmp_path):
    p = paths(tmp_path, prepared_digits)
    first = train(tiny_params(), p, progress=False)
    res = train(tiny_params(train={"lr_g": 1e-3}), p, progress=False)
    assert res.resumed_from == 0
    # two parameter sets, two folders: going back to the first finds its checkpoints untouched
    fresh = paths(tmp_path / "fresh", prepared_digits)
    train(tiny_params(train={"lr_g": 1e-3}), fresh, progress=False)
    assert_same_weights(weights(p.generator), weights(fresh.generator))
    assert res.checkpoints != first.checkpoints and len(checkpoint_files(first.checkpoints)) == 2
    assert train(tiny_params(), p, progress=False).resumed_from == 12


def test_shorter_run_resumes_from_a_longer_runs_checkpoint_and_keeps_the_later_ones(prepared_digits, tmp_path):
    p = paths(tmp_path, prepared_digits)
    train(tiny_params(), p, progress=False)  # 12 steps: checkpoints at 6 and 12
    res = train(tiny_params(train={"steps": 6}), p, progress=False)
    assert res.resumed_from == 6  # the valid step-6 checkpoint, not a restart from 0
    assert [c.name for c in checkpoint_files(res.checkpoints)] == ["ckpt_0000012.pt", "ckpt_0000006.pt"]
    short = paths(tmp_path / "short", prepared_digits)
    train(tiny_params(train={"steps": 6}), short, progress=False)
    assert p.generator.read_bytes() == short.generator.read_bytes()
    assert train(tiny_params(), p, progress=False).resumed_from == 12  # the longer run is still there


def test_a_shorter_run_from_scratch_keeps_its_own_checkpoints_beside_a_longer_runs(prepared_digits, tmp_path):
    p = paths(tmp_path, prepared_digits)
    train(tiny_params(train={"steps": 12, "checkpoint_every": 12}), p, progress=False)  # only ckpt 12
    res = train(tiny_params(train={"steps": 6, "checkpoint_every": 3}), p, progress=False)
    assert [c.name for c in checkpoint_files(res.checkpoints)] == ["ckpt_0000012.pt", "ckpt_0000006.pt",
                                                                 "ckpt_0000003.pt"]  # fmt: skip


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(prepared_digits, tmp_path, caplog):
    p = paths(tmp_path, prepared_digits)
    newest = checkpoint_files(train(tiny_params(train={"steps": 12}), p, progress=False).checkpoints)[0]
    newest.write_bytes(newest.read_bytes()[:100])  # truncated, as by a full disk
    res = train(tiny_params(train={"steps": 12}), p, progress=False)
    assert res.resumed_from == 6
    assert "unreadable" in caplog.text
    ref = paths(tmp_path / "ref", prepared_digits)
    train(tiny_params(train={"steps": 12}), ref, progress=False)
    assert_same_weights(weights(ref.generator), weights(p.generator))


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(prepared_digits, tmp_path):
    p = paths(tmp_path, prepared_digits)
    folder = train(tiny_params(train={"steps": 6}), p, progress=False).checkpoints
    # a fault poisons D's weights (as an overflow would); the run continues from step 6
    (ckpt,) = checkpoint_files(folder)
    state = torch.load(ckpt, weights_only=True)
    state["objective"]["D"]["head.linear.weight"].fill_(float("nan"))
    torch.save(state, ckpt)
    before = {c.name: c.read_bytes() for c in checkpoint_files(folder)}
    generator_before = p.generator.read_bytes()
    with pytest.raises(TrainingDiverged, match=r"non-finite at step 9 .*Lower train.lr_"):
        train(tiny_params(), p, progress=False)
    # nothing written after the divergence: no new checkpoint, the generator not replaced
    assert {c.name: c.read_bytes() for c in checkpoint_files(folder)} == before
    assert p.generator.read_bytes() == generator_before


def test_conditional_training_records_classes_for_export(prepared_digits, tmp_path):
    p = paths(tmp_path, prepared_digits)
    train(tiny_params(model={"conditional": True}), p, progress=False)
    g, spec = load_generator(p.generator)
    assert spec["num_classes"] == 10 and spec["class_names"][3] == "3"
    out = g(torch.randn(4, 16), torch.tensor([0, 1, 2, 3]))
    assert out.shape == (4, 1, 16, 16)
    shutil.rmtree(tmp_path)


@pytest.mark.parametrize(
    "over",
    [
        {"train": {"loss": "hinge"}, "model": {"spectral_norm": True, "d_norm": "none"}},
        {"train": {"loss": "lsgan", "r1_gamma": 1.0, "r1_every": 2}},
        {"train": {"loss": "relativistic", "r1_gamma": 1.0, "r1_every": 2, "accumulate": 2}},
        {"model": {"classes_from_noise": True, "arch": "resnet"}},
        {"train": {"loss": "wgan-gp", "n_critic": 2, "betas": [0.0, 0.9]}, "model": {"d_norm": "none"}},
        {"model": {"arch": "resnet", "conditional": True, "spectral_norm": True, "d_norm": "none"}},
        {"model": {"conditional": True, "conditioning": "acgan"}},
        {"augment": {"diffaugment": "color,translation,cutout"}},
        {
            "augment": {
                "diffaugment": "color,translation",
                "ada": True,
                "ada_interval": 2,
                "ada_kimg": 0.05,
                "hflip": True,
            },
            "train": {"data_fraction": 0.5},
        },
        {
            "model": {"arch": "stylegan2", "mapping_layers": 2, "classes_from_noise": True, "mbstd_group": 32},
            "train": {"r1_gamma": 0.1, "r1_every": 4, "pl_every": 2, "style_mixing": 0.5},
        },
        {
            "model": {"arch": "stylegan2", "mapping_layers": 2, "conditional": True},
            "train": {"loss": "hinge", "style_mixing": 0.5, "ema_kimg": 0.5},
            "augment": {"diffaugment": "color,translation", "ada": True, "ada_interval": 2, "ada_kimg": 0.05},
        },
    ],
    ids=[
        "hinge-sn",
        "lsgan-r1",
        "relativistic-r1-accumulate",
        "resnet-classes-from-noise",
        "wgan-gp",
        "resnet-cond",
        "acgan",
        "diffaugment",
        "ada-hflip-subset",
        "stylegan2-classes-from-noise-r1-pl-mixing",
        "stylegan2-cond-ada",
    ],
)
def test_every_objective_and_architecture_trains_and_resumes_exactly(prepared_digits, tmp_path, over):
    full = paths(tmp_path / "full", prepared_digits)
    train(tiny_params(**over), full, progress=False)
    part = paths(tmp_path / "part", prepared_digits)
    train(merge_params(over, {"train": {"steps": 6}}), part, progress=False)
    assert train(tiny_params(**over), part, progress=False).resumed_from == 6
    assert_same_weights(weights(full.generator), weights(part.generator))


@pytest.mark.parametrize("arch", ["dcgan", "stylegan2"])
def test_classes_from_noise_train_a_conditional_pair_behind_an_unconditional_interface(prepared_digits, tmp_path,
                                                                                       arch):  # fmt: skip
    from pipeline.export import export_generator
    from pipeline.inference import OnnxGenerator
    from pipeline.models import ClassesFromNoise
    from pipeline.training.distributed import World
    from pipeline.training.objectives import make_objective

    params = tiny_params(model={"classes_from_noise": True, "arch": arch, "mapping_layers": 2})
    obj = make_objective(params, prepared_digits, torch.device("cpu"), torch.float32, World())
    assert obj.D.head.embed is not None  # D judges each fake against the class G drew for it
    _, z, y = obj._draw()
    assert torch.equal(y, z[:, :10].argmax(1)) and len(y.unique()) > 5
    out = paths(tmp_path, prepared_digits)
    train(params, out, progress=False)
    g, spec = load_generator(out.generator)
    assert isinstance(g, ClassesFromNoise) and spec["num_classes"] == 0 and spec["noise_classes"] == 10
    z = torch.randn(6, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # the class is z's argmax over its first 10 entries; labels passed in are ignored
        np.testing.assert_array_equal(g(z).numpy(), g.inner(z, z[:, :10].argmax(1)).numpy())
        np.testing.assert_array_equal(g(z, torch.zeros(6, dtype=torch.long)).numpy(), g(z).numpy())
    metrics = export_generator(out.generator, tmp_path / "g.onnx")  # the contract: z in, images out
    gen = OnnxGenerator(tmp_path / "g.onnx")
    assert metrics["parity_passed"] and gen.info.num_classes == 0 and gen.generate(3).shape == (3, 1, 16, 16)
    # stylegan2 keeps its optional truncation input, and truncation still pulls towards the average w
    assert gen.info.truncation == (arch == "stylegan2")
    if arch == "stylegan2":
        assert metrics["max_abs_diff"] <= 1e-4 and "batch_16_psi_0.5" in metrics["max_abs_diff_per_batch"]
        zero = gen.generate(3, seed=1, truncation_psi=0.0)
        assert np.abs(zero - zero[0]).max() < 1e-5  # psi 0: one image, whatever z's class
        ws = g.ws(z)  # every layer's w; the class embedding went in, so w depends on z's argmax class
        assert ws.shape[:2] == (6, g.num_ws)
        np.testing.assert_allclose(ws.detach().numpy(), g.inner.ws(z, z[:, :10].argmax(1)).detach().numpy())


def merge_params(*overs):
    from conftest import merge

    out: dict = {}
    for o in overs:
        out = merge(out, o)
    return tiny_params(**out)


def test_collapse_warning_fires_below_the_threshold_and_diversity_is_logged(prepared_digits, tmp_path, caplog):
    p = paths(tmp_path, prepared_digits)
    train(tiny_params(train={"collapse_threshold": 100.0}), p, progress=False)  # any model is "collapsed" at 100x
    assert "possible mode collapse" in caplog.text
    rows = (p.live_dir / "plots/metrics/train/sample_diversity.tsv").read_text().splitlines()
    assert len(rows) == 1 + 2 and all(float(r.split("\t")[1]) > 0 for r in rows[1:])
    caplog.clear()
    train(tiny_params(train={"collapse_threshold": 0.0}), paths(tmp_path / "b", prepared_digits), progress=False)
    assert "possible mode collapse" not in caplog.text


def test_half_precision_on_cpu_is_refused_clearly(prepared_digits, tmp_path):
    with pytest.raises(RuntimeError, match=r"train\.precision fp16 needs CUDA"):
        train(tiny_params(train={"precision": "fp16"}), paths(tmp_path, prepared_digits), progress=False)


def test_killed_run_resumes_to_the_same_weights_as_an_uninterrupted_one(prepared_digits, tmp_path):
    """SIGKILL a real training process mid-run, start it again, compare with a clean run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from conftest import REPO, TINY, merge, write_params

    over = {"train": {"steps": 400, "checkpoint_every": 20, "log_every": 20, "sample_every": 200}}
    work = tmp_path / "work"
    (work / "data").mkdir(parents=True)
    (work / "data" / "prepared").symlink_to(prepared_digits)
    write_params(work / "params.yaml", merge(TINY, over))
    cmd = [sys.executable, "-m", "pipeline.training.worker", "--params", "params.yaml"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpts = work / "models" / "checkpoints" / fingerprint(tiny_params(**over), prepared_digits)
    deadline = time.monotonic() + 120
    while len(checkpoint_files(ckpts)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)  # no cleanup of any kind
    proc.wait()
    killed_at = max(int(c.stem.split("_")[1]) for c in checkpoint_files(ckpts))
    assert 0 < killed_at < 400 and not (work / "models" / "generator.pt").exists()
    shutil.rmtree(work / "dvclive")  # as DVC removes the train stage's outputs before running it again
    res = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    ref = paths(tmp_path / "ref", prepared_digits)
    train(tiny_params(**over), ref, progress=False)
    assert_same_weights(weights(ref.generator), weights(work / "models" / "generator.pt"))
    assert (work / "models" / "generator.pt").read_bytes() == ref.generator.read_bytes()
    assert_same_logs(ref.live_dir, work / "dvclive")  # every curve from step 20, the grids, the summary


DDP_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.device_count() >= 2 else [])  # NCCL needs a GPU per process


@pytest.mark.parametrize("device", DDP_DEVICES)
@pytest.mark.parametrize("over", [{}, {"model": {"arch": "stylegan2", "mapping_layers": 2}, "train": {"pl_every": 2}}],
                         ids=["dcgan", "stylegan2"])  # fmt: skip
def test_two_process_run_stays_in_sync_and_matches_the_single_process_maths(prepared_digits, tmp_path, over, device):
    """DDP over 2 processes (gloo on the CPU, NCCL on 2 GPUs) vs one process accumulating the same
    2 shards. No DVCLive: the check also runs on GPU machines with PyTorch alone."""
    import os
    import subprocess
    import sys

    from conftest import REPO, TINY, merge, write_params

    work = tmp_path / "ddp"
    (work / "data").mkdir(parents=True)
    (work / "data" / "prepared").symlink_to(prepared_digits)
    ddp = {"train": {"nproc_per_node": 2, "steps": 8, "checkpoint_every": 8, "device": device}}
    write_params(work / "params.yaml", merge(merge(TINY, over), ddp))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "GANPIPE_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "pipeline.training.worker", "--params", "params.yaml", "--no-logs"],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "2 processes in sync" in res.stdout
    single = dataclasses.replace(paths(tmp_path / "single", prepared_digits), live_dir=None)
    train(merge_params(over, {"train": {"accumulate": 2, "steps": 8, "checkpoint_every": 8, "device": device}}), single,
          progress=False)  # fmt: skip
    (ddp_folder,) = (work / "models/checkpoints").iterdir()
    ddp_ckpt = torch.load(ddp_folder / "ckpt_0000008.pt", weights_only=True)
    one_ckpt = torch.load(next(single.checkpoints.iterdir()) / "ckpt_0000008.pt", weights_only=True)
    ddp, one = ddp_ckpt["objective"], one_ckpt["objective"]
    for net in ("G", "D", "G_ema"):
        for name, value in one[net].items():
            if "running" in name or "num_batches" in name or name.endswith("w_avg"):
                continue  # BN statistics and StyleGAN2's average w: DDP keeps rank 0's, accumulation sees both shards
            tol = 1e-5 if device == "cpu" else 1e-3  # cuDNN's kernels are not deterministic
            torch.testing.assert_close(ddp[net][name], value, rtol=1e-4, atol=tol, msg=f"{net}.{name}")


def test_adaptive_augmentation_probability_is_logged(prepared_digits, tmp_path):
    p = paths(tmp_path, prepared_digits)
    over = {"augment": {"diffaugment": "translation", "ada": True, "ada_interval": 1, "ada_kimg": 0.05}}
    train(tiny_params(**over), p, progress=False)
    rows = (p.live_dir / "plots/metrics/train/augment_p.tsv").read_text().splitlines()[1:]
    values = [float(r.split("\t")[-1]) for r in rows]
    assert len(values) == 4 and all(0.0 <= v <= 1.0 for v in values)
    assert (p.live_dir / "plots/metrics/train/ada_rt.tsv").is_file()


def test_progress_reaches_the_log_with_step_losses_rate_and_eta(prepared_digits, tmp_path, caplog, monkeypatch):
    import logging

    import pipeline.training.runner as runner

    monkeypatch.setattr(runner, "PROGRESS_EVERY_S", 0.0)  # every logged step; the default is every 30 s
    with caplog.at_level(logging.INFO, logger="pipeline.training.runner"):
        train(tiny_params(), paths(tmp_path, prepared_digits), progress=False)
    lines = [r.getMessage() for r in caplog.records if r.name == "pipeline.training.runner" and "img/s" in r.message]
    assert [line.split(" (")[0] for line in lines] == ["step 3/12", "step 6/12", "step 9/12", "step 12/12"]
    assert lines[-1].startswith("step 12/12 (100%): loss_D ") and lines[-1].endswith("ETA 0m00s")


def test_only_the_most_recent_parameter_sets_keep_their_checkpoint_folders(tmp_path):
    import os

    from pipeline.training.checkpoint import KEEP_RUNS, prune_runs

    folders = [tmp_path / f"run{i}" for i in range(KEEP_RUNS + 2)]
    for age, folder in enumerate(folders):  # run0 the newest
        folder.mkdir()
        (folder / "ckpt_0000006.pt").write_bytes(b"x")
        os.utime(folder, ns=(10**18 - age * 10**9,) * 2)
    removed = prune_runs(tmp_path, current=folders[-1].name)  # the oldest is the one training now: kept
    assert sorted(removed) == folders[KEEP_RUNS - 1 : -1]
    kept = [*folders[: KEEP_RUNS - 1], folders[-1]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f.name for f in kept)


def test_the_train_stage_draws_the_walk_that_ganpipe_interpolate_takes(prepared_digits, tmp_path):
    """DVCLive's walk.png (a plot of the train stage) shows the EMA generator along the z that
    `ganpipe interpolate --seeds 0-4 --steps 8` walks through on the exported model."""
    from pipeline import sampling
    from pipeline.export import export_generator
    from pipeline.inference import OnnxGenerator
    from pipeline.training.objectives.gan import WALK_SEEDS, WALK_STEPS, walk_rows

    p = paths(tmp_path, prepared_digits)
    train(tiny_params(), p, progress=False)
    picture = p.live_dir / "plots/images/walk.png"
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    g, spec = load_generator(p.generator)
    rows = walk_rows(g, spec["model"]["latent_dim"], 0, torch.device("cpu"))
    assert [len(r) for r in rows] == [WALK_STEPS + 1] * (len(WALK_SEEDS) - 1)
    export_generator(p.generator, tmp_path / "g.onnx")
    model = OnnxGenerator(tmp_path / "g.onnx")
    frames = sampling.render(model, sampling.walk(model, list(WALK_SEEDS), WALK_STEPS))
    for i, row in enumerate(rows):  # each leg, its two seeds' images at its ends
        np.testing.assert_allclose(row, frames[i * WALK_STEPS : (i + 1) * WALK_STEPS + 1], atol=1e-4)
    assert not np.allclose(rows[0][0], rows[0][-1], atol=1e-2)  # the walk moves
