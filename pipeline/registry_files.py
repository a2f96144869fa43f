"""The registry folder's files, read and written safely (pipeline/registry.py): reading them, with
RegistryError naming a file that is not UTF-8 or not JSON; the lock that promotions and rollbacks
hold while they number a version and move the champion; and the staging folders promotions copy
into first, those of killed promotions removed by the next one.

The lock and each staging folder are flocks: the kernel releases them when their holder dies (even
by SIGKILL), so the lock never goes stale and a killed promotion's folder is told from a live one's.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.artifacts import remove_unless_locked
from pipeline.errors import UserError

LOCK = ".lock"
STAGING_PREFIX = ".promote."  # a promotion's folder until it is complete; then renamed to its version
STAGING = re.compile(rf"{re.escape(STAGING_PREFIX)}[a-z0-9_]{{8}}")  # as tempfile.mkdtemp names it
LOCK_TIMEOUT_S = 120.0  # the lock covers numbering and renaming only, never the copy: seconds at most


class RegistryError(UserError, ValueError):
    """A promotion or rollback cannot be done; the message says which file or version."""


def read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise RegistryError(f"{path}: cannot be read: {err.strerror or err}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RegistryError(f"{path}: not UTF-8 text (byte 0x{data[err.start]:02x} at offset {err.start}); "
                            "the file is corrupt") from None  # fmt: skip


def read_json(path: Path) -> Any:
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise RegistryError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}, column {err.colno})") from None


@contextlib.contextmanager
def locked(root: Path) -> Iterator[None]:
    """Hold registry/.lock; released by the kernel if the holder dies, so it never goes stale."""
    root.mkdir(parents=True, exist_ok=True)
    path = root / LOCK
    with open(path, "a+b") as fh:
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RegistryError(f"{path}: still held by another promotion or rollback after "
                                        f"{LOCK_TIMEOUT_S:.0f} s; is one stuck?") from None  # fmt: skip
                time.sleep(0.02)
        yield


def claim_staging(root: Path) -> tuple[Path, int]:
    """A new staging folder and a descriptor holding its flock until the promotion ends: a
    promotion killed by SIGKILL loses the lock, which is how the next one tells its folder
    from a concurrent promotion's live one (as prepare does with its temporaries). If a
    clean-up removed the folder between its creation and the lock, another is made."""
    while True:
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=root))
        try:
            fd = os.open(staging, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            continue
        fcntl.flock(fd, fcntl.LOCK_EX)
        with contextlib.suppress(FileNotFoundError):
            if os.path.samestat(os.stat(staging), os.fstat(fd)):
                # mkdtemp makes it 0700: a service running as another user could not read the version
                os.fchmod(fd, stat.S_IMODE(os.stat(root).st_mode))  # as readable as the registry
                return staging, fd
        os.close(fd)


def remove_stale_staging(root: Path) -> list[Path]:
    """Remove the staging folders of killed promotions (a model's size each, forever otherwise):
    only names tempfile.mkdtemp gives them here, and only those no live promotion holds.
    Called under the registry lock. Returns what was removed."""
    removed = []
    for entry in os.scandir(root):
        if not STAGING.fullmatch(entry.name) or not entry.is_dir(follow_symlinks=False):
            continue
        if remove_unless_locked(entry.path):  # unless its live promotion holds it
            removed.append(Path(entry.path))
    return removed
