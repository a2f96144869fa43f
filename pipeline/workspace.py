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


def repair_dvc_rwlock(root: Path | str = ".") -> str | None:
    """Remove DVC's stage-lock file `.dvc/tmp/rwlock` when it cannot be read; a line saying so, or None.

    DVC rewrites that file in place (open "w", then json.dump), so a full disk leaves it empty or cut
    short, and every later DVC command fails with "JSON structure is corrupted" until it is deleted by
    hand. A missing file is what DVC reads as "no stage locked", so removing it, under DVC's own guard
    of the file (dvc.lock.make_lock on rwlock.lock), is the repair. It is judged as DVC judges it: JSON
    with DVC's schema (DVC has no public call that reads it without writing it back)."""
    import json

    from dvc.lock import LockError, make_lock
    from dvc.rwlock import RWLOCK_FILE, RWLOCK_LOCK, SCHEMA
    from voluptuous import Invalid

    tmp = Path(root) / ".dvc" / "tmp"
    path = tmp / RWLOCK_FILE
    if not path.is_file():
        return None
    try:
        with make_lock(str(tmp / RWLOCK_LOCK), tmp_dir=str(tmp), hardlink_lock=False):
            try:
                SCHEMA(json.loads(path.read_bytes()))
                return None
            except FileNotFoundError:
                return None
            except (ValueError, Invalid):  # not JSON (empty, cut short, not UTF-8), or not DVC's format
                size = path.stat().st_size
                path.unlink()
    except LockError:  # DVC is editing it right now: it is DVC's to judge
        return None
    return (f"{path}: DVC's stage-lock file was unreadable ({size} bytes; DVC rewrites it in place, so a full "
            "disk leaves it cut short) and every DVC command would fail on it: removed it (no stage holds a lock)")
