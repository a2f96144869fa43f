"""Artifact paths, relative to the repository root. A contract: dvc.yaml, the flows, the
CLI and users' deployments all rely on these names, and this is the one place they are
spelled (tests/test_architecture.py checks that no other module retypes one)."""

from pathlib import Path

PARAMS = Path("params.yaml")
DVC_LOCK = Path("dvc.lock")

PREPARED = Path("data/prepared")
DATA_REPORT = Path("reports/data_report.json")
DATA_REPORT_THUMBS = Path("reports/data_report_thumbs.png")  # beside it, as pipeline/data/report.py names it

EVALUATOR = Path("models/evaluator.pt")
EVALUATOR_METRICS = Path("metrics/evaluator.json")  # how well the feature network learned the data: descriptive
REFERENCE = Path("models/reference.pt")  # real-data features, keyed by data + extractor + resolution

CHECKPOINTS = Path("models/checkpoints")  # resume points: <fingerprint>/ckpt_*.pt; git-ignored, no DVC output
GENERATOR = Path("models/generator.pt")
DVCLIVE = Path("dvclive")
SAMPLES = Path("reports/samples.png")

EVAL_METRICS = Path("metrics/eval.json")  # what experiments are compared by: the one DVC metrics file
EVAL_DETAILS = Path("metrics/eval_details.json")  # the rest: anchors, spreads, counts, feature space, per class
EVAL_COMPARISON = Path("reports/eval_comparison.png")
FIGURES = Path("reports/figures")  # the evaluate stage's other pictures (DVC plots)
MEMORISATION = FIGURES / "memorisation.png"
SAMPLE_GRID = FIGURES / "samples.png"  # a class per row for conditional models
CURVES = FIGURES / "curves.png"
REPORT_MD = Path("reports/report.md")
REPORT_HTML = Path("reports/report.html")  # self-contained: the pictures inlined

EXPORTS = Path("exports")
ONNX_GENERATOR = EXPORTS / "generator.onnx"  # task generate
ONNX_TRANSLATORS = {d: EXPORTS / f"generator_{d}.onnx" for d in ("AB", "BA")}  # task translate (BA: CycleGAN)
MODEL_CARD = Path("exports/model_card.json")
EXPORT_METRICS = Path("metrics/export.json")  # parity and size: a gate, not compared (no DVC metric)
EXPORT_DETAILS = Path("reports/export_details.json")  # per-input parity, latency (the machine as much as the model)

# held by `ganpipe exp`, `ganpipe repro` and retraining while they use the workspace (pipeline/workspace.py);
# beside DVC's own locks, in the folder DVC keeps out of git
WORKSPACE_LOCK = Path(".dvc/tmp/ganpipe-workspace.lock")

# the model registry's default folder: promoted versions and the champion pointer (pipeline/registry.py)
REGISTRY = Path("registry")
