"""The /v1 routes: the model's metadata, /v1/generate and /v1/translate."""

from __future__ import annotations

import io
import json

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.formparsers import MultiPartException, MultiPartParser

from pipeline.grid import make_grid, png_bytes
from pipeline.image_input import IMAGE_FORMATS, ImageRejected, open_image
from pipeline.inference import ModelError, OnnxGenerator, OnnxTranslator
from pipeline.serve.common import BINARY, ApiError, error_responses, header_value, media_type, parse_json
from pipeline.serve.deps import AUTH, Config, Holder, Limits
from pipeline.serve.schemas import GeneratedArray, GenerateRequest

MAX_JSON_BYTES = 1 << 20  # a /v1/generate body; generous for max_n labels, small enough to parse at once
IMAGE_TYPES = [f"image/{fmt.lower()}" for fmt in IMAGE_FORMATS]  # what the decoder reads; any image/* type is let in
MODEL_VERSION = {"x-model-version": {"description": "the registry version, or the model file's name (as UTF-8, "
                                                    "percent-encoded outside printable ASCII)",
                                    "schema": {"type": "string"}, "required": True}}  # fmt: skip

router = APIRouter()


@router.get("/v1/model", dependencies=AUTH, responses=error_responses(401, 503))
def model_meta(cfg: Config, holder: Holder):
    served = holder.require()
    model, info = served.model, served.model.info
    out = {"file": served.path.name, "version": served.version, "task": info.task, "arch": info.arch,
           "image_size": info.image_size, "channels": info.channels, "latent_dim": info.latent_dim,
           "num_classes": info.num_classes, "class_names": info.class_names, "inputs": info.inputs,
           "classes": info.classes, "noise_classes": info.noise_classes,
           "truncation": info.truncation, "providers": model.providers,
           "loaded_at": served.loaded_at, "metadata": info.metadata,
           "limits": {"max_n": cfg.max_n, "max_upload_bytes": cfg.max_upload_bytes,
                      "max_pixels": cfg.max_pixels, "max_concurrency": cfg.max_concurrency,
                      "max_queue": cfg.max_queue}}  # fmt: skip
    if isinstance(model, OnnxTranslator):
        out.update(direction=model.direction, size_multiple=model.size_multiple, min_size=model.min_size)
    return out


AS_CURL_SENDS_IT = {"schema": {"type": "string", "contentMediaType": "application/json",
                               "description": "the application/json body, sent as `curl -d` does"}}  # fmt: skip
# application/json's schema is the service's own, bounded by its max_n: see schemas.openapi_with_labels
GENERATE_BODY = {"required": True, "content": {"application/json": {"schema": GenerateRequest.model_json_schema()},
                                               "application/x-www-form-urlencoded": AS_CURL_SENDS_IT}}  # fmt: skip
GENERATED = {"description": "the images: a PNG grid (format png), a NumPy .npy array (npy), or JSON (json)",
             "headers": {**MODEL_VERSION, "x-seed": {"schema": {"type": "string"}, "required": True}},
             "content": {"image/png": BINARY, "application/octet-stream": BINARY,
                         "application/json": {"schema": GeneratedArray.model_json_schema()}}}  # fmt: skip


@router.post("/v1/generate", dependencies=AUTH, response_class=Response, openapi_extra={"requestBody": GENERATE_BODY},
             responses={200: GENERATED, **error_responses(400, 401, 408, 409, 413, 415, 422, 503)})  # fmt: skip
