"""Build hook: the wheel records the git revision it was built from.

pyproject.toml holds all of the project's metadata; this file only adds one step to
setuptools' build_py. An installed wheel has no checkout beside it, so
`lrwa.provenance.git_revision` reads the revision this step writes into the built package
(`lrwa/_revision.txt`). An editable install is skipped: there the checkout itself answers.
A wheel built from a folder that is not a git checkout (an sdist) records nothing.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

REVISION_FILE = "_revision.txt"  # lrwa.provenance.REVISION_FILE


def _revision(source: Path) -> str | None:
    """The commit of the checkout at `source`, when `source` is the top of one."""
    def git(*arguments: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(source), *arguments], capture_output=True,
                                  text=True, timeout=10, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() or None if done.returncode == 0 else None

    top = git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != source.resolve():
        return None  # not a checkout of lrwa itself (e.g. an sdist inside another repository)
    return git("rev-parse", "HEAD")


class BuildWithRevision(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        revision = _revision(Path(__file__).resolve().parent)
        if revision is not None:
            Path(self.build_lib, "lrwa", REVISION_FILE).write_text(revision + "\n")


setup(cmdclass={"build_py": BuildWithRevision})
