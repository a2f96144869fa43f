"""What the endpoints of `ganpipe serve` share, /v1 and the Open Inference Protocol alike: refused
requests (ApiError) and their bodies and OpenAPI responses, and bodies read with a size limit
before anything is parsed."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote

import orjson
from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError

RETRY_AFTER_S = 1
BINARY = {"schema": {"type": "string", "format": "binary"}}  # OpenAPI's media type object for raw bytes
M = TypeVar("M", bound=BaseModel)


class ApiError(Exception):
    """A refused request, answered with `status` and {"error": error, "detail": detail}
    (under /v2, the Open Inference Protocol's {"error": "error: detail"})."""

    def __init__(self, status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None):
        super().__init__(error)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers


class ErrorBody(BaseModel):
    """Every refused /v1 request's body."""

    error: str = Field(description="what went wrong, in a few stable words")
    detail: Any = Field(description="why: a sentence, or a list of {field, problem}")


class OipError(BaseModel):
    """Every refused /v2 request's body, as the Open Inference Protocol has it."""

    error: str = Field(description="what went wrong and why, in one line")


WHY = {
    400: "the body cannot be read: malformed JSON, not an image, unknown labels, truncation_psi for a model without "
    "truncation",
    408: "the body did not arrive within the service's body timeout (the connection is closed)",
    401: "a bearer token is required (the service was started with one) and was missing or wrong",
    404: "no model of that name is served",
    409: "the served model is for the other endpoint",
    413: "the body or the image is too large",
    415: "wrong Content-Type",
    422: "the JSON does not match the request schema",
    503: "overloaded (as many requests as the service admits are in progress), or no model is loaded yet; "
    "retry after Retry-After",
}


def error_responses(*statuses: int, body: type[BaseModel] = ErrorBody, why: dict[int, str] | None = None) -> dict:
    """The OpenAPI responses of those error statuses, each with the `body` schema."""
    why = {**WHY, **(why or {})}
    out: dict[int, dict] = {s: {"model": body, "description": why[s]} for s in statuses}
    if 401 in out:
        out[401]["headers"] = {"www-authenticate": {"schema": {"type": "string"}, "required": True}}
    if 503 in out:
        out[503]["headers"] = {"retry-after": {"description": "seconds", "schema": {"type": "integer", "minimum": 0},
                                               "required": True}}  # fmt: skip
    return out


def one_line(error: str, detail: Any) -> str:
    """An error and its detail (a sentence or a list of {field, problem}) as one line."""
    if isinstance(detail, list):
        detail = "; ".join(f"{p['field']}: {p['problem']}" if isinstance(p, dict) else str(p) for p in detail)
    return f"{error}: {' '.join(str(detail).split())}" if detail else error


def error_response(request: Request, status: int, error: str, detail: Any = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:  # fmt: skip
    if request.url.path.startswith("/v2"):
        return JSONResponse({"error": one_line(error, detail)}, status_code=status, headers=headers)
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def problems(errors: list[dict]) -> list[dict]:
    return [{"field": ".".join(str(p) for p in e["loc"] if p != "body") or "body", "problem": e["msg"]}
            for e in errors]  # fmt: skip


def header_value(text: str) -> str:
    """`text` as an HTTP header value: printable ASCII as it is, anything else (non-ASCII, CR, LF, and
    "%" itself) percent-encoded as UTF-8. Starlette encodes header values as Latin-1, so a model file
    named `gen✓.onnx` made every response a 500, and h11 refuses CR and LF (the connection dropped)."""
    return "".join(c if " " <= c <= "~" and c != "%" else quote(c, safe="") for c in text)


def ascii_length(value: str, limit: int) -> int | None:
    """A length header as an int, or None unless it is ASCII digits (str.isdigit() is also true of
    "²", which int() refuses) and at most `limit` (int() refuses more than 4300 digits)."""
    if not (value.isascii() and value.isdigit()) or len(value) > len(str(limit)) or int(value) > limit:
        return None
    return int(value)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_body(request: Request, limit: int, timeout_s: float | None = None,
                    reserve: Callable[[int], None] | None = None) -> bytes:  # fmt: skip
    """The body, refused with 413 as soon as it is declared or found to exceed `limit` bytes, and with
    408 (and the connection closed) unless all of it has arrived within `timeout_s` seconds: a client
    that sends a byte every few seconds is never idle long enough for any idle timeout. `reserve(n)`
    is called before each chunk of n bytes is kept (it may refuse it by raising)."""
    declared = ascii_length(request.headers.get("content-length", ""), 2**63)
    if declared is not None and declared > limit:
        raise ApiError(413, "upload too large", f"{declared} bytes > {limit}")
    body = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in request.stream():
                if len(body) + len(chunk) > limit:
                    raise ApiError(413, "upload too large", f"more than {limit} bytes")
                if reserve is not None:
                    reserve(len(chunk))
                body += chunk
    except TimeoutError:
        raise ApiError(408, "request timeout", f"the body did not arrive within {timeout_s:g} s ({len(body)} bytes "
                                               "came)", headers={"Connection": "close"}) from None  # fmt: skip
    return bytes(body)


def parse_json(body: bytes, model: type[M], invalid: int = 422) -> M:
    """`body` as JSON validated by `model`: 400 if it is not JSON Python can parse, `invalid` if it does not fit.
    Parsed by orjson, which holds the GIL (and so stalls the event loop, even from a thread) about a quarter as
    long as json does on large bodies of numbers; what orjson refuses (NaN, integers beyond 64 bits, nesting
    beyond 1024) goes to json, whose answers and messages are the service's."""
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError:
        raw = _loads(body)
    return validate(raw, model, invalid)


def validate(raw: Any, model: type[M], invalid: int = 422) -> M:
    """Parsed JSON validated by `model`; `invalid` if it does not fit."""
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        raise ApiError(invalid, "invalid request", problems(err.errors())) from None


def _loads(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ApiError(400, "malformed JSON", [{"field": "body", "problem": str(err)}]) from None
    except ValueError as err:  # valid JSON that Python will not parse: an integer of more than 4300 digits
        raise ApiError(400, "unsupported JSON", [{"field": "body", "problem": str(err)}]) from None
    except RecursionError:
        problem = f"arrays or objects nested too deep (more than {sys.getrecursionlimit()} levels)"
        raise ApiError(400, "unsupported JSON", [{"field": "body", "problem": problem}]) from None
