"""The Open Inference Protocol v2 (the REST API of KServe and Triton) over the model that `ganpipe
serve` serves, named ServeConfig.model_name:

  GET  /v2/health/live         200 while the process answers
  GET  /v2/health/ready        200 once a model is loaded, else 503
  GET  /v2                     server metadata
  GET  /v2/models/{name}       the model's tensors: name, datatype, shape (-1: any size)
  GET  /v2/models/{name}/ready 200 once that model is loaded
  POST /v2/models/{name}/infer tensors in, the model's output tensors out

Each /v2/models/{name}/... route also takes the protocol's version segment, /v2/models/{name}/versions/
{version}/...: the version is the one the model metadata lists (the registry version, or the file
name); any other is 404.

The tensors are the ONNX model's own: a generator takes `z` FP32 [N, latent_dim] (and `labels`
INT64 [N] if conditional) and gives `images` FP32 [N, C, H, W]; a generator with truncation
(stylegan2) also takes the optional `truncation_psi` FP32 [1] (the whole batch) or [N] (one per
sample), 1 (no truncation) when left out. The model metadata lists it among the inputs (the
protocol's metadata has no way to mark a tensor optional). A generator trained with classes drawn
from its noise (ganpipe.noise_classes) has no labels input in its graph, yet takes the optional
`labels` INT64 [N] here too: the service turns each z into one of that class (the largest of its
first noise_classes entries trades places with the class's entry, as `ganpipe generate --class` and
/v1 do), so a client asks for a class as it would of a conditional model. A translator takes `images` and gives
`translated`. Tensor data is JSON (flat or nested, row-major) or, with Triton's binary tensor
extension (tritonclient's default), little-endian bytes after the JSON, whose length the header
Inference-Header-Content-Length gives. The limits, timeouts, token and admission of /v1 apply here
too; errors are {"error": "one line"}. Everything from the body to the response (parsing, arrays,
inference, the response's JSON) runs in the thread pool, in an inference slot; a body of 1 MiB or
more is parsed in a child process (see decode.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, StrictInt, StrictStr
from starlette.concurrency import run_in_threadpool

from pipeline.inference import MAX_PSI, PSI, ModelError, OnnxGenerator, OnnxTranslator, optional_inputs
from pipeline.serve import release
from pipeline.serve.common import (
    BINARY,
    ApiError,
    OipError,
    ascii_length,
    error_responses,
    header_value,
    parse_json,
    validate,
)
from pipeline.serve.config import ServeConfig
from pipeline.serve.decode import MIN_BYTES, as_array, decode_elsewhere, json_array
from pipeline.serve.deps import AUTH, Config, Holder, Limits
from pipeline.serve.holder import ModelHolder, Served

HEADER_LENGTH = "inference-header-content-length"
# ONNX Runtime's tensor types -> the protocol's datatype and NumPy's little-endian dtype
TYPES = {"tensor(float)": ("FP32", "<f4"), "tensor(double)": ("FP64", "<f8"), "tensor(float16)": ("FP16", "<f2"),
         "tensor(int64)": ("INT64", "<i8"), "tensor(int32)": ("INT32", "<i4"), "tensor(uint8)": ("UINT8", "|u1"),
         "tensor(bool)": ("BOOL", "|b1")}  # fmt: skip
JSON_KINDS = {"f": "iuf", "i": "iu", "u": "iu", "b": "b"}  # the JSON numbers a tensor of each kind takes


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1: a dimension of any size")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class RequestTensor(BaseModel):
    name: StrictStr
    shape: list[StrictInt]
    datatype: StrictStr
    parameters: dict[str, Any] = {}
    data: list[Any] | None = Field(None, description="row-major, flat or nested; absent with binary_data_size")


class RequestedOutput(BaseModel):
    name: StrictStr
    parameters: dict[str, Any] = {}


class InferRequest(BaseModel):
    id: StrictStr | None = None
    parameters: dict[str, Any] = {}
    inputs: list[RequestTensor] = Field(min_length=1)
    outputs: list[RequestedOutput] | None = Field(None, description="default: every output of the model")


class ResponseTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[ResponseTensor]


def _inline(schema: dict) -> dict:
    """A pydantic JSON schema with its $defs put in place of their $refs (those would point outside an operation)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            return walk(defs[ref.rsplit("/", 1)[1]]) if ref else {k: walk(v) for k, v in node.items()}
        return [walk(v) for v in node] if isinstance(node, list) else node

    return walk(schema)


def shown(text: str) -> str:
    """A name from the request, quoted, and cut short if long."""
    return repr(text) if len(text) <= 40 else f"{text[:20]!r}... ({len(text)} characters)"


