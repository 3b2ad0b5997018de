"""Whether this run is CI (the environment variable ``CI`` set, e.g. ``CI=true``): there a test
that cannot run for want of a program or a download fails instead of skipping, since a CI run
that quietly skips the end-to-end tests proves nothing."""

from __future__ import annotations

import os


def on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
