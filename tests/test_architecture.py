"""The shape of the code, checked: each DVC stage lists exactly the code its command imports,
imports point one way (CLI -> flows -> pipeline), and no module imports itself round a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from pipeline import layout
from pipeline.provenance import PACKAGES, ROOT, closure, direct_imports, module_file

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())


def repository_modules() -> list[str]:
    mods = []
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            rel = f.relative_to(ROOT).with_suffix("")
            mods.append(".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts))
    return mods


def code_free(path: Path) -> bool:
    """A package __init__ holding nothing but a docstring: importing it cannot change a result."""
    body = ast.parse(path.read_text()).body
    return path.name == "__init__.py" and all(isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)
                                              for n in body)  # fmt: skip


def stage_code(stage: dict) -> set[str]:
    """The repository files a stage's `python -m flows.X` imports (code-free package inits aside)."""
    cmd = stage["cmd"].split()
    assert cmd[:2] == ["python", "-m"], stage["cmd"]
    return {module_file(m).relative_to(ROOT).as_posix() for m in closure(cmd[2])} - {
        module_file(m).relative_to(ROOT).as_posix() for m in closure(cmd[2]) if code_free(module_file(m))}


def listed_code(stage: dict) -> dict[str, set[str]]:
    """Each code entry of a stage's deps (a file or a folder) -> the .py files it stands for."""
    out = {}
    for dep in stage["deps"]:
        if dep.split("/")[0] in PACKAGES:
            path = ROOT / dep
            files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
            out[dep] = {f.relative_to(ROOT).as_posix() for f in files if not code_free(f)}
    return out


@pytest.mark.parametrize("name", list(DVC["stages"]))
def test_each_stage_lists_exactly_the_code_it_imports(name):
    stage = DVC["stages"][name]
    needed, listed = stage_code(stage), listed_code(stage)
    covered = set().union(*listed.values())
    assert sorted(needed - covered) == [], f"{name}: imported but not a dependency"
    extra = {dep: sorted(files - needed) for dep, files in listed.items() if files - needed}
    assert extra == {}, f"{name}: listed but never imported"


def test_nothing_in_the_library_imports_the_workflow_layer():
    offenders = []
    for f in sorted((ROOT / "pipeline").rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []  # fmt: skip
            offenders += [f"{f.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in ("flows", "prefect")]
    assert offenders == []


def test_evaluation_and_export_read_models_without_the_trainer():
    for module in ("pipeline.export", "pipeline.metrics.suite", "pipeline.metrics.translation", "pipeline.tasks"):
        assert not [m for m in closure(module) if m.startswith("pipeline.training")], module


def test_there_are_no_import_cycles():
    graph = {m: {d for d in direct_imports(m) if d != m and not m.startswith(d + ".")} for m in repository_modules()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycles.append(" -> ".join([*path[path.index(d):], d]))
            elif d not in state:
                visit(d, [*path, d])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_artifact_paths_are_spelled_only_in_layout():
    paths = {v.as_posix() for v in vars(layout).values() if isinstance(v, Path)}
    paths |= {p.as_posix() for v in vars(layout).values() if isinstance(v, dict) for p in v.values()
              if isinstance(p, Path)}  # fmt: skip
    spelled = []
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            if f == ROOT / "pipeline" / "layout.py":
                continue
            tree = ast.parse(f.read_text())
            # a subcommand's name is a word, not a path (`ganpipe registry` beside the registry/ folder)
            names = {id(n.args[0]) for n in ast.walk(tree) if isinstance(n, ast.Call) and n.args
                     and isinstance(n.func, ast.Attribute) and n.func.attr == "add_parser"}  # fmt: skip
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in paths \
                        and id(node) not in names:  # fmt: skip
                    spelled.append(f"{f.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert spelled == []
