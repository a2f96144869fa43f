"""The package installs everywhere its dependencies have wheels: exactly one ONNX Runtime build per platform."""

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PLATFORMS = {  # (sys_platform, platform_machine) -> the ONNX Runtime build that has wheels there
    ("linux", "x86_64"): "onnxruntime-gpu",
    ("win32", "AMD64"): "onnxruntime-gpu",
    ("linux", "aarch64"): "onnxruntime",
    ("darwin", "arm64"): "onnxruntime",
    ("darwin", "x86_64"): "onnxruntime",
}


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(r) for r in project["dependencies"]]


@pytest.mark.parametrize(("platform", "machine"), list(PLATFORMS))
def test_one_onnxruntime_build_per_platform(platform: str, machine: str):
    env = {"sys_platform": platform, "platform_machine": machine}
    chosen = [r.name for r in _requirements() if r.name.startswith("onnxruntime") and r.marker.evaluate(env)]
    assert chosen == [PLATFORMS[platform, machine]]


def test_torch_is_a_range_and_the_tested_release_is_a_constraint():
    torch = next(r for r in _requirements() if r.name == "torch")
    assert not any(s.operator == "==" for s in torch.specifier), "the package takes any torch in its range"
    pins = [Requirement(line) for line in (ROOT / "constraints.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]  # fmt: skip
    assert [p.name for p in pins] == ["torch", "torchvision"]  # torchvision: the release built for that torch
    for pin in pins:
        ranged = next(r for r in _requirements() if r.name == pin.name)
        assert not any(s.operator == "==" for s in ranged.specifier)
        assert ranged.specifier.contains(next(iter(pin.specifier)).version)
    assert "constraints.txt" in (ROOT / "Makefile").read_text()


def test_no_dependency_the_code_never_imports():
    """torchvision was once a dependency nothing imported; now one source does, and only that source."""
    names = {r.name for r in _requirements()}
    assert "torchvision" in names
    imports = re.compile(r"^\s*(import|from) torchvision\b", re.M)
    users = sorted(p.relative_to(ROOT).as_posix() for d in ("pipeline", "flows") for p in (ROOT / d).rglob("*.py")
                   if imports.search(p.read_text()))  # fmt: skip
    assert users == ["pipeline/data/torchvision_source.py"]
