"""`export` stage: the EMA generator -> ONNX, checked against the ONNX contract and PyTorch.

Contract (DESIGN.md): input `z` float32 [N, latent_dim] (+ `labels` int64 [N] for
conditional models), output `images` float32 [N, C, H, W] in [-1, 1], dynamic N,
ganpipe.* metadata_props. The exported file is checked with the full ONNX checker, then
run by ONNX Runtime at batch 1 and 16 against the PyTorch EMA generator; the largest
absolute difference and both latencies go to metrics/export.json.
"""

from __future__ import annotations

import json
import logging
import statistics
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from pipeline.artifacts import atomic_path, write_json
from pipeline.errors import UserError
from pipeline.inference import create_session
from pipeline.training.loop import load_generator

PARITY_BATCHES = (1, 16)


class ExportError(UserError, RuntimeError):
    """The exported model breaks the contract or disagrees with PyTorch."""


class GenerateGraph(nn.Module):
    """The exported signature: (z[, labels]) -> images. Noise is an input, never sampled
    inside forward, so the ONNX graph is a pure function and parity is exact."""

    def __init__(self, g: nn.Module, conditional: bool):
        super().__init__()
        self.g, self.conditional = g, conditional

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.g(z, labels if self.conditional else None)


def git_revision(cwd: Path | str = ".") -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def _inputs(spec: dict, n: int, seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, spec["model"]["latent_dim"], generator=gen)
    if spec["num_classes"]:
        return z, torch.randint(spec["num_classes"], (n,), generator=gen)
    return (z,)


def _median_ms(fn, repeats: int = 20) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return round(statistics.median(times), 4)


def export_generator(
    generator_path: Path | str,
    onnx_path: Path | str,
    opset: int = 18,
    tolerance: float = 1e-4,
    params_hash: str = "",
    card_path: Path | str | None = None,
) -> dict:
    """Export, check and compare; return the metrics for metrics/export.json.

    Raises ExportError (after writing nothing) if the parity check fails.
    """
    g, spec = load_generator(generator_path)
    conditional = bool(spec["num_classes"])
    graph = GenerateGraph(g, conditional).eval()
    names = ["z", "labels"] if conditional else ["z"]
    batch = torch.export.Dim("batch", min=1, max=65536)
    dynamic = {"z": {0: batch}, "labels": {0: batch}} if conditional else {"z": {0: batch}}
    metadata = {
        "ganpipe.task": "generate",
        "ganpipe.latent_dim": str(spec["model"]["latent_dim"]),
        "ganpipe.num_classes": str(spec["num_classes"]),
        "ganpipe.class_names": json.dumps(spec["class_names"]),
        "ganpipe.image_size": str(spec["image_size"]),
        "ganpipe.channels": str(spec["channels"]),
        "ganpipe.arch": spec["model"]["arch"],
        "ganpipe.git_rev": git_revision(),
        "ganpipe.params_hash": params_hash,
    }
    onnx_path = Path(onnx_path)
    with atomic_path(onnx_path) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # exporter's deprecation chatter, not about our model
            logging.getLogger("torch.onnx").setLevel(logging.ERROR)
            program = torch.onnx.export(
                graph,
                _inputs(spec, 2, 0),
                dynamo=True,
                opset_version=opset,
                input_names=names,
                output_names=["images"],
                dynamic_shapes=dynamic,
                external_data=False,
                verbose=False,
            )
        model = program.model_proto
        for key, value in metadata.items():
            model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
        onnx.save_model(model, str(tmp))
        onnx.checker.check_model(str(tmp), full_check=True)
        metrics = check_parity(graph, tmp, spec, tolerance)
        if not metrics["parity_passed"]:
            raise ExportError(
                f"ONNX output differs from PyTorch by {metrics['max_abs_diff']:.3g} > tolerance {tolerance}; "
                f"{onnx_path} not written"
            )
    metrics.update({"opset": opset, "onnx_bytes": onnx_path.stat().st_size})
    if card_path:
        write_json(card_path, model_card(spec, metadata, metrics, onnx_path))
    return metrics


def check_parity(graph: nn.Module, onnx_file: Path, spec: dict, tolerance: float) -> dict:
    """Max |ORT - torch| over batch sizes 1 and 16, plus median latency of each at batch 16."""
    session = create_session(onnx_file)
    in_names = [i.name for i in session.get_inputs()]
    diffs: dict[str, float] = {}
    for n in PARITY_BATCHES:
        inputs = _inputs(spec, n, seed=n)
        with torch.no_grad():
            expected = graph(*inputs).numpy()
        got = session.run(["images"], {k: v.numpy() for k, v in zip(in_names, inputs, strict=True)})[0]
        if got.shape != expected.shape:
            raise ExportError(f"ONNX output shape {got.shape} != PyTorch {expected.shape} at batch {n}")
        diffs[f"batch_{n}"] = float(np.abs(got - expected).max())
    inputs = _inputs(spec, 16, seed=0)
    feed = {k: v.numpy() for k, v in zip(in_names, inputs, strict=True)}
    with torch.no_grad():
        torch_ms = _median_ms(lambda: graph(*inputs))
    ort_ms = _median_ms(lambda: session.run(["images"], feed))
    worst = max(diffs.values())
    return {
        "parity_passed": bool(worst <= tolerance),
        "max_abs_diff": worst,
        "max_abs_diff_per_batch": diffs,
        "tolerance": tolerance,
        "providers": session.get_providers(),
        "latency_ms_batch16": {"onnxruntime": ort_ms, "torch": torch_ms},
    }


def model_card(spec: dict, metadata: dict, metrics: dict, onnx_path: Path) -> dict:
    """What a deployment needs to know about the exported file, in one JSON document."""
    inputs = [
        {
            "name": "z",
            "dtype": "float32",
            "shape": ["N", spec["model"]["latent_dim"]],
            "meaning": "standard normal noise",
        }
    ]
    if spec["num_classes"]:
        inputs.append(
            {"name": "labels", "dtype": "int64", "shape": ["N"], "meaning": f"class index into {spec['class_names']}"}
        )
    return {
        "file": onnx_path.name,
        "task": "generate",
        "inputs": inputs,
        "outputs": [
            {
                "name": "images",
                "dtype": "float32",
                "shape": ["N", spec["channels"], spec["image_size"], spec["image_size"]],
                "range": [-1.0, 1.0],
                "to_uint8": "round((x + 1) * 127.5)",
            }
        ],
        "dynamic_axes": ["N"],
        "metadata_props": metadata,
        "parity": {k: metrics[k] for k in ("parity_passed", "max_abs_diff", "tolerance")},
    }
