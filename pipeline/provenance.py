"""Where a result comes from: the git revision, and which of the repository's source files a
module depends on, read from its import statements.

One answer serves two checks that must agree: a training checkpoint is resumed only by the
same code (the runner's closure, hashed), and each DVC stage lists exactly the code its
command imports (tests/test_architecture.py compares dvc.yaml with these closures). Imports
inside functions count too: the code they load runs as part of the stage.
"""

from __future__ import annotations

import ast
import hashlib
import subprocess
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the folder holding the `pipeline` and `flows` packages
PACKAGES = ("pipeline", "flows")


def module_file(module: str) -> Path | None:
    """The source file of a repository module (a package's __init__.py), or None if not ours."""
    if module.split(".")[0] not in PACKAGES:
        return None
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _with_parents(module: str) -> list[str]:
    """Importing a.b.c runs a/__init__.py and a/b/__init__.py first."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


@cache
def direct_imports(module: str) -> frozenset[str]:
    """The repository modules `module`'s file imports anywhere in it (parents included)."""
    path = module_file(module)
    if path is None:
        return frozenset()
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import name`: name is a submodule when it has a file of its own
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            for m in _with_parents(name):
                if module_file(m) is not None and m != module:
                    found.add(m)
    return frozenset(found)


def closure(module: str) -> frozenset[str]:
    """`module` and every repository module it imports, directly or not."""
    seen, todo = set(), [*_with_parents(module)]
    while todo:
        m = todo.pop()
        if m in seen or module_file(m) is None:
            continue
        seen.add(m)
        todo.extend(direct_imports(m))
    return frozenset(seen)


def closure_files(module: str) -> list[Path]:
    return sorted(module_file(m) for m in closure(module))


def source_hash(module: str) -> str:
    """sha256 over the relative paths and bytes of every file in `module`'s closure."""
    h = hashlib.sha256()
    for f in closure_files(module):
        h.update(f.relative_to(ROOT).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def git_revision(cwd: Path | str = ".") -> str:
    """The commit checked out in `cwd`, or "unknown" outside a git repository."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"
