"""The model registry: a folder of promoted versions, with no service to run.

    registry/
      v0001/            one promoted version: the ONNX file(s) and model card, metrics/*.json,
                        params.yaml, version.json (git revision, dvc.lock sha256, time, metrics)
      v0002/
      champion          the version being served, one line; replaced atomically
      history.jsonl     every promotion and rollback, in order

A version directory is written under a temporary name and renamed into place complete, and
the champion pointer is written to a temporary file and renamed over the old one, so a
crash at any point leaves the previous champion in force and no half version behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.artifacts import read_metrics, write_bytes
from pipeline.errors import UserError

VERSION = re.compile(r"^v(\d{4,})$")
REQUIRED = ("exports/model_card.json", "metrics/eval.json", "metrics/export.json", "params.yaml", "dvc.lock")


class RegistryError(UserError, ValueError):
    """A promotion or rollback cannot be done; the message says which file or version."""


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def compare(candidate: dict, champion: dict | None, margin: float) -> Decision:
    """Promote when the candidate's FID (lower is better) beats the champion's by more than
    `margin` (relative: 0.05 = at least 5% lower) and its export passed parity."""
    if not candidate.get("export", {}).get("parity_passed", False):
        return Decision(False, "the candidate's ONNX export did not pass the parity check")
    fid = candidate.get("eval", {}).get("fid")
    if fid is None:
        return Decision(False, "the candidate has no FID in metrics/eval.json")
    if champion is None:
        return Decision(True, f"no champion yet; candidate FID {fid:.4f}")
    best = champion["eval"]["fid"]
    needed = best * (1.0 - margin)
    if fid < needed:
        return Decision(True, f"FID {fid:.4f} beats the champion's {best:.4f} by more than {margin:.0%}")
    return Decision(
        False, f"FID {fid:.4f} does not beat the champion's {best:.4f} by {margin:.0%} (needs < {needed:.4f})"
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Registry:
    def __init__(self, root: Path | str = "registry"):
        self.root = Path(root)

    # -- reading ---------------------------------------------------------------------------
    def versions(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted((p.name for p in self.root.iterdir() if p.is_dir() and VERSION.match(p.name)),
                      key=lambda n: int(n[1:]))  # fmt: skip

    def champion(self) -> str | None:
        pointer = self.root / "champion"
        if not pointer.is_file():
            return None
        name = pointer.read_text().strip()
        if name not in self.versions():
            raise RegistryError(f"{pointer} names {name!r}, which is not a version in {self.root}")
        return name

    def info(self, version: str | None = None) -> dict:
        version = version or self.champion()
        if version is None:
            raise RegistryError(f"{self.root}: no champion yet (promote a version first)")
        path = self.root / version / "version.json"
        if not path.is_file():
            raise RegistryError(f"{self.root}: no version {version!r} (have: {', '.join(self.versions()) or 'none'})")
        return json.loads(path.read_text())

    def champion_metrics(self) -> dict | None:
        champ = self.champion()
        return None if champ is None else self.info(champ)["metrics"]

    def model_path(self, version: str | None = None, direction: str = "AB") -> Path:
        """The ONNX file of a version (the champion by default) to serve."""
        info = self.info(version)
        files = info["files"]
        name = "generator.onnx" if "generator.onnx" in files else f"generator_{direction}.onnx"
        if name not in files:
            raise RegistryError(f"{self.root}/{info['version']}: has no {name} (files: {', '.join(files)})")
        return self.root / info["version"] / name

    def history(self) -> list[dict]:
        path = self.root / "history.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line] if path.is_file() else []

    # -- writing ---------------------------------------------------------------------------
    def promote(self, workdir: Path | str = ".", reason: str = "", git_rev: str | None = None) -> str:
        """Copy the pipeline's current outputs from `workdir` into a new version and make it
        the champion. Refuses (RegistryError, nothing written) when an output is missing or
        the export failed its parity check."""
        from pipeline.export import git_revision

        work = Path(workdir)
        missing = [rel for rel in REQUIRED if not (work / rel).is_file()]
        onnx_files = sorted((work / "exports").glob("*.onnx")) if (work / "exports").is_dir() else []
        if not onnx_files:
            missing.append("exports/*.onnx")
        if missing:
            raise RegistryError(f"{work}: cannot promote, missing {', '.join(missing)} (run the pipeline first)")
        export = json.loads((work / "metrics/export.json").read_text())
        if not export.get("parity_passed"):
            raise RegistryError(f"{work / 'metrics/export.json'}: parity_passed is false; refusing to promote")
        metrics = read_metrics(work)
        existing = self.versions()
        version = f"v{(int(existing[-1][1:]) + 1 if existing else 1):04d}"
        self.root.mkdir(parents=True, exist_ok=True)
        # Not artifacts.atomic_path, which replaces an existing target: renaming a directory onto
        # a non-empty one fails instead, so a concurrent promotion can never erase a version.
        staging = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=self.root))
        try:
            for f in [*onnx_files, work / "exports/model_card.json"]:
                shutil.copy2(f, staging / f.name)
            (staging / "metrics").mkdir()
            for p in sorted((work / "metrics").glob("*.json")):
                shutil.copy2(p, staging / "metrics" / p.name)
            shutil.copy2(work / "params.yaml", staging / "params.yaml")
            record = {
                "version": version,
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "git_rev": git_rev or git_revision(work),
                "dvc_lock_sha256": _sha256(work / "dvc.lock"),
                "files": sorted(f.name for f in onnx_files),
                "metrics": metrics,
                "reason": reason,
            }
            (staging / "version.json").write_text(json.dumps(record, indent=2) + "\n")
            os.replace(staging, self.root / version)  # the complete version appears at once
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._set_champion(version, {"action": "promote", "reason": reason})
        return version

    def rollback(self) -> str:
        """Make the champion before the current one the champion again (repeatable: each
        rollback steps one promotion further back)."""
        champ = self.champion()
        if champ is None:
            raise RegistryError(f"{self.root}: no champion to roll back from")
        stack: list[str] = []  # the champions in force, replayed from the history
        for event in self.history():
            if event["action"] == "promote":
                stack.append(event["version"])
            elif event["action"] == "rollback" and stack:
                stack.pop()
        if len(stack) < 2:
            raise RegistryError(f"{self.root}: {champ} is the first champion; there is nothing to roll back to")
        target = stack[-2]
        self._set_champion(target, {"action": "rollback", "reason": f"rolled back from {champ}"})
        return target

    def _set_champion(self, version: str, event: dict) -> None:
        write_bytes(self.root / "champion", (version + "\n").encode())
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "version": version, **event}
        with open(self.root / "history.jsonl", "a") as fh:
            fh.write(json.dumps(entry) + "\n")

    def table(self) -> list[dict]:
        champ = self.champion()
        rows = []
        for v in self.versions():
            info = self.info(v)
            ev = info["metrics"].get("eval", {})
            rows.append({"version": v, "champion": v == champ, "created": info["created"], "fid": ev.get("fid"),
                         "git_rev": info["git_rev"][:10], "files": ", ".join(info["files"])})  # fmt: skip
        return rows
