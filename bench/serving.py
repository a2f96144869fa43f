"""Serving: ONNX Runtime vs PyTorch, images/s at batch 1 and 64, for each kind of model the
project exports (untrained, seeded weights: speed does not depend on them)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort
import torch
from common import Context, fmt, rates
from torch import nn

from pipeline.artifacts import read_json
from pipeline.config import Params, parse_params, read_yaml
from pipeline.export import _translator_metadata, export_generator, export_translator
from pipeline.inference import OnnxGenerator, OnnxTranslator
from pipeline.models import build_generator
from pipeline.models.artifact import generator_spec, save_model, translator_spec

ROOT = Path(__file__).resolve().parents[1]
BATCHES = (1, 64)
SEED = 0


@dataclass(frozen=True)
class Kind:
    key: str
    title: str
    params: Params
    translator: bool = False


def kinds() -> list[Kind]:
    """The five exported model kinds, each with the settings of the config that trains it."""

    def config(name: str) -> dict:
        return read_yaml(ROOT / "configs" / f"{name}.yaml")

    resnet = parse_params({"model": {"arch": "resnet", "conditional": True}})
    stylegan2 = parse_params({"model": config("stylegan2-digits")["model"]})
    return [
        Kind("dcgan", "DCGAN generator (default)", Params()),
        Kind("resnet_conditional", "conditional ResNet generator", resnet),
        Kind("stylegan2", "StyleGAN2 generator (stylegan2-digits)", stylegan2),
        Kind("pix2pix", "pix2pix translator (glyphs-pix2pix)", parse_params(config("glyphs-pix2pix")), True),
        Kind("cyclegan", "CycleGAN translator A→B (glyphs-cyclegan)", parse_params(config("glyphs-cyclegan")), True),
    ]


def _export(kind: Kind, classes: list[str], folder: Path) -> tuple[nn.Module, Callable[[int], Callable], dict]:
    """Build the seeded model, export it as the export stage would, and return the PyTorch model, a factory
    `onnx_call(n)` of one ONNX Runtime call at batch n (CPU provider, as many threads as torch), and facts."""
    size, channels, threads = kind.params.data.image_size, kind.params.data.channels, torch.get_num_threads()
    torch.manual_seed(SEED)
    g = build_generator(kind.params.model, size, channels, len(classes) if kind.params.model.conditional else 0)
    g.eval()
    onnx_path = folder / f"{kind.key}.onnx"
    start = time.perf_counter()
    if kind.translator:  # one direction: a CycleGAN's two translators are the same network
        spec = translator_spec(kind.params, size, channels, g.size_multiple, g.min_size)
        export_translator(g, onnx_path, spec, _translator_metadata(spec, "AB", ""), kind.params.export.opset)
        model = OnnxTranslator(onnx_path, device="cpu", threads=threads)

        def onnx_call(n: int) -> Callable:
            x = _images(kind, n).numpy()
            return lambda: model.translate(x)

        shown_input = f"images [N, {channels}, {size}, {size}]"
    else:
        spec = generator_spec(kind.params, size, channels, classes)
        save_model(folder / f"{kind.key}.pt", spec, g.state_dict(), 0)
        export_generator(folder / f"{kind.key}.pt", onnx_path, kind.params.export.opset)
        model = OnnxGenerator(onnx_path, device="cpu", threads=threads)

        def onnx_call(n: int) -> Callable:
            return lambda: model.generate(n, seed=SEED)

        shown = {"z": f"z [N, {spec['model']['latent_dim']}]", "labels": "labels [N]",
                 "truncation_psi": "truncation_psi (left at its default)"}  # fmt: skip
        shown_input = ", ".join(shown[i] for i in model.info.inputs)
    facts = {
        "arch": kind.params.model.arch,
        "title": kind.title,
        "input": shown_input,
        "output": f"{'translated' if kind.translator else 'images'} [N, {channels}, {size}, {size}]",
        "parameters": sum(p.numel() for p in g.parameters()),
        "onnx_bytes": onnx_path.stat().st_size,
        "export_and_load_s": round(time.perf_counter() - start, 2),
        "providers": model.providers,
    }
    return g, onnx_call, facts


def _images(kind: Kind, n: int) -> torch.Tensor:
    """A translator's seeded input batch, in [-1, 1]."""
    size = kind.params.data.image_size
    return torch.rand(n, kind.params.data.channels, size, size, generator=torch.Generator().manual_seed(n)) * 2 - 1


