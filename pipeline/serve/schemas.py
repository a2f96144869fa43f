"""The /v1 request and response schemas, and the OpenAPI document as the served model and this
service's limits have it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import FastAPI
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, create_model

from pipeline.inference import MAX_PSI, OnnxGenerator, OnnxTranslator


def _whole_number(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


# JSON Schema's "integer" is any number without a fractional part, 3.0 included; strings and booleans are not.
JsonInt = Annotated[StrictInt, BeforeValidator(_whole_number)]
# bounds inside Annotated: given to Field, pydantic writes them into an anyOf (`| None`) as "ge"/"le", not JSON Schema
Seed = Annotated[StrictInt, Field(ge=0, le=2**63 - 1), BeforeValidator(_whole_number)]
SEEDS = "one image per seed, each the image that seed alone gives; n and seed are then not used"
# NaN and infinity (which Python's JSON parser reads) are refused here, as 422 naming the field
Psi = Annotated[StrictFloat, Field(ge=-MAX_PSI, le=MAX_PSI, allow_inf_nan=False)]
PSI_HELP = (
    "truncation, for models that take it (GET /v1/model: truncation): 1 or null = none, lower = each image "
    "pulled towards the average image (more typical, less varied), 0 = that one image for every seed"
)


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: JsonInt = Field(16, ge=1, description="number of images")  # le: the service's max_n, see request_model
    seed: JsonInt = Field(0, ge=0, le=2**63 - 1)
    seeds: Annotated[list[Seed], Field(min_length=1, max_length=64)] | None = Field(None, description=SEEDS)
    labels: list[StrictStr | JsonInt] | None = Field(None, description="class names or indices, cycled")
    truncation_psi: Psi | None = Field(None, description=PSI_HELP)
    format: Literal["png", "npy", "json"] = "png"
    nrow: Annotated[StrictInt, Field(ge=1, le=64), BeforeValidator(_whole_number)] | None = None  # bounds: see Seed


def request_model(max_n: int) -> type[GenerateRequest]:
    """GenerateRequest with `n` and `seeds` bounded by this service's max_n, so that the schema states the bound."""
    n = (JsonInt, Field(min(16, max_n), ge=1, le=max_n, description=f"number of images, 1 to {max_n}"))
    seeds = (Annotated[list[Seed], Field(min_length=1, max_length=max_n)] | None, Field(None, description=SEEDS))
    return create_model("GenerateRequest", __base__=GenerateRequest, n=n, seeds=seeds)


class GeneratedArray(BaseModel):
    """/v1/generate with format json."""

    shape: list[int] = Field(description="[n, channels, height, width]")
    images: list[Any] = Field(description="nested lists of that shape, values in [-1, 1]")


def _labels_schema(model: OnnxGenerator | OnnxTranslator) -> dict:
    """What `labels` the served model takes: none for an unconditional one, else its class names
    and indices (resolve_labels refuses anything else)."""
    if not isinstance(model, OnnxGenerator) or not model.info.classes:
        return {"anyOf": [{"type": "array", "maxItems": 0}, {"type": "null"}], "default": None,
                "description": "this model is unconditional: no labels"}  # fmt: skip
    count = model.info.classes  # a model with classes from the noise gets latents of the classes asked for
    names = list(dict.fromkeys([*model.info.class_names, *map(str, range(count))]))
    item = {"anyOf": [{"type": "string", "enum": names}, {"type": "integer", "minimum": 0, "maximum": count - 1}]}
    return {"anyOf": [{"type": "array", "items": item}, {"type": "null"}], "default": None,
            "description": "class names or indices, cycled over the n images"}  # fmt: skip


def _truncation_schema(model: OnnxGenerator | OnnxTranslator) -> dict:
    """What `truncation_psi` the served model takes: only null for a model without that input
    (the service refuses a number with 400), else a bounded number."""
    if not isinstance(model, OnnxGenerator) or not model.info.truncation:
        return {"type": "null", "default": None, "description": "this model has no truncation: leave it out or null"}
    return {"anyOf": [{"type": "number", "minimum": -MAX_PSI, "maximum": MAX_PSI}, {"type": "null"}],
            "default": None, "description": PSI_HELP}  # fmt: skip


def openapi_with_labels(app: FastAPI):
    """The app's `openapi`: FastAPI's schema, with /v1/generate's body bounded by this service's max_n, and
    `labels` and `truncation_psi` as the model being served takes them (a new champion may have other classes,
    or no truncation, so it is rebuilt after a swap); with a token, the routes that need it say so."""
    cache: dict[str, Any] = {}

    def openapi() -> dict:
        served = app.state.holder.served  # no reload here: this runs on the event loop
        if "schema" not in cache or cache["served"] is not served:
            app.openapi_schema = None
            schema = FastAPI.openapi(app)
            # From pydantic again: FastAPI's OpenAPI model makes bounds floats, and float(2**63 - 1) is 2**63.
            body = app.state.request_model.model_json_schema()
            if served is not None:
                body["properties"]["labels"] = _labels_schema(served.model)
                body["properties"]["truncation_psi"] = _truncation_schema(served.model)
            schema["paths"]["/v1/generate"]["post"]["requestBody"]["content"]["application/json"]["schema"] = body
            if app.state.cfg.token:
                bearer = {"bearer": {"type": "http", "scheme": "bearer"}}
                schema.setdefault("components", {})["securitySchemes"] = bearer
                for item in schema["paths"].values():
                    for operation in item.values():
                        if "401" in operation["responses"]:
                            operation["security"] = [{"bearer": []}]
            cache.update(served=served, schema=schema)
        return cache["schema"]

    return openapi
