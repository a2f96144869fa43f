"""The model being served: a fixed ONNX file, or the registry's champion, reloaded when the
champion pointer changes (the new session is built first and then swapped in, so requests in
flight finish on the model they started with; a champion that cannot be loaded leaves the old
one serving)."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import UserError
from pipeline.inference import OnnxGenerator, OnnxTranslator, open_model
from pipeline.serve.common import RETRY_AFTER_S, ApiError
from pipeline.serve.config import ServeConfig

log = logging.getLogger("ganpipe.serve")


@dataclass(frozen=True)
class Served:
    """One loaded model and where it came from, swapped as a whole."""

    model: OnnxGenerator | OnnxTranslator
    path: Path
    version: str | None  # the registry version; None for a file given with --model
    loaded_at: float

    @property
    def name(self) -> str:
        return self.version or self.path.name


def _pointer_problem(pointer: Path) -> str | None:
    """Why the champion pointer cannot name a version, said without quoting what it holds: /healthz
    shows reload_error to anyone, and the registry's own message quotes the start of the file (a
    pointer made a symlink to /etc/passwd showed its first line). None: no pointer, or one the
    registry may read (a version name, or not UTF-8, which it reports by byte value and offset)."""
    from pipeline.registry import VERSION

    if not pointer.is_file():  # gone, or a FIFO or device (not opened: reading those may block or never end)
        return None
    try:
        with pointer.open("rb") as fh:
            head = fh.read(65)
    except OSError as err:
        return f"{pointer}: cannot be read: {err.strerror or type(err).__name__}"
    if len(head) > 64:
        return f"{pointer}: more than 64 bytes, so not a version name like v0001; promote or roll back to rewrite it"
    try:
        name = head.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None
    if not VERSION.match(name):
        return f"{pointer}: does not hold a version name like v0001 ({len(head)} bytes); promote or roll back to " \
               "rewrite it"  # fmt: skip
    return None


def _pointer_stamp(path: Path) -> tuple[int, int, int] | None:
    """Changes whenever the pointer is replaced (os.replace gives it a new inode) or rewritten."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class ModelHolder:
    """The model being served, swapped atomically when the registry's champion changes.

    A request takes `current()` once and keeps that `Served` to its end, so a swap never cuts
    it off; the old session is freed when the last such request lets go. Only the request
    that notices the change loads the new model; meanwhile the others go on with the old one.
    A registry without a champion yet serves nothing (None) until one is promoted.
    """

    def __init__(self, cfg: ServeConfig, on_reload=None):
        self.cfg, self.on_reload = cfg, on_reload
        self.reload_error: str | None = None
        self._lock = threading.Lock()
        self._checked = 0.0
        if cfg.model is not None:
            self.registry, self._stamp = None, None
            self._served = self._load(None)
            return
        from pipeline.registry import Registry

        self.registry = Registry(cfg.registry)
        self.pointer = self.registry.root / "champion"
        self._stamp = _pointer_stamp(self.pointer)
        version = self.registry.champion()
        self._served = None
        if version is None:
            log.warning("%s has no champion yet: nothing is served until one is promoted", self.registry.root)
        else:
            self._served = self._load(version)

    @property
    def served(self) -> Served | None:
        """The model in force, without looking at the registry."""
        return self._served

    def changed(self) -> bool:
        """Whether the champion pointer changed since it was last looked at (one stat; no load)."""
        return self.registry is not None and _pointer_stamp(self.pointer) != self._stamp

    def require(self) -> Served:
        """current(), or 503 while there is no model to serve."""
        served = self.current()
        if served is None:
            raise ApiError(503, "no model loaded", f"{self.registry.root} has no champion yet; promote one",
                           headers={"Retry-After": str(RETRY_AFTER_S)})  # fmt: skip
        return served

    def current(self) -> Served | None:
        """The model for this request, after loading a new champion if the pointer changed."""
        if self.registry is None:
            return self._served
        if self.cfg.reload_check_s and time.monotonic() - self._checked < self.cfg.reload_check_s:
            return self._served
        self._checked = time.monotonic()
        stamp = _pointer_stamp(self.pointer)
        if stamp == self._stamp or not self._lock.acquire(blocking=False):
            return self._served  # unchanged, or another request is loading the new champion
        try:
            if stamp != self._stamp:
                self._stamp = stamp  # a state that fails to load is tried once, not on every request
                self._reload()
        finally:
            self._lock.release()
        return self._served

    def _reload(self) -> None:
        try:
            if problem := _pointer_problem(self.pointer):
                raise UserError(problem)
            version = self.registry.champion()
            if version is None:
                raise UserError(f"{self.pointer}: the champion pointer is gone")
            if self._served and version == self._served.version:  # e.g. rolled back to the model still in service
                self.reload_error = None
                return
            fresh = self._load(version)
        except UserError as err:  # a broken champion must not take the service down
            self.reload_error = str(err)
            log.error("the new champion cannot be loaded (still serving %s): %s", self._served and self._served.name,
                      err)  # fmt: skip
            if self.on_reload:
                self.on_reload(False)
            return
        self._served, self.reload_error = fresh, None  # one assignment: the swap
        log.info("now serving %s (%s)", fresh.name, fresh.path)
        if self.on_reload:
            self.on_reload(True)

    def _load(self, version: str | None) -> Served:
        """The registry's `version` of the model (the configured direction's translator), or with
        None the file given with --model."""
        path = Path(self.cfg.model) if version is None else self.registry.model_path(version, self.cfg.direction)
        return Served(open_model(path, self.cfg.device), path, version, time.time())
