"""The model registry: a folder of promoted versions, with no service to run.

    registry/
      v0001/            one promoted version: the ONNX file(s) and model card, metrics/*.json,
                        params.yaml, version.json (git revision, dvc.lock sha256, time, metrics,
                        and `fetch`: where another machine gets the files, or null)
      v0002/
      champion          the version being served, one line; replaced atomically
      history.jsonl     every promotion and rollback, in order

A version directory is written under a temporary name and renamed into place complete, and
the champion pointer is written to a temporary file and renamed over the old one, so a
crash at any point leaves the previous champion in force and no half version behind; the
temporary folder (`.promote.*`) of a promotion killed outright is removed by the next one.
Promotions and rollbacks hold `registry/.lock` (flock) while they number a version and move
the champion, so concurrent ones land one after the other as distinct versions.

Every read (the pointer, version.json, history.jsonl) raises RegistryError naming the file
when it is not UTF-8, not JSON or lacks a key: the service reports such a champion and keeps
serving the old one instead of answering 500.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import reprlib
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import layout
from pipeline.artifacts import write_bytes
from pipeline.provenance import git_revision
from pipeline.registry_files import RegistryError, claim_staging, locked, read_json, read_text, remove_stale_staging

VERSION = re.compile(r"^v(\d{4,})$")
REQUIRED = (layout.MODEL_CARD, layout.EVAL_METRICS, layout.EXPORT_METRICS, layout.PARAMS, layout.DVC_LOCK)
# version.json keys every reader relies on, with the type each must have
RECORD_KEYS: dict[str, type] = {"version": str, "created": str, "git_rev": str, "files": list,
                                                   "metrics": dict}  # fmt: skip


def artifact_version(version: str) -> str:
    """The DVC artifact version (`<artifact>@<it>`, a semver git tag in DVC's model-registry form)
    that stands for registry version `version`: v0003 -> v0.0.3. Releases tagged by hand
    (v1.0.0 and up) never collide with it and rank above it as the newest version."""
    match = VERSION.match(version)
    if not match:
        raise RegistryError(f"{version!r} is not a registry version (v0001, v0002, ...)")
    return f"v0.0.{int(match.group(1))}"


@dataclass(frozen=True)
class FetchSource:
    """Where the outputs of a promoted run live once pushed: the git remote holding the run's
    commit (`git_rev`), the DVC remote holding its files, and the DVC artifacts (name -> path,
    dvc.yaml's `artifacts:`) that make up the version."""

    git_remote: str
    git_rev: str
    dvc_remote: str
    artifacts: dict[str, str]
    experiment: str | None = None

    def record(self, version: str) -> dict:
        """version.json's `fetch`: the tags that name `version` on the git remote (one per
        artifact, on `git_rev`) and, per artifact, the command that downloads its files."""
        tag = artifact_version(version)
        url = shlex.quote(self.git_remote)
        return {
            "git_remote": self.git_remote,
            "git_rev": self.git_rev,
            "experiment": self.experiment,
            "dvc_remote": self.dvc_remote,
            "artifact_version": tag,
            "tags": [f"{name}@{tag}" for name in self.artifacts],
            "artifacts": dict(self.artifacts),
            "commands": {name: f"dvc artifacts get {url} {name} --rev {tag}" for name in self.artifacts},
        }


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def compare(candidate: dict, champion: dict | None, margin: float) -> Decision:
    """Promote when the candidate's FID (lower is better) beats the champion's by more than
    `margin` (relative: 0.05 = at least 5% lower) and its export passed parity."""
    parity = (candidate.get("export") or {}).get("parity_passed")
    if parity is not True:  # the JSON value true only: "false" (a string) is truthy
        shown = "" if parity in (False, None) else f" (parity_passed is {_shown(parity)}, not true)"
        return Decision(False, f"the candidate's ONNX export did not pass the parity check{shown}")
    fid = (candidate.get("eval") or {}).get("fid")
    if fid is None:
        return Decision(False, "the candidate has no FID in metrics/eval.json")
    if not finite_number(fid):  # NaN compares false with everything: it would be promoted, then beat nothing
        return Decision(False, f"the candidate's FID is {_shown(fid)}, not a finite number (metrics/eval.json)")
    if champion is None:
        return Decision(True, f"no champion yet; candidate FID {fid:.4f}")
    best = (champion.get("eval") or {}).get("fid")
    if best is None or not finite_number(best):  # e.g. promoted by hand from other outputs: nothing to compare with
        what = "has no FID in its metrics" if best is None else f"has FID {_shown(best)}, not a finite number,"
        return Decision(False, f"the champion {what} to compare with; promote by hand "
                               "(ganpipe registry promote) if the candidate should replace it")  # fmt: skip
    ours, theirs = (str((m.get("eval") or {}).get("feature_extractor", "evaluator")).split(" ")[0]
                    for m in (candidate, champion))  # fmt: skip
    if ours != theirs:  # an Inception FID and an evaluator FID are different scales
        return Decision(False, f"the candidate's FID is in {ours} features, the champion's in {theirs}: not comparable;"
                               " promote by hand (ganpipe registry promote) if it should replace it")  # fmt: skip
    needed = best * (1.0 - margin)
    if fid < needed:
        return Decision(True, f"FID {fid:.4f} beats the champion's {best:.4f} by more than {margin:.0%}")
    return Decision(
        False, f"FID {fid:.4f} does not beat the champion's {best:.4f} by {margin:.0%} (needs < {needed:.4f})"
    )


def finite_number(value: Any) -> bool:
    """A metric that can be compared: an int or float (not a bool, not text), neither NaN nor infinite."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _shown(value: Any) -> str:
    return reprlib.repr(value)  # bounded: metrics files are input too


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _check_record(path: Path, record: Any, version: str) -> dict:
    """version.json as promote writes it; anything else names the file and the key."""
    if not isinstance(record, dict):
        raise RegistryError(f"{path}: must be a JSON object, got {type(record).__name__}")
    for key, kind in RECORD_KEYS.items():
        if key not in record:
            raise RegistryError(f"{path}: missing key {key!r}")
        if not isinstance(record[key], kind):
            raise RegistryError(f"{path}: key {key!r} must be a {kind.__name__}, got {type(record[key]).__name__}")
    if record["version"] != version:
        raise RegistryError(f"{path}: key 'version' says {record['version']!r} but the folder is {version!r}")
    files = record["files"]
    if not files or not all(isinstance(f, str) and f.endswith(".onnx") and f == Path(f).name for f in files):
        raise RegistryError(f"{path}: key 'files' must list the version's ONNX file names, got {files!r}")
    return record


def _verify_onnx(staged: Path, source: Path) -> None:
    """Refuse a file ONNX Runtime cannot load as a ganpipe model (truncated, not ONNX, no
    metadata): checked on the copy that will be served, reported under the name the user knows."""
    from pipeline.inference import ModelError, open_model

    try:
        open_model(staged, device="cpu", threads=1)
    except ModelError as err:
        msg = " ".join(str(err).replace(str(staged), str(source)).split())  # ORT's messages span lines
        raise RegistryError(f"{msg} (refusing to promote)") from None


class Registry:
    def __init__(self, root: Path | str = layout.REGISTRY):
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
        name = read_text(pointer).strip()
        if not VERSION.match(name) or not (self.root / name).is_dir():
            raise RegistryError(f"{pointer} names {name[:40]!r}, which is not a version in {self.root}")
        return name

    def info(self, version: str | None = None) -> dict:
        version = version or self.champion()
        if version is None:
            raise RegistryError(f"{self.root}: no champion yet (promote a version first)")
        path = self.root / version / "version.json"
        if not VERSION.match(version) or not path.parent.is_dir():
            raise RegistryError(f"{self.root}: no version {version!r} (have: {', '.join(self.versions()) or 'none'})")
        if not path.is_file():
            raise RegistryError(f"{path}: missing; the version folder is incomplete")
        return _check_record(path, read_json(path), version)

    def champion_metrics(self) -> dict | None:
        champ = self.champion()
        return None if champ is None else self.info(champ)["metrics"]

    def model_path(self, version: str | None = None, direction: str = "AB") -> Path:
        """The ONNX file of a version (the champion by default) to serve."""
        info = self.info(version)
        files = info["files"]
        single = layout.ONNX_GENERATOR.name
        name = single if single in files else layout.ONNX_TRANSLATORS[direction].name
        if name not in files:
            raise RegistryError(f"{self.root}/{info['version']}: has no {name} (files: {', '.join(files)})")
        return self.root / info["version"] / name

    def history(self) -> list[dict]:
        path = self.root / "history.jsonl"
        if not path.is_file():
            return []
        events = []
        for number, line in enumerate(read_text(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError as err:
                raise RegistryError(f"{path}: line {number} is not valid JSON ({err.msg})") from None
            if not (isinstance(event, dict) and isinstance(event.get("action"), str)
                    and isinstance(event.get("version"), str)):  # fmt: skip
                raise RegistryError(f"{path}: line {number} must be an object with 'action' and 'version'")
            events.append(event)
        return events

    # -- writing ---------------------------------------------------------------------------
    def promote(self, workdir: Path | str = ".", reason: str = "", git_rev: str | None = None,
                fetch: FetchSource | None = None) -> str:  # fmt: skip
        """Copy the pipeline's current outputs from `workdir` into a new version and make it
        the champion. Refuses (RegistryError, nothing written) when an output is missing or
        unreadable, the export failed its parity check, or an ONNX file cannot be loaded.
        Safe to run concurrently: each promotion gets its own version number. version.json's
        `fetch` is `fetch.record(version)`, or null when the outputs were not shared (no
        remotes): the version's files then exist only here and in this repository's cache."""
        work = Path(workdir)
        missing = [str(rel) for rel in REQUIRED if not (work / rel).is_file()]
        onnx_files = sorted((work / layout.EXPORTS).glob("*.onnx")) if (work / layout.EXPORTS).is_dir() else []
        if not onnx_files:
            missing.append(f"{layout.EXPORTS}/*.onnx")
        if missing:
            raise RegistryError(f"{work}: cannot promote, missing {', '.join(missing)} (run the pipeline first)")
        export = read_json(work / layout.EXPORT_METRICS)
        parity = export.get("parity_passed") if isinstance(export, dict) else None
        if parity is not True:  # the JSON value true only: "false" (a string) is truthy
            raise RegistryError(f"{work / layout.EXPORT_METRICS}: parity_passed is "
                                f"{'false' if parity in (False, None) else _shown(parity) + ', not true'}; "
                                "refusing to promote")  # fmt: skip
        metrics = {p.stem: read_json(p) for p in sorted((work / "metrics").glob("*.json"))}
        fid = metrics["eval"].get("fid") if isinstance(metrics.get("eval"), dict) else None
        if fid is not None and not finite_number(fid):
            raise RegistryError(f"{work / layout.EVAL_METRICS}: fid is {_shown(fid)}, not a finite number; "
                                "refusing to promote")  # fmt: skip
        self.root.mkdir(parents=True, exist_ok=True)
        # Copied before the lock is taken (a large model takes seconds), numbered under it. Not
        # artifacts.atomic_path, which replaces an existing target: renaming a directory onto a
        # non-empty one fails instead, so even a writer that ignores the lock never erases a version.
        staging, held = claim_staging(self.root)
        try:
            for f in [*onnx_files, work / layout.MODEL_CARD]:
                shutil.copy2(f, staging / f.name)
            for f in onnx_files:
                _verify_onnx(staging / f.name, f)
            (staging / "metrics").mkdir()
            for p in sorted((work / "metrics").glob("*.json")):
                shutil.copy2(p, staging / "metrics" / p.name)
            shutil.copy2(work / layout.PARAMS, staging / layout.PARAMS.name)
            record = {
                "version": "",
                "created": "",
                "git_rev": git_rev or git_revision(work),
                "dvc_lock_sha256": _sha256(work / layout.DVC_LOCK),
                "files": sorted(f.name for f in onnx_files),
                "metrics": metrics,
                "reason": reason,
                "fetch": None,
            }
            with locked(self.root):
                remove_stale_staging(self.root)
                version = self._place(staging, record, fetch)
                self._set_champion(version, {"action": "promote", "reason": reason})
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        finally:
            os.close(held)
        return version

    def _place(self, staging: Path, record: dict, fetch: FetchSource | None = None) -> str:
        """Rename the staged version into place under the next free number (called locked)."""
        existing = self.versions()
        number = int(existing[-1][1:]) + 1 if existing else 1
        for _ in range(1000):
            version = f"v{number:04d}"
            record.update(version=version, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                          fetch=fetch.record(version) if fetch else None)  # fmt: skip
            (staging / "version.json").write_text(json.dumps(record, indent=2) + "\n")
            try:
                os.rename(staging, self.root / version)  # the complete version appears at once
                return version
            except OSError as err:
                if err.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                    raise
                number += 1  # taken by a writer that does not use the lock (another tool, an older ganpipe)
        raise RegistryError(f"{self.root}: no free version number after {existing[-1] if existing else 'v0000'}")

    def rollback(self) -> str:
        """Make the champion before the current one the champion again (repeatable: each
        rollback steps one promotion further back)."""
        if not self.root.is_dir():  # checked before locking, which would create the folder
            raise RegistryError(f"{self.root}: no champion to roll back from (no registry there)")
        with locked(self.root):
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
            if not (self.root / target).is_dir():
                raise RegistryError(f"{self.root / 'history.jsonl'} names {target}, which is not a version in "
                                    f"{self.root}")  # fmt: skip
            self._set_champion(target, {"action": "rollback", "reason": f"rolled back from {champ}"})
        return target

    def _set_champion(self, version: str, event: dict) -> None:
        write_bytes(self.root / "champion", (version + "\n").encode())
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "version": version, **event}
        with open(self.root / "history.jsonl", "a") as fh:
            fh.write(json.dumps(entry) + "\n")

    def table(self) -> list[dict]:
        """One row per version; a version whose version.json cannot be read is still listed, with
        `error` saying why, so that one corrupt folder does not hide the others."""
        try:
            champ = self.champion()
        except RegistryError:
            champ = None  # the caller asks champion() itself to report a broken pointer
        rows = []
        for v in self.versions():
            try:
                info = self.info(v)
            except RegistryError as err:
                rows.append({"version": v, "champion": v == champ, "error": str(err)})
                continue
            ev = info["metrics"].get("eval")
            fid = ev.get("fid") if isinstance(ev, dict) else None
            rows.append({"version": v, "champion": v == champ, "created": info["created"],
                         "fid": fid if isinstance(fid, int | float) and not isinstance(fid, bool) else None,
                         "git_rev": info["git_rev"][:10], "files": ", ".join(info["files"])})  # fmt: skip
        return rows
