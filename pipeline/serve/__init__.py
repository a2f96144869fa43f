"""The HTTP service for exported generators (`ganpipe serve`).

Only the standard library here: `release()` is for any caller (`ganpipe --version` too) without
loading the service."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def release() -> str | None:
    """The installed ganpipe's version; None when run from a checkout that was never installed."""
    try:
        return version("ganpipe")
    except PackageNotFoundError:
        return None
