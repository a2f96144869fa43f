"""Large Open Inference Protocol bodies parsed in a child process.

orjson holds Python's GIL for the whole parse of a body (about 60 ms for 6.7 MB of JSON numbers
on a small machine), and so does np.asarray of the lists it gives; the service's event loop
waits for the GIL meanwhile, even though the parse runs in a thread. A child process has a GIL
of its own: it parses the body and turns each long list of numbers into an array, and only the
arrays (a copy of their bytes) come back. This module imports only orjson and NumPy, so that a
child starts quickly. Smaller bodies, and every response, go between JSON and arrays in the
serving thread, a chunk at a time (as_array, json_array).
"""

from __future__ import annotations

import multiprocessing
import signal
import threading
from concurrent.futures import CancelledError, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np
import orjson

MIN_BYTES = 1 << 20  # smaller bodies are parsed in the thread that serves them: a round trip costs more
MIN_VALUES = 4096  # shorter `data` lists stay lists
WORKERS = 2

_pool: ProcessPoolExecutor | None = None
_lock = threading.Lock()


def decode(body: bytes) -> tuple[Any, dict[int, np.ndarray]] | None:
    """The JSON of an inference request, each input's long `data` list of numbers replaced by [] and
    given as an array (by input index) instead; None when orjson refuses the body (the service parses
    it itself, for json's answers). Lists np.asarray refuses, or that are not numbers, stay as they
    are, so that the service's own checks answer them as before."""
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    arrays: dict[int, np.ndarray] = {}
    inputs = raw.get("inputs") if isinstance(raw, dict) else None
    for i, tensor in enumerate(inputs if isinstance(inputs, list) else []):
        data = tensor.get("data") if isinstance(tensor, dict) else None
        if not isinstance(data, list) or (len(data) < MIN_VALUES and not (data and isinstance(data[0], list))):
            continue
        try:
            values = np.asarray(data)
        except ValueError:
            continue
        if values.dtype.kind in "biuf":
            arrays[i], tensor["data"] = values, []
    return raw, arrays


def _ignore_interrupts() -> None:  # Ctrl-C reaches the whole process group: the service stops its children
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def decode_elsewhere(body: bytes) -> tuple[Any, dict[int, np.ndarray]] | None:
    """decode(body) in a child process (started at the first call, shared by the process); None when
    orjson refuses the body, the child died (then the next call starts a new one) or the processes
    were stopped meanwhile: the caller then parses the body itself."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = ProcessPoolExecutor(WORKERS, multiprocessing.get_context("spawn"), _ignore_interrupts)
        pool = _pool
    try:
        return pool.submit(decode, body).result()
    except BrokenProcessPool:
        with _lock:
            if _pool is pool:
                _pool = None
        return None
    except (CancelledError, RuntimeError):  # shut down meanwhile (by another app of this process, say)
        return None


def shutdown() -> None:
    """Stop the child processes, if any (the service's shutdown: uvicorn ends a process stopped with
    SIGTERM by raising the signal again once it has shut down, so exit handlers never run)."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


JSON_CHUNK = 1 << 16  # values


def as_array(data: list) -> np.ndarray:
    """np.asarray(data); a long flat list JSON_CHUNK values at a time (see json_array: the GIL), with
    np.asarray's own answer whenever the slices differ (nesting, mixed kinds)."""
    if len(data) <= JSON_CHUNK or isinstance(data[0], list):
        return np.asarray(data)
    parts = [np.asarray(data[i : i + JSON_CHUNK]) for i in range(0, len(data), JSON_CHUNK)]
    if any(p.ndim != 1 or p.dtype != parts[0].dtype for p in parts):
        return np.asarray(data)
    return np.concatenate(parts)


def json_array(array: np.ndarray) -> orjson.Fragment:
    """The array's values as a flat JSON array, JSON_CHUNK values at a time: the GIL is held for the
    whole of each C call (tolist, dumps), and between calls the event loop's thread may take it; at
    once, a 1024² result held it for about 0.1 s (json's dumps: 0.6 s)."""
    flat = array.ravel()
    if flat.dtype.kind in "fiub" and flat.dtype.itemsize in (1, 4, 8):  # what orjson writes from NumPy itself
        option, dump = orjson.OPT_SERIALIZE_NUMPY, lambda part: part  # float32: its shortest form (same value)
    else:
        option, dump = 0, np.ndarray.tolist
    parts = [orjson.dumps(dump(flat[i : i + JSON_CHUNK]), option=option)[1:-1] for i in range(0, flat.size, JSON_CHUNK)]
    return orjson.Fragment(b"[" + b",".join(parts) + b"]")