async def generate(request: Request, holder: Holder, limiter: Limits):
    served = await run_in_threadpool(holder.require)  # kept to the end: a swap does not cut this request off
    model = served.model
    if not isinstance(model, OnnxGenerator):
        raise ApiError(409, "wrong endpoint", f"the served model is a {model.info.task!r} model: use /v1/translate")
    if media_type(request) not in ("application/json", "application/x-www-form-urlencoded"):
        raise ApiError(415, "unsupported content type", "send the request as Content-Type: application/json")
    async with limiter.body(request, MAX_JSON_BYTES) as body, limiter.admit():
        req = await run_in_threadpool(parse_json, body, request.app.state.request_model)
        try:
            labels = model.resolve_labels(len(req.seeds) if req.seeds else req.n, req.labels)
        except ModelError as err:
            raise ApiError(400, "bad labels", str(err)) from None
        psi = req.truncation_psi
        if psi is not None and not model.info.truncation:
            raise ApiError(400, "bad truncation_psi", f"truncation_psi: the served model (arch {model.info.arch}) "
                                                      "has no truncation input; leave it out or null")  # fmt: skip

        def work() -> tuple[bytes, str]:
            if req.seeds:  # image i: what n=1, seed=seeds[i] and its label give
                images = np.concatenate([model.generate(1, seed, None if labels is None else [int(labels[i])],
                                                        truncation_psi=psi)
                                         for i, seed in enumerate(req.seeds)])  # fmt: skip
            else:
                images = model.generate(req.n, req.seed, req.labels, truncation_psi=psi)
            if req.format == "npy":
                buf = io.BytesIO()
                np.save(buf, images)
                return buf.getvalue(), "application/octet-stream"
            if req.format == "json":
                as_json = {"shape": list(images.shape), "images": images.round(5).tolist()}
                return json.dumps(as_json, separators=(",", ":")).encode(), "application/json"
            return png_bytes(make_grid(images, nrow=req.nrow), scale=2), "image/png"

        content, content_type = await limiter.run(work)
    seeds = ",".join(map(str, req.seeds or [req.seed]))
    headers = {"x-model-version": header_value(served.name), "x-seed": seeds}
    return Response(content, media_type=content_type, headers=headers)


async def _uploaded_file(request: Request, body: bytes) -> bytes:
    """The multipart field `file` of a body already read (so within the upload limit), as `curl -F file=@x` sends it."""

    async def chunks():
        yield body

    try:
        form = await MultiPartParser(request.headers, chunks(), max_files=1, max_fields=16).parse()
    except MultiPartException as err:
        raise ApiError(400, "malformed multipart body", err.message) from None
    try:
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise ApiError(400, "missing field", "send the image as the multipart file field 'file' (curl -F file=@x)")
        return await upload.read()
    finally:
        await form.close()


FORM = {"schema": {"type": "object", "properties": {"file": BINARY["schema"]}, "required": ["file"]},
        "encoding": {"file": {"contentType": ", ".join(IMAGE_TYPES)}}}  # fmt: skip
TRANSLATE_BODY = {"required": True, "content": {**dict.fromkeys(IMAGE_TYPES, BINARY), "multipart/form-data": FORM}}
TRANSLATED = {"description": "the translated image, at the input's size", "headers": MODEL_VERSION,
              "content": {"image/png": BINARY}}  # fmt: skip


@router.post("/v1/translate", dependencies=AUTH, response_class=Response,
             openapi_extra={"requestBody": TRANSLATE_BODY},
             responses={200: TRANSLATED, **error_responses(400, 401, 408, 409, 413, 415, 503)})  # fmt: skip
async def translate(request: Request, cfg: Config, holder: Holder, limiter: Limits):
    served = await run_in_threadpool(holder.require)
    model = served.model
    if not isinstance(model, OnnxTranslator):
        raise ApiError(409, "wrong endpoint", f"the served model is a {model.info.task!r} model: use /v1/generate")
    ctype = media_type(request)
    if not ctype.startswith("image/") and ctype != "multipart/form-data":
        raise ApiError(415, "unsupported content type", f"got {ctype or 'none'!r}; send the image with image/* "
                                                        "or as multipart/form-data")  # fmt: skip
    async with limiter.body(request, cfg.max_upload_bytes) as body, limiter.admit():
        if ctype == "multipart/form-data":
            body = await _uploaded_file(request, body)
        if not body:
            raise ApiError(400, "empty body", "send the image file as the request body")

        def work() -> bytes:
            try:
                result = model.translate_image(open_image(body, cfg.max_pixels), cfg.max_pixels)
            except ImageRejected as err:
                if err.too_large:
                    raise ApiError(413, "image too large", str(err)) from None
                raise ApiError(400, "not an image", str(err)) from None
            out = io.BytesIO()
            result.save(out, format="PNG")
            return out.getvalue()

        png = await limiter.run(work)
    return Response(png, media_type="image/png", headers={"x-model-version": header_value(served.name)})
