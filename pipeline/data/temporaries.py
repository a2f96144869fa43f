"""The prepare stage's temporaries: each held under an exclusive lock while a run writes it, and
removed by a later run once stale.

A run builds every output under a temporary name beside it (`atomic_path`) and renames it into
place when complete. A run killed by SIGKILL leaves its temporaries behind but loses their
locks, which is how the next run tells its leftovers from a concurrent run's live temporaries.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Callable, Iterable
from pathlib import Path

from pipeline.artifacts import remove_unless_locked

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so a live temporary cannot be told from a stale one
    fcntl = None  # type: ignore[assignment]


def create_file(path: Path) -> None:
    """Create an empty file at `path`; fail if anything is there."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def claim(locks: contextlib.ExitStack, path: Path, create: Callable[[], None]) -> None:
    """Create a temporary with `create` and hold an exclusive lock on it until `locks` closes:
    a run killed by SIGKILL loses its locks, which is how the next run tells its leftovers
    from a concurrent run's live temporaries. If a clean-up removed the new temporary
    between its creation and the lock, it is created again."""
    if fcntl is None:
        create()
        return
    while True:
        create()
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # a file system without locks, where the clean-up cannot lock (so remove) anything either
            break
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.lstat(path), os.fstat(fd)):
                break
        os.close(fd)
    locks.callback(os.close, fd)


def remove_stale_temporaries(targets: Iterable[Path], started: float) -> list[Path]:
    """Remove the temporaries that killed runs left beside `targets`: only names of the form
    `atomic_path` gives them, only ones older than this run (`started`), and only if no live
    process holds their lock. Everything else there is left alone. Returns what was removed."""
    if fcntl is None:
        return []
    removed = []
    for target in targets:
        # the names `atomic_path` gives its temporaries of `target` (tempfile's 8 random characters)
        pattern = re.compile(rf"\.{re.escape(target.name)}\.[a-z0-9_]{{8}}\.tmp")
        try:
            entries = [e for e in os.scandir(target.parent) if pattern.fullmatch(e.name)]
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)) and st.st_mtime < started \
                    and remove_unless_locked(entry.path):  # fmt: skip
                removed.append(Path(entry.path))
    return removed
