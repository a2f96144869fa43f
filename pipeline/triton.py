"""Exported ONNX models as a Triton Inference Server model repository (`ganpipe export-triton`).

    <out>/<name>/config.pbtxt           Triton's model configuration: onnxruntime backend, dynamic
                                        batching, the file's ganpipe.* metadata as `parameters`
    <out>/<name>/<version>/model.onnx   the exported file, byte for byte

A generator becomes one model (`generator`), a translator one per direction (`generator_AB`,
`generator_BA`). The configuration is read off the file as ONNX Runtime loads it, which is what
Triton's onnxruntime backend checks it against: names, types, and the dims after the batch
dimension, -1 where the model is dynamic (a translator's H and W). An input that is only the
batch dimension (`labels` [N]) is declared as dims [1] reshaped to [], as Triton requires. An
optional input (`truncation_psi` of a stylegan2 generator: an initializer ONNX Runtime lets a
request override, listed in `ganpipe.inputs`) is declared `optional: true`, one value per sample
(a client sends [N, 1]); a request without it gets the file's default (1: no truncation).

Each model folder is built under a temporary name beside its target and renamed into place once
complete; an existing one is replaced only with `force`. Other models in the repository are kept.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from pathlib import Path

from google.protobuf import text_encoding

from pipeline.artifacts import atomic_path
from pipeline.errors import UserError
from pipeline.inference import ModelError, create_session, model_info, optional_inputs

TYPES = {"tensor(float)": "TYPE_FP32", "tensor(int64)": "TYPE_INT64"}  # what ganpipe's exports use
DEFAULT_MAX_BATCH = {"generate": 64, "translate": 8}  # a translator's batch holds whole images of any size
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a folder name Triton and URLs take as is


class TritonError(UserError, ValueError):
    """A model that cannot be put in a Triton repository, or a repository that cannot be written."""


def _quote(text: str) -> str:
    return '"' + text_encoding.CEscape(text, as_utf8=True) + '"'


def _tensors(kind: str, args: list, path: Path, optional: frozenset[str] = frozenset()) -> str:
    """The `input [...]` or `output [...]` block: non-batch dims, -1 where the model is dynamic; the
    inputs named in `optional` marked so (Triton then runs requests that leave them out)."""
    entries = []
    for arg in args:
        if arg.type not in TYPES:
            raise TritonError(f"{path}: {kind} {arg.name!r} is {arg.type}; only {', '.join(TYPES)} are supported")
        if not arg.shape or isinstance(arg.shape[0], int):
            raise TritonError(f"{path}: {kind} {arg.name!r} has shape {arg.shape}, without a dynamic batch "
                              "dimension first; Triton cannot batch it")  # fmt: skip
        dims = [d if isinstance(d, int) else -1 for d in arg.shape[1:]]
        shape = f"dims: [ {', '.join(map(str, dims))} ]" if dims else "dims: [ 1 ] reshape: { shape: [ ] }"
        flag = " optional: true" if arg.name in optional else ""
        entries.append(f"  {{ name: {_quote(arg.name)} data_type: {TYPES[arg.type]} {shape}{flag} }}")
    return f"{kind} [\n" + ",\n".join(entries) + "\n]\n"


def model_config(path: Path, name: str = "generator", max_batch_size: int | None = None, gpu: bool = False,
                 queue_delay_us: int = 100, parameters: dict[str, str] | None = None) -> tuple[str, str]:  # fmt: skip
    """The Triton model name of one exported file (`name`; `<name>_<direction>` for a translator)
    and its config.pbtxt."""
    try:
        session = create_session(path, device="cpu", threads=1)
        info = model_info(session, path)
    except ModelError as err:  # ONNX Runtime's messages span lines
        raise TritonError(" ".join(str(err).split())) from None
    if info.task not in DEFAULT_MAX_BATCH:
        raise TritonError(f"{path}: unknown ganpipe.task {info.task!r} (expected 'generate' or 'translate')")
    if info.task == "translate":
        name = f"{name}_{info.metadata.get('ganpipe.direction', 'AB')}"
    batch = max_batch_size or DEFAULT_MAX_BATCH[info.task]
    preferred = ", ".join(map(str, sorted({max(1, batch // 2), batch})))
    meta = {k: v for k, v in info.metadata.items() if k.startswith("ganpipe.")} | (parameters or {})
    optional = optional_inputs(session, info)
    text = (
        f'name: {_quote(name)}\nplatform: "onnxruntime_onnx"\nbackend: "onnxruntime"\nmax_batch_size: {batch}\n'
        + _tensors("input", [*session.get_inputs(), *optional], path, frozenset(a.name for a in optional))
        + _tensors("output", session.get_outputs(), path)
        + f"dynamic_batching {{ preferred_batch_size: [ {preferred} ] "
        f"max_queue_delay_microseconds: {queue_delay_us} }}\n"
        + f"instance_group [ {{ count: 1 kind: {'KIND_GPU' if gpu else 'KIND_CPU'} }} ]\n"
        + "".join(f"parameters {{ key: {_quote(k)} value: {{ string_value: {_quote(v)} }} }}\n"
                  for k, v in sorted(meta.items()))
    )  # fmt: skip
    return name, text


def write_repository(sources: list[Path], out: Path | str, name: str = "generator", version: int = 1,
                     force: bool = False, **config) -> list[Path]:  # fmt: skip
    """Write one Triton model per exported file into the repository `out`; return their folders.
    A translator's model is named `<name>_<direction>`. Every file is read and checked before
    anything is written; `config` goes to model_config (max_batch_size, gpu, queue_delay_us, parameters)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TritonError(f"{out}: is a file; the output is the model repository folder")
    models: dict[str, tuple[Path, str]] = {}
    for src in map(Path, sources):
        model, text = model_config(src, name, **config)
        if model in models:
            raise TritonError(f"{src} and {models[model][0]} would both be Triton model {model!r}")
        models[model] = (src, text)
    taken = [out / m for m in models if (out / m).exists() or (out / m).is_symlink()]
    if taken and not force:
        raise TritonError(f"{taken[0]}: already exists; pass --force to replace that model folder")
    try:
        with contextlib.ExitStack() as staged:  # all are built before any is renamed into place
            for model, (src, text) in models.items():
                tmp = staged.enter_context(atomic_path(out / model))
                (tmp / str(version)).mkdir(parents=True)
                shutil.copyfile(src, tmp / str(version) / "model.onnx")
                (tmp / "config.pbtxt").write_text(text)
    except OSError as err:
        raise TritonError(f"{err.filename or out}: cannot write: {err.strerror or err}") from None
    return [out / m for m in models]
