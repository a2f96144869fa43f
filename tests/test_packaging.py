"""The package installs everywhere its dependencies have wheels: exactly one ONNX Runtime build per platform."""

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
    assert [p.name for p in pins] == ["torch"] and torch.specifier.contains(next(iter(pins[0].specifier)).version)
    assert "constraints.txt" in (ROOT / "Makefile").read_text()


def test_no_dependency_the_code_never_imports():
    names = {r.name for r in _requirements()}
    assert "torchvision" not in names
    sources = "\n".join(p.read_text() for d in ("pipeline", "flows") for p in (ROOT / d).rglob("*.py"))
    assert "torchvision" not in sources
