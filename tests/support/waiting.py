"""Polling: the tests watch files and logs that another thread or process writes."""

from __future__ import annotations

import time
from pathlib import Path


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05):
    """Call ``predicate`` until it returns something true (returned) or ``timeout`` passes
    (then its last value is returned, so ``assert wait_for(...)`` fails)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def wait_files(directory: Path, pattern: str, count: int, timeout: float = 20) -> list[Path]:
    """The files in ``directory`` matching ``pattern`` once there are ``count`` (or at timeout)."""

    def found() -> list[Path]:
        return sorted(directory.glob(pattern)) if directory.exists() else []

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(files := found()) >= count:
            return files
        time.sleep(0.1)
    return found()
