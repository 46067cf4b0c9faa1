"""Where a result came from: package versions and the git revision.

Every summary, checkpoint and result row carries this, so a number found in a
Parquet file months later can be traced to the code that produced it.
"""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import lrwa

_PACKAGES = ("torch", "torchvision", "numpy", "ray", "optuna", "pyarrow", "pandas")


def _installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@functools.lru_cache(maxsize=1)
def git_revision() -> str | None:
    """The checkout's commit, or None when lrwa runs from an installed wheel."""
    source = Path(lrwa.__file__).resolve().parent.parent
    try:
        completed = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True,
                                   text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return completed.stdout.strip() or None if completed.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str | None]:
    found = {"lrwa": lrwa.__version__, "python": platform.python_version()}
    found.update({package: _installed_version(package) for package in _PACKAGES})
    found["git"] = git_revision()
    return found
