"""Where a result came from: package versions and the git revision.

The revision is built into a wheel by setup.py (`pip install .` included), and read
from the checkout for an editable install; see `git_revision`.

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

REVISION_FILE = "_revision.txt"  # written into the built package by setup.py
_PACKAGES = ("torch", "torchvision", "numpy", "ray", "optuna", "pyarrow", "pandas")


def _installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _git(source: Path, *arguments: str) -> str | None:
    try:
        completed = subprocess.run(["git", "-C", str(source), *arguments], capture_output=True,
                                   text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return completed.stdout.strip() or None if completed.returncode == 0 else None


@functools.lru_cache(maxsize=1)
def git_revision() -> str | None:
    """The commit lrwa's code comes from, or None when it cannot be known.

    An installed wheel carries the revision its build recorded (setup.py writes
    `REVISION_FILE` into the package). A checkout imported in place (an editable install,
    or PYTHONPATH) is asked directly, but only when lrwa's folder is the top of that
    checkout: site-packages inside some other repository is not lrwa's history. The
    working directory's repository is never asked, since it need not hold this code.
    """
    package = Path(lrwa.__file__).resolve().parent
    recorded = package / REVISION_FILE
    if recorded.is_file():
        return recorded.read_text().strip() or None
    source = package.parent
    top = _git(source, "rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != source:
        return None
    return _git(source, "rev-parse", "HEAD")


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str | None]:
    found = {"lrwa": lrwa.__version__, "python": platform.python_version()}
    found.update({package: _installed_version(package) for package in _PACKAGES})
    found["git"] = git_revision()
    return found
