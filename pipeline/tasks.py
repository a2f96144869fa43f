"""The task seam: what each task (`generate` | `translate`) does at the stages that differ.

Flows look the task up here and never branch on it themselves. Training is the same call
for every task (the runner picks the objective from params). A new task is one entry in
`TASKS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline import layout
from pipeline.config import Params
from pipeline.export import export_generator, export_translators
from pipeline.metrics.registry import Registry
from pipeline.metrics.suite import GENERATION, evaluate, generation_markdown
from pipeline.metrics.translation import TRANSLATION, evaluate_translation, translation_markdown


@dataclass(frozen=True)
class Task:
    evaluate: Callable[..., dict]  # params (, paths) -> the metrics of metrics/eval.json and eval_details.json
    metrics: Registry  # which of them go to each file (`Registry.split`)
    report: Callable[[dict], str]  # the metrics as Markdown
    export: Callable[..., dict]  # generator.pt -> ONNX file(s), parity, model card
    export_target: Path  # the file (generate) or folder (translate) `export` writes to
    onnx_files: Callable[[dict], list[Path]]  # the files one export wrote, from its metrics


TASKS = {
    "generate": Task(
        evaluate=evaluate,
        metrics=GENERATION,
        report=generation_markdown,
        export=export_generator,
        export_target=layout.ONNX_GENERATOR,
        onnx_files=lambda metrics: [layout.ONNX_GENERATOR],
    ),
    "translate": Task(
        evaluate=evaluate_translation,
        metrics=TRANSLATION,
        report=translation_markdown,
        export=export_translators,
        export_target=layout.EXPORTS,
        onnx_files=lambda metrics: [layout.ONNX_TRANSLATORS[d] for d in metrics["onnx_bytes"]],
    ),
}


def task_of(params: Params) -> Task:
    return TASKS[params.task]


def report(eval_metrics: dict) -> str:
    """The Markdown of an evaluation's metrics (eval.json and eval_details.json together), whichever task wrote it."""
    return TASKS[eval_metrics.get("task", "generate")].report(eval_metrics)
