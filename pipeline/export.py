"""`export` stage: the EMA generator -> ONNX, checked against the ONNX contract and PyTorch.

Contract (docs/architecture.md, "The ONNX contract"): input `z` float32 [N, latent_dim] (+ `labels`
int64 [N] for conditional models; + the optional `truncation_psi` float32 [1] or [N], default 1,
for generators with truncation), output `images` float32 [N, C, H, W] in [-1, 1], dynamic N,
ganpipe.* metadata_props. The exported file is checked with the full ONNX checker, then
run by ONNX Runtime at batch 1 and 16 against the PyTorch EMA generator; the largest
absolute difference and both latencies go to metrics/export.json.
"""

from __future__ import annotations

import contextlib
import json
import logging
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from pipeline import layout
from pipeline.artifacts import atomic_path, write_file, write_json
from pipeline.errors import UserError
from pipeline.inference import PSI, create_session
from pipeline.models.artifact import load_generator, load_translators
from pipeline.provenance import git_revision

PARITY_BATCHES = (1, 16)


class ExportError(UserError, RuntimeError):
    """The exported model breaks the contract or disagrees with PyTorch."""


PARITY_PSI = (1.0, 0.5)  # truncation values parity is checked at, when the generator takes one


class GenerateGraph(nn.Module):
    """The exported signature: (z[, labels][, truncation_psi]) -> images. Noise is an input,
    never sampled inside forward, so the ONNX graph is a pure function and parity is exact."""

    def __init__(self, g: nn.Module, conditional: bool):
        super().__init__()
        self.g, self.conditional = g, conditional
        self.truncation = bool(getattr(g, "truncation", False))

    def forward(self, z: torch.Tensor, second: torch.Tensor | None = None, third: torch.Tensor | None = None):
        """(z), (z, labels), (z, truncation_psi) or (z, labels, truncation_psi), by the model."""
        labels = second if self.conditional else None
        if self.truncation:
            return self.g(z, labels, truncation_psi=third if self.conditional else second)
        return self.g(z, labels)

    def input_names(self) -> list[str]:
        return ["z"] + (["labels"] if self.conditional else []) + ([PSI] if self.truncation else [])


def _inputs(spec: dict, n: int, seed: int, psi: float | None = None) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, spec["model"]["latent_dim"], generator=gen)
    out = (z, torch.randint(spec["num_classes"], (n,), generator=gen)) if spec["num_classes"] else (z,)
    return out if psi is None else (*out, torch.tensor([psi]))


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
    names = graph.input_names()
    batch = torch.export.Dim("batch", min=1, max=65536)
    # truncation_psi is traced as [1]; to_onnx makes its length free
    shapes = [{0: batch}] + ([{0: batch}] if conditional else []) + ([None] if graph.truncation else [])
    dynamic = dict(zip(["z", "second", "third"], shapes, strict=False))
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
        "ganpipe.inputs": json.dumps(names),
    }
    if spec.get("noise_classes"):  # only then: every other model's file keeps its bytes
        metadata["ganpipe.noise_classes"] = str(spec["noise_classes"])
    onnx_path = Path(onnx_path)
    with atomic_path(onnx_path) as tmp:
        example = _inputs(spec, 2, 0, psi=1.0 if graph.truncation else None)
        defaults = {PSI: np.ones(1, np.float32)} if graph.truncation else {}
        to_onnx(graph, example, tmp, names, ["images"], dynamic, metadata, opset, defaults)
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


