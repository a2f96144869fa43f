"""The evaluate stage's report: reports/report.md links its pictures, reports/report.html carries
them inlined and renders in a real headless Chromium with nothing fetched from anywhere (the
screenshot is kept in tests/artifacts/report.png for a person to look at)."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
from conftest import tiny_params
from test_serve_page import ARTIFACTS, browser  # noqa: F401 (a fixture, used by name)

from pipeline import layout
from pipeline.dataset import load_split
from pipeline.grid import save_grid
from pipeline.metrics.evaluator import train_evaluator
from pipeline.report import build_report, curves_figure, write_report


def write_tsv(path: Path, column: str, rows: list[tuple[int, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"step\t{column}\n" + "".join(f"{s}\t{v}\n" for s, v in rows))


def test_curves_have_a_panel_per_quantity_and_nothing_without_logs(tmp_path):
    assert curves_figure(tmp_path / "none") is None
    train = tmp_path / "plots" / "metrics" / "train"
    write_tsv(train / "loss_D.tsv", "loss_D", [(3, 1.5), (6, 1.2)])
    write_tsv(train / "loss_G.tsv", "loss_G", [(3, 0.9), (6, 1.1)])
    write_tsv(train / "sample_diversity.tsv", "sample_diversity", [(6, 0.9)])
    fig = curves_figure(tmp_path)
    assert [ax.get_title() for ax in fig.axes] == ["losses", "sample diversity (x real)"]
    # train.fid_every's curve gets its own panel
    write_tsv(tmp_path / "plots" / "metrics" / "eval" / "fid_vs_floor.tsv", "fid_vs_floor", [(6, 40.0), (12, 9.5)])
    fig = curves_figure(tmp_path)
    assert fig.axes[-1].get_title() == "FID while training (x real floor)"
    np.testing.assert_array_equal(fig.axes[-1].get_lines()[0].get_xydata(), [[6, 40.0], [12, 9.5]])
    losses = fig.axes[0].get_lines()
    assert [line.get_label() for line in losses] == ["loss_D", "loss_G"]
    np.testing.assert_array_equal(losses[1].get_xydata(), [[3, 0.9], [6, 1.1]])
    assert all(ax.get_xlabel() == "step" for ax in fig.axes)


def test_markdown_links_the_pictures_and_html_inlines_them(tmp_path):
    pics = {"samples": tmp_path / "figures" / "samples.png", "comparison": tmp_path / "eval_comparison.png"}
    for i, p in enumerate(pics.values()):
        save_grid(np.full((4, 1, 4, 4), i, np.uint8), p)
    md_path, html_path = write_report("generate", "FID 1.000 is 2.0x the real-data floor.", pics,
                                      tmp_path / "report.md", tmp_path / "report.html")  # fmt: skip
    md = md_path.read_text()
    assert md.startswith("# ganpipe evaluation report: image generation\n\nFID 1.000 is 2.0x")
    assert "(figures/samples.png)" in md and "(eval_comparison.png)" in md  # relative to the report
    assert "## Samples" in md and "## Memorisation" not in md  # pictures that were not drawn are left out
    page = html_path.read_text()
    sources = re.findall(r'<img[^>]* src="([^"]+)"', page)
    assert len(sources) == 2 and all(s.startswith("data:image/png;base64,") for s in sources)
    assert base64.b64decode(sources[0].split(",", 1)[1]) == pics["samples"].read_bytes()
    assert "http" not in page and "<script" not in page


def test_report_of_a_trained_conditional_model_renders_in_chromium(browser, prepared_digits, tmp_path,  # noqa: F811
                                                                   monkeypatch):  # fmt: skip
    from pipeline.metrics.suite import evaluate, generation_markdown
    from pipeline.training.runner import TrainPaths, train

    monkeypatch.chdir(tmp_path)  # the stage's relative paths: reports/, dvclive/
    params = tiny_params(model={"conditional": True}, evaluate={"evaluator": {"steps": 150, "batch_size": 64}})
    train_evaluator(params.evaluate.evaluator, load_split(prepared_digits, "train"),
                    load_split(prepared_digits, "val"), tmp_path / "ev.pt", progress=False)  # fmt: skip
    train(params, TrainPaths(prepared=prepared_digits, checkpoints=tmp_path / "ckpt", generator=tmp_path / "g.pt",
                             live_dir=layout.DVCLIVE, samples=layout.SAMPLES), progress=False)  # fmt: skip
    m = evaluate(params, tmp_path / "g.pt", tmp_path / "ev.pt", prepared_digits)
    md_path, html_path = build_report("generate", generation_markdown(m))
    assert {p.name for p in layout.FIGURES.iterdir()} == {"samples.png", "memorisation.png", "curves.png"}
    md = md_path.read_text()
    for heading in ("## Samples", "## Real against generated", "## Memorisation", "## Training curves"):
        assert heading in md

    browser.get_log("performance")  # start afresh
    browser.get(html_path.resolve().as_uri())
    shown = browser.execute_script(
        "return [...document.images].map(i => [i.complete && i.naturalWidth > 0, i.naturalWidth, i.alt])")
    assert len(shown) == 4 and all(ok for ok, _, _ in shown), shown
    text = browser.execute_script("return document.body.innerText")
    assert f"FID {m['fid']:.3f} is {m['fid_vs_floor']}x the real-data floor" in text
    cells = browser.execute_script("return [...document.querySelectorAll('table tr')].map(r => r.cells.length)")
    assert cells[:4] == [9, 9, 9, 9]  # header, floor, trained, ceiling: FID, KID, four manifold, two classifier
    requested = [json.loads(e["message"])["message"] for e in browser.get_log("performance")]
    urls = {r["params"]["request"]["url"] for r in requested if r["method"] == "Network.requestWillBeSent"}
    assert all(u.startswith(("file:", "data:")) for u in urls), urls  # nothing from any host
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "report.png"))
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000


def test_stale_figures_are_removed_when_this_run_does_not_draw_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    layout.FIGURES.mkdir(parents=True)
    for picture in (layout.CURVES, layout.MEMORISATION, layout.SAMPLE_GRID):  # left by a generation run
        save_grid(np.zeros((1, 1, 4, 4), np.uint8), picture)
    md_path, _ = build_report("translate", "summary", live_dir=tmp_path / "no-logs")
    assert not any(layout.FIGURES.iterdir())  # translation draws none of them, and there are no curves
    assert "## Training curves" not in md_path.read_text() and "## Memorisation" not in md_path.read_text()
