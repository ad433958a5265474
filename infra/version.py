"""Which code this is, for lineage: snapshot manifests and training runs record it."""

from __future__ import annotations

import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def package_version() -> str:
    """The installed package's version ("unknown" when it is not installed)."""
    try:
        return version("oasst-data-engine")
    except PackageNotFoundError:
        return "unknown"


def code_version() -> str:
    """``git describe`` of this checkout, else the installed package's version."""
    try:
        found = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--tags"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
        if found.returncode == 0 and found.stdout.strip():
            return found.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return package_version()
