"""bench/stylegan2_nvlabs.py without NVlabs' code: its refusals, the shared channel table, and
its ganpipe half stepping a whole regularisation cycle on the CPU at a tiny size. The NVlabs
half needs a checkout of their repository, which CI does not have; no speed is asserted."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import stylegan2_nvlabs as bench  # noqa: E402

from pipeline.models import stylegan2 as sg2  # noqa: E402


def refusal(argv: list[str]) -> str:
    with pytest.raises(SystemExit) as err:
        bench.main(argv)
    message = str(err.value.code)
    assert message.startswith("stylegan2_nvlabs: ") and "\n" not in message
    return message


@pytest.mark.skipif(torch.cuda.is_available(), reason="refuses only where there is no CUDA device")
def test_refuses_without_cuda_unless_allowed(tmp_path):
    assert "no CUDA device" in refusal(["--nvlabs", str(tmp_path)])


def test_refuses_a_path_that_is_not_an_nvlabs_checkout(tmp_path):
    assert "is not a directory" in refusal(["--nvlabs", str(tmp_path / "absent"), "--allow-cpu"])
    (tmp_path / "training").mkdir()
    (tmp_path / "training" / "networks.py").write_text("class Generator: ...\n")
    assert "not a checkout of NVlabs/stylegan2-ada-pytorch" in refusal(["--nvlabs", str(tmp_path), "--allow-cpu"])


def test_refuses_sizes_and_loops_it_cannot_compare(tmp_path):
    base = ["--nvlabs", str(tmp_path), "--allow-cpu"]
    assert "resolution 48" in refusal([*base, "--resolutions", "64", "48"])
    assert "--batch 6" in refusal([*base, "--batch", "6"])
    assert "need one of" in refusal([*base, "--loops", "ganpipe", "ganpipe-bf16"])


def test_channel_table_is_nvlabs_rule_and_ganpipe_width_only_where_its_own_rule_gives_it():
    assert bench.channel_table(128, 16384, 512) == {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128}
    assert bench.ganpipe_width(bench.channel_table(128, 16384, 512), 128) is None  # capped at 4x, not 8x
    assert bench.ganpipe_width(bench.channel_table(128, 64 * 128, 512), 128) == 64  # 64 .. 512: ganpipe's rule


def test_ganpipe_half_builds_the_table_and_steps_a_whole_cycle(tmp_path):
    table = bench.channel_table(16, 256, 24)  # {4: 24, 8: 24, 16: 16}: not ganpipe's rule (16, 32, 64)
    args = bench.parser().parse_args(["--nvlabs", ".", "--batch", "4", "--z-dim", "16"])
    s = bench.settings(16, args)
    assert s["r1_gamma"] == pytest.approx(0.0002 * 16**2 / 4) and s["pl_every"] == 4 and s["r1_every"] == 16
    prepared = bench.write_prepared(bench.fixed_images(8, 16), tmp_path / "prepared")
    own = sg2.widths
    loop = bench.Ganpipe("ganpipe", prepared, table, s, 4, torch.device("cpu"))
    assert sg2.widths is own  # the override is undone after building
    assert loop.widths_from == "bench override of the width rule"
    assert loop.objective.G.const.shape[1] == 24 and loop.objective.D.from_rgb.weight.shape[0] == 16
    rate = bench.images_per_s(loop, bench.CYCLE, 4, torch.device("cpu"))  # R1 and path length included
    assert rate > 0 and loop.k == bench.CYCLE
    assert all(torch.isfinite(p).all() for p in loop.objective.G.parameters())
    assert float(loop.objective.pl_mean) > 0  # path-length regularisation ran


def test_table_lines_show_each_loop_and_the_ratio():
    rate = {"median": 200.0, "min": 190.0, "max": 210.0}
    ratio = {"median": 2.0, "min": 1.9, "max": 2.1}
    row = {"resolution": 128, "batch": 32, "baseline": "nvlabs",
           "loops": {"nvlabs": {"images_per_s": {"median": 100.0, "min": 99.0, "max": 101.0}},
                     "ganpipe": {"images_per_s": rate, "ratio_to_nvlabs": ratio}}}  # fmt: skip
    head, _, line = bench.table_lines([row])
    assert head == "| resolution | batch | nvlabs img/s | ganpipe img/s | ganpipe ÷ nvlabs |"
    assert line == "| 128 px | 32 | 100.0 (99.0–101.0) | 200.0 (190.0–210.0) | **2.00×** (1.90–2.10) |"