def _shape(arg) -> list[int]:
    """An ONNX Runtime input's or output's shape, with -1 for each dynamic dimension."""
    return [d if isinstance(d, int) else -1 for d in arg.shape]


def _metadata(arg) -> dict:
    return {"name": arg.name, "datatype": TYPES[arg.type][0], "shape": _shape(arg)}


@dataclass(frozen=True)
class ServiceInput:
    """An input the service takes on the graph's behalf (shaped like an ONNX Runtime NodeArg)."""

    name: str
    type: str
    shape: list


def extra_inputs(model: OnnxGenerator | OnnxTranslator) -> list:
    """The inputs a run may leave out: the graph's optional ones, and `labels` [N] for a generator whose
    classes come from the noise (the service picks z of those classes; N is z's batch dimension)."""
    session = model.session
    extra = optional_inputs(session, model.info)
    if isinstance(model, OnnxGenerator) and model.info.noise_classes:
        z = next(a for a in session.get_inputs() if a.name == "z")
        extra.append(ServiceInput("labels", "tensor(int64)", [z.shape[0]]))
    return extra


def _array(tensor: RequestTensor, arg, binary: bytes, offset: int, dims: dict[str, int],
           parsed: np.ndarray | None = None) -> tuple[np.ndarray, int]:  # fmt: skip
    """One input as the model takes it, from its JSON data (or `parsed`, that data as an array already)
    or from `binary` at `offset`; and the offset after it."""
    where, (datatype, dtype) = f"input {tensor.name!r}", TYPES[arg.type]
    if tensor.datatype != datatype:
        raise ApiError(400, "wrong datatype", f"{where} is {datatype}, got {tensor.datatype}")
    shape = _shape(arg)
    if len(tensor.shape) != len(shape) or any(s < 1 or d not in (-1, s) for s, d in zip(tensor.shape, shape)):  # noqa: B905
        raise ApiError(400, "wrong shape", f"{where} has shape {shape} (-1: any size), got {tensor.shape}")
    for d, s in zip(arg.shape, tensor.shape, strict=True):
        if isinstance(d, str) and dims.setdefault(d, s) != s:
            raise ApiError(400, "wrong shape", f"{where}: its dimension {d!r} is {s} but {dims[d]} in another input")
    count, size = math.prod(tensor.shape), tensor.parameters.get("binary_data_size")
    if size is not None:
        need = count * np.dtype(dtype).itemsize
        if size != need or offset + need > len(binary):
            left = len(binary) - offset
            raise ApiError(400, "bad binary data", f"{where} of shape {tensor.shape} takes {need} bytes; "
                                                   f"binary_data_size is {size!r}, with {left} bytes left")  # fmt: skip
        return np.frombuffer(binary, dtype, count, offset).reshape(tensor.shape), offset + need
    if tensor.data is None:
        raise ApiError(400, "missing data", f"{where} has neither data nor binary_data_size")
    try:
        values = as_array(tensor.data) if parsed is None else parsed
    except ValueError:  # nested lists of unequal lengths
        raise ApiError(400, "bad data", f"{where}: data is not a regular array") from None
    if values.dtype.kind not in JSON_KINDS[np.dtype(dtype).kind] or values.size != count:
        raise ApiError(400, "bad data", f"{where} of shape {tensor.shape} takes {count} {datatype} values, got "
                                        f"{values.size} of {values.dtype}")  # fmt: skip
    return values.astype(dtype).reshape(tensor.shape), offset


