"""reference: data/prepared/ (+ models/evaluator.pt) -> models/reference.pt, the real images' features."""

from __future__ import annotations

import sys

from flows.stage import run_stage, stage_flow, stage_task
from pipeline import layout
from pipeline.config import load_params
from pipeline.metrics import reference
from pipeline.metrics.features import extractor_for
from pipeline.runtime import resolve_device, set_threads


@stage_task
def embed_real_images(params_path: str) -> dict:
    params = load_params(params_path)
    set_threads()
    ecfg = params.evaluate
    extractor = extractor_for(ecfg.feature_extractor, layout.EVALUATOR, ecfg.batch_size,
                              device=resolve_device(ecfg.device, "evaluate.device"))  # fmt: skip
    key = reference.write(params, layout.PREPARED, extractor)["key"]
    counts = ", ".join(f"{name} {n}" for name, n in key["counts"].items())
    print(f"reference features: {extractor.description}; {counts} images; data {key['dataset_sha256'][:12]}")
    return key


@stage_flow("reference")
def reference_flow(params_path: str = str(layout.PARAMS)) -> dict:
    """Embed the real images every evaluation compares against, once per data set and extractor."""
    return embed_real_images(params_path)


if __name__ == "__main__":
    sys.exit(run_stage(reference_flow))