def to_onnx(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    input_names: list[str],
    output_names: list[str],
    dynamic_shapes: dict,
    metadata: dict[str, str],
    opset: int,
    defaults: dict[str, np.ndarray] | None = None,
) -> None:
    """The dynamo exporter with the settings every ganpipe export uses (weights inside the
    file, pinned opset), then the metadata props and the full ONNX checker. `defaults` makes
    inputs optional: each gets an initializer of its name (the value used when it is not fed)
    and a free length (one value for the batch, or one per sample)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter's deprecation chatter, not about our model
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        program = torch.onnx.export(
            module,
            example,
            dynamo=True,
            opset_version=opset,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=dynamic_shapes,
            external_data=False,
            verbose=False,
        )
    model = program.model_proto
    _drop_stack_traces(model)
    for name, value in (defaults or {}).items():
        model.graph.initializer.append(numpy_helper.from_array(value, name))
        (graph_input,) = [i for i in model.graph.input if i.name == name]
        graph_input.type.tensor_type.shape.dim[0].dim_param = f"{name}_length"
    for key, value in metadata.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    write_file(path, model.SerializeToString())  # as onnx.save_model, with a full disk reported by name
    onnx.checker.check_model(str(path), full_check=True)


def _drop_stack_traces(model: onnx.ModelProto) -> None:
    """The exporter records each node's Python stack trace, with the absolute paths of this
    checkout: the file would carry the exporting machine's paths and change with the folder
    it was built in. The other node annotations (module names, scopes) are kept."""
    for node in [*model.graph.node, *(n for f in model.functions for n in f.node)]:
        kept = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(kept)


def check_parity(graph: GenerateGraph, onnx_file: Path, spec: dict, tolerance: float) -> dict:
    """Max |ORT - torch| over batch sizes 1 and 16 (and, with truncation, over two psi values and
    with psi not fed), plus median latency of each at batch 16."""
    session = create_session(onnx_file)
    in_names = graph.input_names()
    diffs: dict[str, float] = {}
    for n in PARITY_BATCHES:
        for psi in PARITY_PSI if graph.truncation else (None,):
            inputs = _inputs(spec, n, seed=n, psi=psi)
            with torch.no_grad():
                expected = graph(*inputs).numpy()
            feed = {k: v.numpy() for k, v in zip(in_names, inputs, strict=True)}
            runs = {f"batch_{n}" + ("" if psi is None else f"_psi_{psi:g}"): feed}
            if psi == 1.0:  # the default of the optional input
                runs[f"batch_{n}_psi_default"] = {k: v for k, v in feed.items() if k != PSI}
            for key, run_feed in runs.items():
                got = session.run(["images"], run_feed)[0]
                if got.shape != expected.shape:
                    raise ExportError(f"ONNX output shape {got.shape} != PyTorch {expected.shape} at {key}")
                diffs[key] = float(np.abs(got - expected).max())
    inputs = _inputs(spec, 16, seed=0, psi=1.0 if graph.truncation else None)
    feed = {k: v.numpy() for k, v in zip(in_names, inputs, strict=True)}
    with torch.no_grad():
        torch_ms = _median_ms(lambda: graph(*inputs))
    ort_ms = _median_ms(lambda: session.run(["images"], feed))
    return _parity_report(diffs, "max_abs_diff_per_batch", tolerance, session, ort_ms, torch_ms)


def _parity_report(diffs: dict, per_key: str, tolerance: float, session, ort_ms: float, torch_ms: float) -> dict:
    """The parity entry of metrics/export.json: the worst difference decides pass or fail."""
    worst = max(diffs.values())
    return {
        "parity_passed": bool(worst <= tolerance),
        "max_abs_diff": worst,
        per_key: diffs,
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
    if k := spec.get("noise_classes"):
        inputs[0]["meaning"] += (f"; the sample's class (of {k}, in the training data's class order) is the "
                                 f"argmax of z's first {k} entries: for class c, swap the largest of them with "
                                 "entry c")  # fmt: skip
    if spec["num_classes"]:
        inputs.append(
            {"name": "labels", "dtype": "int64", "shape": ["N"], "meaning": f"class index into {spec['class_names']}"}
        )
    if PSI in json.loads(metadata.get("ganpipe.inputs", "[]")):
        inputs.append({"name": PSI, "dtype": "float32", "shape": ["1 or N"], "optional": True, "default": 1.0,
                       "meaning": "truncation: w = w_avg + psi * (w - w_avg); 1 = none, below 1 = closer to the "
                                  "average image (more typical, less varied)"})  # fmt: skip
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


def _translator_metadata(spec: dict, direction: str, params_hash: str) -> dict[str, str]:
    return {
        "ganpipe.task": "translate",
        "ganpipe.direction": direction,
        "ganpipe.latent_dim": "0",
        "ganpipe.num_classes": "0",
        "ganpipe.class_names": "[]",
        "ganpipe.image_size": str(spec["image_size"]),
        "ganpipe.channels": str(spec["channels"]),
        "ganpipe.size_multiple": str(spec["size_multiple"]),
        "ganpipe.min_size": str(spec.get("min_size", spec["size_multiple"])),
        "ganpipe.arch": spec["model"]["arch"],
        "ganpipe.git_rev": git_revision(),
        "ganpipe.params_hash": params_hash,
    }


def translator_sizes(spec: dict) -> tuple[int, int]:
    """The two spatial sizes parity is checked at: the training size and twice it."""
    return spec["image_size"], 2 * spec["image_size"]


def export_translator(g: nn.Module, path: Path, spec: dict, metadata: dict[str, str], opset: int) -> None:
    """One translator to ONNX: `images` [N, C, H, W] -> `translated`, dynamic N, H and W
    (H, W dynamic as multiples of the architecture's size_multiple)."""
    m = spec["size_multiple"]
    low = max(1, g.min_size // m)  # the ResNet G needs 2 multiples (instance norm at its bottleneck)
    batch = torch.export.Dim("batch", min=1, max=4096)
    h = torch.export.Dim("h_blocks", min=low, max=4096 // m)
    w = torch.export.Dim("w_blocks", min=low, max=4096 // m)
    dynamic = {"x": {0: batch, 2: m * h, 3: m * w}}
    # Traced at twice the smallest size: at the U-Net's training size its bottleneck is 1x1 and
    # the exporter would specialise H and W to it. The graph still runs at the training size.
    side = max(spec["image_size"], 2 * m, low * m)
    example = torch.zeros(2, spec["channels"], side, side)
    to_onnx(g.eval(), (example,), path, ["images"], ["translated"], dynamic, metadata, opset)


def translator_parity(g: nn.Module, onnx_file: Path, spec: dict, tolerance: float) -> dict:
    """Max |ORT - torch| at batch 1 and 3 and at two spatial sizes, plus latency at batch 16."""
    session = create_session(onnx_file)
    diffs: dict[str, float] = {}
    gen = torch.Generator().manual_seed(0)
    for size in translator_sizes(spec):
        for n in (1, 3):
            x = torch.rand(n, spec["channels"], size, size, generator=gen) * 2 - 1
            with torch.no_grad():
                expected = g(x).numpy()
            got = session.run(["translated"], {"images": x.numpy()})[0]
            if got.shape != expected.shape:
                raise ExportError(f"ONNX output shape {got.shape} != PyTorch {expected.shape} at {n}x{size}x{size}")
            diffs[f"batch_{n}_{size}px"] = float(np.abs(got - expected).max())
    x = torch.rand(16, spec["channels"], spec["image_size"], spec["image_size"], generator=gen) * 2 - 1
    with torch.no_grad():
        torch_ms = _median_ms(lambda: g(x), repeats=5)
    ort_ms = _median_ms(lambda: session.run(["translated"], {"images": x.numpy()}), repeats=5)
    return _parity_report(diffs, "max_abs_diff_per_input", tolerance, session, ort_ms, torch_ms)


def export_translators(
    generator_path: Path | str,
    exports_dir: Path | str,
    opset: int = 18,
    tolerance: float = 1e-4,
    params_hash: str = "",
    card_path: Path | str | None = None,
) -> dict:
    """Export every direction of a trained translator (generator_AB.onnx, and
    generator_BA.onnx for CycleGAN), check each against PyTorch, write the model card.
    Raises ExportError, writing no model file, if any direction fails parity."""
    gens, spec = load_translators(generator_path)
    exports_dir = Path(exports_dir)
    exports_dir.mkdir(parents=True, exist_ok=True)
    results, metas = {}, {}
    with contextlib.ExitStack() as staged:  # all directions are renamed into place together, or none
        for direction, g in gens.items():
            tmp = staged.enter_context(atomic_path(exports_dir / layout.ONNX_TRANSLATORS[direction].name))
            metas[direction] = _translator_metadata(spec, direction, params_hash)
            export_translator(g, tmp, spec, metas[direction], opset)
            results[direction] = translator_parity(g, tmp, spec, tolerance)
            if not results[direction]["parity_passed"]:
                raise ExportError(
                    f"generator_{direction}: ONNX output differs from PyTorch by "
                    f"{results[direction]['max_abs_diff']:.3g} > tolerance {tolerance}; nothing written"
                )
    worst = max(r["max_abs_diff"] for r in results.values())
    metrics = {
        "parity_passed": True,
        "max_abs_diff": worst,
        "tolerance": tolerance,
        "directions": results,
        "opset": opset,
        "onnx_bytes": {d: (exports_dir / layout.ONNX_TRANSLATORS[d].name).stat().st_size for d in gens},
    }
    if card_path:
        write_json(card_path, translator_card(spec, metas, metrics))
    return metrics


def translator_card(spec: dict, metas: dict[str, dict], metrics: dict) -> dict:
    shape = ["N", spec["channels"], "H", "W"]
    return {
        "task": "translate",
        "files": {d: layout.ONNX_TRANSLATORS[d].name for d in metas},
        "inputs": [{"name": "images", "dtype": "float32", "shape": shape, "range": [-1.0, 1.0],
                    "from_uint8": "x / 127.5 - 1"}],
        "outputs": [{"name": "translated", "dtype": "float32", "shape": shape, "range": [-1.0, 1.0],
                     "to_uint8": "round((x + 1) * 127.5)"}],
        "dynamic_axes": ["N", "H", "W"],
        "size_multiple": spec["size_multiple"],
        "trained_size": spec["image_size"],
        "note": f"H and W must be multiples of {spec['size_multiple']}; the model was trained at "
                f"{spec['image_size']}x{spec['image_size']} and is checked at {list(translator_sizes(spec))} px",
        "metadata_props": metas,
        "parity": {k: metrics[k] for k in ("parity_passed", "max_abs_diff", "tolerance")},
    }  # fmt: skip
