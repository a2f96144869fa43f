"""What the routers share, as FastAPI dependencies: create_app puts one service's config, model
holder and limiter on `app.state`, and a route asks for those it uses by annotating a parameter
(`holder: Holder`). None of them adds a parameter to the OpenAPI schema."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from pipeline.serve.common import ApiError
from pipeline.serve.config import TOKEN_ENV, ServeConfig
from pipeline.serve.holder import ModelHolder
from pipeline.serve.limits import Limiter

# The getters are async so that they run on the event loop: FastAPI runs a plain def in the thread pool.


async def _config(request: Request) -> ServeConfig:
    return request.app.state.cfg


async def _holder(request: Request) -> ModelHolder:
    return request.app.state.holder


async def _limiter(request: Request) -> Limiter:
    return request.app.state.limiter


Config = Annotated[ServeConfig, Depends(_config)]
Holder = Annotated[ModelHolder, Depends(_holder)]
Limits = Annotated[Limiter, Depends(_limiter)]


def require_token(request: Request) -> None:
    """401 unless the request carries the service's bearer token (when it was started with one)."""
    token = request.app.state.cfg.token
    if not token:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise ApiError(401, "unauthorized", f"send 'Authorization: Bearer <token>' ({TOKEN_ENV})",
                       headers={"WWW-Authenticate": "Bearer"})  # fmt: skip


AUTH = [Depends(require_token)]  # a route's `dependencies` when it needs the token