def _feed(model: OnnxGenerator | OnnxTranslator, req: InferRequest, binary: bytes, cfg: ServeConfig,
          parsed: dict[int, np.ndarray] | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    """The request's inputs, checked against the model's and the service's limits (`parsed`: the JSON
    data of some of them, by index, as arrays already)."""
    required = [a.name for a in model.session.get_inputs()]
    args = {a.name: a for a in [*model.session.get_inputs(), *extra_inputs(model)]}
    optional = [n for n in args if n not in required]
    takes = f"{required}" + (f" and optionally {optional}" if optional else "")
    names = [t.name for t in req.inputs]
    for name in [*required, *names]:
        if name not in names or name not in args or names.count(name) > 1:
            problem = "missing" if name not in names else "unknown" if name not in args else "given twice"
            raise ApiError(400, f"{problem} input", f"{name!r}; the model takes {takes}")
    feed, offset, dims = {}, 0, {}
    for i, tensor in enumerate(req.inputs):
        feed[tensor.name], offset = _array(tensor, args[tensor.name], binary, offset, dims, (parsed or {}).get(i))
        if feed[tensor.name].dtype.kind == "f" and not np.isfinite(feed[tensor.name]).all():
            raise ApiError(400, "bad data", f"input {tensor.name!r} holds NaN or infinity")
    if offset != len(binary):
        raise ApiError(400, "bad binary data", f"{len(binary) - offset} bytes after the JSON belong to no input")
    if isinstance(model, OnnxTranslator):
        n, _, h, w = feed["images"].shape
        if n * h * w > cfg.max_pixels:
            raise ApiError(413, "image too large", f"input 'images': {n} x {h}x{w} pixels > {cfg.max_pixels}")
        return feed
    if len(feed["z"]) > cfg.max_n:
        raise ApiError(400, "batch too large", f"input 'z': a batch of {len(feed['z'])} > this service's {cfg.max_n}")
    if PSI in feed:  # ONNX Runtime would fail on another length, and w overflows far beyond MAX_PSI
        psi, n = feed[PSI], len(feed["z"])
        if len(psi) not in (1, n):
            raise ApiError(400, "wrong shape", f"input {PSI!r} takes 1 value (the whole batch) or {n} (one per "
                                               f"sample, as input 'z'), got {len(psi)}")  # fmt: skip
        if (np.abs(psi) > MAX_PSI).any():
            raise ApiError(400, "bad data", f"input {PSI!r}: values from -{MAX_PSI:g} to {MAX_PSI:g} (1: no "
                                            "truncation, 0: the average image)")  # fmt: skip
    count = model.info.classes
    if "labels" in feed and ((feed["labels"] < 0) | (feed["labels"] >= count)).any():
        names = f" ({model.info.class_names})" if model.info.class_names else ""
        raise ApiError(400, "bad labels", f"input 'labels': class indices are 0-{count - 1}{names}")
    if "labels" in feed:  # the graph's inputs for those classes: labels, or z of those classes (noise classes)
        feed |= model.feed(feed.pop("z"), feed.pop("labels"))
    return feed


def _output_names(model: OnnxGenerator | OnnxTranslator, req: InferRequest) -> list[str]:
    names = [o.name for o in model.session.get_outputs()]
    asked = [o.name for o in req.outputs or []]
    for name in asked:
        if name not in names:
            raise ApiError(400, "unknown output", f"output {name!r} is unknown; the model gives {names}")
        if asked.count(name) > 1:
            raise ApiError(400, "output given twice", f"outputs: {name!r} is asked for more than once")
    return [o.name for o in req.outputs] if req.outputs else names


def _run(model: OnnxGenerator | OnnxTranslator, feed: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
    if isinstance(model, OnnxTranslator):  # the same call as /v1/translate, with its checks of the image's size
        try:
            return [model.translate(feed["images"])]
        except ModelError as err:
            raise ApiError(400, "wrong shape", f"input 'images': {err}") from None
    return model.session.run(names, feed)


def _answer(name: str, served: Served, req: InferRequest, names: list[str], results: list[np.ndarray]) -> Response:
    """The response: JSON, with the tensors asked for in binary appended after it (binary tensor extension)."""
    types = {o.name: o.type for o in served.model.session.get_outputs()}
    default = req.parameters.get("binary_data_output", False)
    binary = {o.name: o.parameters.get("binary_data", default) for o in req.outputs or []}
    outputs, chunks = [], []
    for out, array in zip(names, results, strict=True):
        datatype, dtype = TYPES[types[out]]
        tensor: dict[str, Any] = {"name": out, "datatype": datatype, "shape": list(array.shape)}
        if binary.get(out, default) is True:
            chunks.append(np.ascontiguousarray(array, dtype).tobytes())
            tensor["parameters"] = {"binary_data_size": len(chunks[-1])}
        else:
            tensor["data"] = json_array(array)
        outputs.append(tensor)
    body = {"model_name": name, "model_version": served.name, **({} if req.id is None else {"id": req.id})}
    header = orjson.dumps({**body, "outputs": outputs})  # compact, as json's separators=(",", ":") was
    headers = {"x-model-version": header_value(served.name)}
    if not chunks:
        return Response(header, media_type="application/json", headers=headers)
    headers[HEADER_LENGTH] = str(len(header))
    return Response(header + b"".join(chunks), media_type="application/octet-stream", headers=headers)


def _errors(*statuses: int) -> dict:
    return error_responses(*statuses, body=OipError, why={400: "the inference request is malformed or does not "
                                                               "fit the model's inputs"})  # fmt: skip


def model_of(request: Request, cfg: ServeConfig, holder: ModelHolder) -> Served:
    """The served model, if the path names it (and, under /versions/{version}, its version)."""
    name, asked = request.path_params["name"], request.path_params.get("version")
    if name != cfg.model_name:
        raise ApiError(404, "unknown model", f"{shown(name)}; this server serves {cfg.model_name!r}")
    served = holder.require()
    if asked is not None and asked != served.name:
        raise ApiError(404, "unknown version", f"model {name!r} has no version {shown(asked)}; this server "
                                               f"serves version {served.name!r}")  # fmt: skip
    return served


# `name` and `version` declared here, not as function parameters: FastAPI would add a 422 that a string never gets
def _path(*names: str) -> dict:
    string = {"type": "string"}
    return {"parameters": [{"name": n, "in": "path", "required": True, "schema": string} for n in names]}


PATH_NAME, PATH_VERSION = _path("name"), _path("name", "version")
VERSIONED = "/v2/models/{name}/versions/{version}"  # the protocol's optional version segment

router = APIRouter()


@router.get("/v2/health/live")
def live():
    return {"live": True}


@router.get("/v2/health/ready", responses=_errors(503))
def ready(holder: Holder):
    holder.require()
    return {"ready": True}


@router.get("/v2")
def server_metadata():
    return {"name": "ganpipe", "version": release() or "unknown", "extensions": ["binary_tensor_data"]}


@router.get("/v2/models/{name}", dependencies=AUTH, response_model=ModelMetadata, openapi_extra=PATH_NAME,
            responses=_errors(401, 404, 503))  # fmt: skip
@router.get(VERSIONED, dependencies=AUTH, response_model=ModelMetadata, openapi_extra=PATH_VERSION,
            responses=_errors(401, 404, 503))  # fmt: skip
def model_metadata(request: Request, cfg: Config, holder: Holder):
    served = model_of(request, cfg, holder)
    session = served.model.session
    return {"name": cfg.model_name, "versions": [served.name], "platform": "onnxruntime_onnx",
            "inputs": [_metadata(a) for a in [*session.get_inputs(), *extra_inputs(served.model)]],
            "outputs": [_metadata(a) for a in session.get_outputs()]}  # fmt: skip


@router.get("/v2/models/{name}/ready", openapi_extra=PATH_NAME, responses=_errors(404, 503))
@router.get(f"{VERSIONED}/ready", openapi_extra=PATH_VERSION, responses=_errors(404, 503))
def model_ready(request: Request, cfg: Config, holder: Holder):
    model_of(request, cfg, holder)
    return {"name": cfg.model_name, "ready": True}


INFER_BODY = {"required": True, "description": "JSON; with the binary tensor extension, that JSON (as many bytes "
                                               "as Inference-Header-Content-Length says), then the tensors' bytes",
              "content": {"application/json": {"schema": _inline(InferRequest.model_json_schema())},
                          "application/octet-stream": BINARY}}  # fmt: skip
ANSWER = {"model": InferResponse, "content": {"application/octet-stream": BINARY},
          "description": "JSON; binary outputs asked for are appended to it (binary tensor extension)"}  # fmt: skip


@router.post("/v2/models/{name}/infer", dependencies=AUTH, response_class=Response,
             openapi_extra={**PATH_NAME, "requestBody": INFER_BODY},
             responses={200: ANSWER, **_errors(400, 401, 404, 408, 413, 503)})  # fmt: skip
@router.post(f"{VERSIONED}/infer", dependencies=AUTH, response_class=Response,
             openapi_extra={**PATH_VERSION, "requestBody": INFER_BODY},
             responses={200: ANSWER, **_errors(400, 401, 404, 408, 413, 503)})  # fmt: skip
async def infer(request: Request, cfg: Config, holder: Holder, limiter: Limits):
    served = await run_in_threadpool(model_of, request, cfg, holder)  # kept to the end: a swap does not cut it off
    given = request.headers.get(HEADER_LENGTH)

    def work(body: bytes) -> Response:
        """Everything from the body to the response, in the thread pool: parsing 8 MiB of JSON numbers,
        turning them into arrays and a 1024² result into JSON took seconds of the event loop."""
        length = len(body) if given is None else ascii_length(given, len(body))
        if length is None:
            raise ApiError(400, "bad header", f"Inference-Header-Content-Length {shown(given)} is not a length "
                                              f"within the body's {len(body)} bytes")  # fmt: skip
        decoded = decode_elsewhere(body[:length]) if length >= MIN_BYTES else None
        if decoded is None:
            req, parsed = parse_json(body[:length], InferRequest, invalid=400), None
        else:
            req, parsed = validate(decoded[0], InferRequest, invalid=400), decoded[1]
        feed = _feed(served.model, req, body[length:], cfg, parsed)
        names = _output_names(served.model, req)
        return _answer(cfg.model_name, served, req, names, _run(served.model, feed, names))

    async with limiter.body(request, cfg.max_upload_bytes) as body, limiter.admit():
        return await limiter.run(work, body)
