"""Push to the DVC remote everything another machine needs to restore a run instead of rerunning
it: `dvc push --run-cache`, plus the files of the run-cache's entries that it leaves out.

DVC restores a stage from its run-cache (`dvc repro --pull` on another machine) only when every
output the run recorded is in the remote. `dvc push --run-cache` sends the run records and the
workspace's DVC-cached outputs, but neither the outputs of runs no longer in the workspace (a
parameter set run and never committed) nor any output kept in git (`cache: false`: metrics,
plots), though DVC's cache holds a copy of each. Without them the stage runs again there (DVC:
"Some of the cache files do not exist neither locally nor on remote"). DVC's maintainers describe
the run-cache transfer as moving the run records only (treeverse/dvc#10472); this fills the gap
with DVC's own API (the stage cache lists each run's objects, the cloud pushes them) rather than
copying files by hand. `ganpipe push` runs it.
"""

from __future__ import annotations

from pathlib import Path


def push_runs(remote: str | None = None) -> int:
    """`dvc push --run-cache` in the repository of the current directory (DVC's API reads the run-cache's
    stage paths from there), then every file named by a run-cache entry of its DVC cache that the
    remote lacks. Returns how many of those files the second step sent (0 when the remote held them
    all). Raises DVC's own errors (no remote, unreachable remote, ...)."""
    from dvc.repo import Repo

    with Repo() as dvc:
        dvc.push(run_cache=True, remote=remote)
        runs = Path(dvc.stage_cache.cache_dir)
        entries = [(p.parent.name, p.name) for p in sorted(runs.glob("*/*/*")) if p.is_file()]
        sent = 0
        for odb, objs in dvc.stage_cache.get_used_objs(entries).items():
            sent += len(dvc.cloud.push(objs, remote=remote, odb=odb).transferred)
        return sent
