"""What `ganpipe serve` is configured with. ServeConfig's defaults are the only place they are
written: the CLI leaves a setting it was not given to them, and reads them for its help."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import layout
from pipeline.errors import UserError
from pipeline.image_input import MAX_PIXELS

TOKEN_ENV = "GANPIPE_SERVE_TOKEN"


@dataclass
class ServeConfig:
    model: Path | None = None  # a fixed ONNX file; None = the registry's champion
    registry: Path = layout.REGISTRY
    direction: str = "AB"  # which translator of a CycleGAN champion to serve
    max_n: int = 64
    max_upload_bytes: int = 8 * 1024 * 1024
    max_pixels: int = MAX_PIXELS  # the decoder's own bound, as `ganpipe translate` has it
    device: str = "auto"
    token: str | None = field(default_factory=lambda: os.environ.get(TOKEN_ENV) or None)
    reload_check_s: float = 0.0  # 0: look at the champion pointer (one stat) on every request
    max_concurrency: int = 2  # inferences at once; each may hold a max_pixels translation's activations
    max_queue: int = 16  # further requests admitted to wait for one of those; beyond: 503 + Retry-After
    model_name: str = "ganpipe"  # the model's name in the Open Inference Protocol's /v2/models/{name}
    body_timeout_s: float = 60.0  # a request body must arrive within this (8 MiB: at 140 kB/s); else 408, closed
    header_timeout_s: float = 20.0  # a request's line and headers must arrive within this; else the socket is closed

    def __post_init__(self):
        if self.max_concurrency < 1 or self.max_queue < 0:
            raise UserError(f"max_concurrency must be >= 1 and max_queue >= 0, got {self.max_concurrency} "
                            f"and {self.max_queue}")  # fmt: skip
        if not (self.body_timeout_s > 0 and self.header_timeout_s > 0):
            raise UserError(f"body_timeout_s and header_timeout_s must be > 0, got {self.body_timeout_s} and "
                            f"{self.header_timeout_s}")  # fmt: skip
