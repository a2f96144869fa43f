"""One pipeline run at a time in a workspace.

`dvc exp run -S` rewrites the shared params.yaml before DVC takes its own lock, so a second
experiment started beside a running one changed the first one's params, then failed on DVC's
lock. `ganpipe exp`, `ganpipe repro` and the retraining flow hold this lock from before they
touch the workspace until DVC has finished; a second one is refused at once, in one line.
(`dvc exp run --queue` is DVC's way to line experiments up instead.)

Hand-written on flock rather than a lock library: the kernel releases it when its holder dies
(even by SIGKILL), so it never goes stale, and the refusal can say which process holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from pipeline import layout
from pipeline.errors import UserError


class WorkspaceBusy(UserError):
    """Another pipeline run or experiment holds the workspace."""


@contextlib.contextmanager
def workspace_lock(what: str, root: Path | str = ".") -> Iterator[None]:
    """Hold the workspace for `what` (a command, shown to anyone refused); WorkspaceBusy at once if
    another process holds it. Outside a DVC repository there is nothing to guard: DVC says so itself."""
    root = Path(root)
    if not (root / ".dvc").is_dir():
        yield
        return
    path = root / layout.WORKSPACE_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 300, 0).decode("utf-8", "replace").strip() or "another process"
            raise WorkspaceBusy(
                f"another experiment or pipeline run is running in this workspace ({holder}); "
                "wait for it to finish (dvc exp run --queue lines experiments up)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {' '.join(what.split())}\n".encode("utf-8", "backslashreplace"), 0)
        yield
    finally:
        os.close(fd)  # releases the lock
