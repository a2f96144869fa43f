"""The engine on every device this machine has: CPU always, CUDA where a GPU is present (the
same tests then prove the GPU path: `pytest tests/test_engine_devices.py` on a GPU machine).

- a step never waits for the device (no host sync outside logging steps),
- a resumed run continues the same random streams (bit for bit on the CPU; on CUDA the
  streams exactly and the weights within what cuDNN's non-deterministic kernels leave),
- `train.compile: true` trains the same model as eager mode, for every architecture on CUDA
  (the default DCGAN on the CPU, where compiling costs about half a minute).

DVCLive is not needed: these runs log nothing (live_dir None), so they also run on machines
with only PyTorch.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import TINY, merge, tiny_params
from test_translate import glyph_data, translate_params

from pipeline.config import parse_params
from pipeline.runtime import resolve_precision
from pipeline.training.checkpoint import checkpoint_files
from pipeline.training.distributed import World
from pipeline.training.objectives import make_objective
from pipeline.training.runner import TrainPaths, train

CUDA_RESUME_TOLERANCE = 1e-3  # max |difference| of any weight after 6 resumed steps (cuDNN's kernels)

GAN_CASES = {
    "dcgan": {},
    "resnet-acgan": {"model": {"arch": "resnet", "conditional": True, "conditioning": "acgan"}},
    "augment-r1": {
        "augment": {"diffaugment": "color,translation,cutout", "hflip": True},
        "train": {"r1_gamma": 1.0, "r1_every": 2},
    },
    "stylegan2": {
        "model": {"arch": "stylegan2", "mapping_layers": 2},
        "train": {"style_mixing": 0.9, "pl_weight": 2.0, "pl_every": 2, "r1_gamma": 0.1, "r1_every": 2},
    },
}


def run_paths(root: Path, prepared: Path) -> TrainPaths:
    return TrainPaths(prepared=prepared, checkpoints=root / "ckpt", generator=root / "generator.pt", live_dir=None,
                      samples=root / "samples.png")  # fmt: skip


def last_checkpoint(paths: TrainPaths) -> Path:
    """The newest checkpoint of the one parameter set trained under `paths`."""
    (folder,) = paths.checkpoints.iterdir()
    return checkpoint_files(folder)[0]


def on(device: str, over: dict) -> dict:
    return merge(over, {"train": {"device": device}})


def flat(state: dict, prefix: str = "") -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}."))
        elif isinstance(v, torch.Tensor):
            out[prefix + k] = v
    return out


def cases(on_cpu: list[str], on_cuda: list[str]) -> list:
    """(device, case) pairs: the CPU's few (tests/test_training.py covers every objective there
    already), every case on CUDA when a GPU is present."""
    out = [pytest.param("cpu", c, id=f"cpu-{c}") for c in on_cpu]
    return out + ([pytest.param("cuda", c, id=f"cuda-{c}") for c in on_cuda] if torch.cuda.is_available() else [])


@pytest.mark.parametrize(("device", "case"), cases(["dcgan", "augment-r1"], list(GAN_CASES)))
def test_a_training_step_never_waits_for_the_device(prepared_digits, device, case):
    params = tiny_params(**on(device, GAN_CASES[case]))
    dev = torch.device(device)
    objective = make_objective(params, prepared_digits, dev, resolve_precision("auto", dev), World())
    # every per-step random draw comes from a generator on the training device
    generators = [objective.noise, objective.batches.generator, *objective.shard_rng.values()]
    assert {g.device.type for g in generators} == {device}
    objective.step(0, log_now=False)  # first step: cuDNN autotuning and lazy initialisation may sync
    if device == "cuda":
        torch.cuda.set_sync_debug_mode("error")  # any host-device synchronisation now raises
    try:
        for step in range(1, 4):
            objective.step(step, log_now=False)
    finally:
        if device == "cuda":
            torch.cuda.set_sync_debug_mode("default")
    loss_d, loss_g = objective.losses()  # the runner's sync, at logging steps only
    assert torch.isfinite(torch.tensor([loss_d, loss_g])).all()


@pytest.mark.parametrize(("device", "case"), cases(["dcgan"], ["dcgan", "stylegan2"]))
def test_resume_continues_the_same_random_streams(prepared_digits, tmp_path, device, case):
    over = on(device, GAN_CASES[case])
    full = run_paths(tmp_path / "full", prepared_digits)
    train(tiny_params(**over), full, progress=False)
    part = run_paths(tmp_path / "part", prepared_digits)
    train(tiny_params(**merge(over, {"train": {"steps": 6}})), part, progress=False)
    assert train(tiny_params(**over), part, progress=False).resumed_from == 6
    a = torch.load(last_checkpoint(full), weights_only=True)["objective"]
    b = torch.load(last_checkpoint(part), weights_only=True)["objective"]
    # the random streams continue exactly, on every device
    for name, state in flat(a["rng"]).items():
        assert torch.equal(state, flat(b["rng"])[name]), name
    diffs = {k: float((v.float() - flat(b["G"])[k].float()).abs().max()) for k, v in flat(a["G"]).items()}
    worst = max(diffs.values())
    if device == "cpu":
        assert worst == 0.0, diffs
    else:
        print(f"CUDA resume: largest weight difference after 6 resumed steps {worst:.2e}")
        assert worst <= CUDA_RESUME_TOLERANCE, diffs


# compiling costs ~40 s per case on 2 CPU cores: the default DCGAN there (GANPIPE_TEST_COMPILE_CPU
# names more, e.g. pix2pix,cyclegan), every architecture on CUDA
@pytest.mark.parametrize(
    ("device", "case"),
    cases(
        os.environ.get("GANPIPE_TEST_COMPILE_CPU", "dcgan").split(","),
        ["dcgan", "resnet-acgan", "stylegan2", "pix2pix", "cyclegan"],
    ),
)
def test_compile_trains_the_same_model_as_eager_mode(prepared_digits, tmp_path_factory, device, case):
    # fp32: bf16 rounding differs between compiled and eager kernels far more, and Adam's first
    # steps (about lr * sign(gradient)) amplify it for gradients near zero.
    fp32 = {"train": {"device": device, "precision": "fp32"}}
    if case in ("pix2pix", "cyclegan"):
        prepared = glyph_data(tmp_path_factory)
        # no dropout: compiled code draws its masks from inductor's own RNG, not eager's
        raw = merge(translate_params(case), merge(fp32, {"model": {"dropout": False}}))
    else:
        prepared = prepared_digits
        raw = merge(TINY, merge(GAN_CASES[case], fp32))
    raw = merge(raw, {"train": {"steps": 3, "checkpoint_every": 3, "sample_every": 3, "log_every": 3}})
    root = tmp_path_factory.mktemp(f"compile-{device}-{case}")
    states = {}
    for compiled in (False, True):
        paths = run_paths(root / str(compiled), prepared)
        train(parse_params(merge(raw, {"train": {"compile": compiled}})), paths, progress=False)
        states[compiled] = flat(torch.load(last_checkpoint(paths), weights_only=True)["objective"]["G"])
    torch.manual_seed(0)
    initial = flat(_initial_g(raw, prepared, device))
    # Compiled kernels round differently, so the weights are not bit-identical; but the two runs
    # must be far closer to each other than either is to where it started.
    moved = sum(float((states[False][k].float() - initial[k].float().to(states[False][k].device)).norm() ** 2)
                for k in initial) ** 0.5  # fmt: skip
    apart = sum(float((states[False][k].float() - states[True][k].float()).norm() ** 2) for k in initial) ** 0.5
    assert moved > 0
    assert apart < 0.5 * moved, f"compiled run is {apart:.3g} from eager, which moved {moved:.3g} from the start"


def _initial_g(raw: dict, prepared: Path, device: str) -> dict:
    """G's weights before the first step, as the objective builds them from the same seed."""
    from pipeline.runtime import seed_everything

    params = parse_params(merge(raw, {"train": {"compile": False}}))
    seed_everything(params.seed)
    dev = torch.device(device)
    objective = make_objective(params, prepared, dev, resolve_precision(params.train.precision, dev), World())
    g = objective.G
    return {d: m.state_dict() for d, m in g.items()} if isinstance(g, dict) else g.state_dict()
