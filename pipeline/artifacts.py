"""Atomic artifact writing: every output appears complete or not at all.

A stage killed half-way must never leave a truncated file that DVC would then cache,
so writers produce a temporary sibling and `os.replace` it into place.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import UserError
from pipeline.layout import EVAL_DETAILS, EVAL_METRICS

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so a live temporary cannot be told from a stale one
    fcntl = None  # type: ignore[assignment]

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)  # a full disk, or a full quota


class DiskFull(UserError, OSError):
    """An output could not be written for want of space; the message names it and the space needed."""

    def __init__(self, path: Path | str, needed: int):
        self.path, self.needed = Path(path), needed
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError:
            free = 0
        short = f"; free at least {_size(needed - free)} more" if needed > free else ""
        super().__init__(errno.ENOSPC, f"{self.path}: no space left on the device: {_size(needed)} to write, "
                                       f"{_size(free)} free there{short}, then run again")  # fmt: skip

    def __str__(self) -> str:
        return self.strerror


def _size(n: int) -> str:
    return f"{n / 1e6:,.1f} MB" if n >= 100_000 else f"{n:,} bytes"


def write_file(path: Path | str, data: bytes) -> None:
    """Write `data` to a new file `path`; DiskFull, naming it with the size, when the disk is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError as err:
        if err.errno in NO_SPACE:
            raise DiskFull(path, len(data)) from None
        raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` if the block succeeds.

    Works for files and directories. On error the temporary is removed and `target`
    is left exactly as it was. A directory is replaced only by a directory: a file written
    onto an existing folder raises IsADirectoryError and the folder is kept, contents and all.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # the writer creates it (as a file or a directory)
    full = None
    try:
        yield tmp
        if target.is_dir() and not target.is_symlink():
            if not tmp.is_dir():
                raise IsADirectoryError(errno.EISDIR, "is a folder; not replaced by a file", str(target))
            shutil.rmtree(target)
        os.replace(tmp, target)
    except DiskFull as err:
        full = err.needed  # reported under the target's name, once the temporary's space is free again
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()
    if full is not None:
        raise DiskFull(target, full) from None


def write_bytes(target: Path | str, data: bytes) -> None:
    with atomic_path(target) as tmp:
        write_file(tmp, data)


def save_torch(target: Path | str, obj: Any) -> None:
    """`torch.save` whose bytes depend only on `obj`.

    torch.save names the records inside its zip after the file it writes to, so saving to
    a random temporary name would give a different file (and a different DVC hash) for
    the same weights on every run. Serialising to memory names them "archive/" instead.
    """
    import io

    import torch  # not at module level: the ONNX-only inference path imports this module

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(target, buf.getvalue())


def write_json(target: Path | str, obj: Any) -> None:
    write_bytes(target, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def read_json(path: Path | str) -> Any:
    return json.loads(Path(path).read_text())


def read_metrics(workdir: Path | str = ".") -> dict[str, Any]:
    """Every `metrics/*.json` of a pipeline checkout, keyed by file stem (eval, export, ...); "eval" is
    the whole evaluation, what experiments are compared by (eval.json) and the rest (eval_details.json)."""
    found = {p.stem: read_json(p) for p in sorted((Path(workdir) / "metrics").glob("*.json"))}
    if EVAL_DETAILS.stem in found:
        found[EVAL_METRICS.stem] = {**found.get(EVAL_METRICS.stem, {}), **found.pop(EVAL_DETAILS.stem)}
    return found


def remove_unless_locked(path: str | os.PathLike) -> bool:
    """Remove the file or folder at `path` unless a live process holds a lock on it (flock: whoever
    writes a temporary or a staging folder holds one until done, and a killed process loses it).
    Never through a link, and not if the name was given to something else meanwhile. True: removed;
    False: locked, gone, or no locks here (Windows), so nothing can be told stale."""
    if fcntl is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        st = os.fstat(fd)
        if not os.path.samestat(os.lstat(path), st):
            return False
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)
        else:
            os.unlink(path)
        return True
    except OSError:  # locked by its live owner, or already gone
        return False
    finally:
        os.close(fd)