def _torch_call(kind: Kind, g: nn.Module, n: int, classes: int, device: torch.device) -> Callable:
    """One PyTorch call at batch n on `device`: fresh noise (and cycled labels) per call, as ONNX Runtime gets."""
    if kind.translator:
        x = _images(kind, n).to(device)
        return torch.inference_mode()(lambda: g(x))
    labels = torch.arange(n, device=device) % classes if classes else None
    latent = kind.params.model.latent_dim
    return torch.inference_mode()(lambda: g(torch.randn(n, latent, device=device), labels))


def run(ctx: Context) -> dict:
    classes = read_json(ctx.prepared / "manifest.json")["classes"]
    folder = ctx.tmp / "serving"
    folder.mkdir(parents=True, exist_ok=True)
    cuda = ctx.device.type == "cuda"
    cpu, repeats = torch.device("cpu"), ctx.repeats()
    seconds = 0.05 if ctx.quick else 0.5  # per repeat
    models = {}
    # quick: the default generator alone (each ONNX export costs several seconds on 2 cores)
    for kind in kinds()[:1] if ctx.quick else kinds():
        g, onnx_call, facts = _export(kind, classes, folder)
        k = len(classes) if kind.params.model.conditional else 0
        batches = {n: {"onnxruntime_cpu": rates(onnx_call(n), n, seconds, repeats, cpu),
                       "torch_cpu": rates(_torch_call(kind, g, n, k, cpu), n, seconds, repeats, cpu)}
                   for n in BATCHES}  # fmt: skip
        if cuda:
            g.to(ctx.device)
            for n in BATCHES:
                batches[n]["torch_cuda"] = rates(_torch_call(kind, g, n, k, ctx.device), n, seconds, repeats,
                                                 ctx.device)  # fmt: skip
        models[kind.key] = facts | {f"batch_{n}": b for n, b in batches.items()}
    return {
        "unit": "images/s",
        "batches": list(BATCHES),
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "device": str(ctx.device),
        "cuda_name": torch.cuda.get_device_name(ctx.device) if cuda else None,
        "versions": {"torch": torch.__version__, "onnxruntime": ort.__version__},
        "models": models,
    }


def markdown(result: dict) -> str:
    title = "### Serving: ONNX Runtime vs PyTorch"
    if "skipped" in result:
        return f"{title}\n\nSkipped: {result['skipped']}\n"
    cuda = result["cuda_name"] is not None
    head = ["model", "input → output", "parameters", "batch", "ONNX Runtime (CPU)", "PyTorch (CPU)", "ORT ÷ PyTorch"]
    head += [f"PyTorch ({result['cuda_name']})"] if cuda else []
    rows = []
    for m in result["models"].values():
        for n in result["batches"]:
            b = m[f"batch_{n}"]
            ratio = b["onnxruntime_cpu"]["median"] / b["torch_cpu"]["median"]
            cells = [m["title"], f"{m['input']} → {m['output']}", f"{m['parameters']:,}", str(n)]
            cells += [fmt(b["onnxruntime_cpu"]), fmt(b["torch_cpu"]), f"{ratio:.2f}×"]
            rows.append(cells + ([fmt(b.get("torch_cuda"))] if cuda else []))
    v = result["versions"]
    return "\n".join([
        title, "",
        f"Images per second (median of {result['repeats']} repeats, min–max) of each exported model kind, untrained "
        f"and seeded, at batch 1 and 64: ONNX Runtime {v['onnxruntime']} on the CPUExecutionProvider through "
        f"pipeline.inference (OnnxGenerator.generate with fresh noise per call, OnnxTranslator.translate) beside the "
        f"same network in PyTorch {v['torch']} (inference_mode), both on {result['threads']} CPU thread(s)"
        + (f", and PyTorch on {result['cuda_name']}" if cuda else "") + ".", "",
        "| " + " | ".join(head) + " |", "|" + "---|" * len(head), *("| " + " | ".join(r) + " |" for r in rows), "",
    ])  # fmt: skip
