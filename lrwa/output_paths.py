"""Whether lrwa can write where it was told to, checked before any work that would be lost.

`check_folder(path, label)` and `check_file(path, label)` are the one check every command
makes on a folder or file it will write (`--out`, `--storage`, the teacher cache, ...).
They refuse, with one LrwaError line naming the label, the path and the reason: a
regular file or a device (/dev/null) where a folder is wanted, a folder where a file is
wanted, a path under a file, a symlink loop or a dangling symlink, and a place that is
read-only or not writable. Writability is tested by creating and removing a probe,
because permission bits say nothing to root and nothing about read-only mounts.
Nothing is created by a check that passes (the probe is removed again).
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path

from lrwa.errors import LrwaError

_PROBE_PREFIX = ".lrwa-probe-"


def _refused(label: str, path: Path, reason: str) -> LrwaError:
    return LrwaError(f"{label} {path} cannot be used: {reason}")


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def _nearest_existing(path: Path, label: str) -> tuple[Path, os.stat_result]:
    """`path` or its nearest existing ancestor, with its status (symlinks followed)."""
    candidate = path
    while True:
        try:
            return candidate, os.stat(candidate)
        except FileNotFoundError:
            if os.path.lexists(candidate):
                raise _refused(label, path, f"{candidate} is a symbolic link to nothing") from None
            if candidate.parent == candidate:
                raise _refused(label, path, "no part of it exists") from None
            candidate = candidate.parent
        except NotADirectoryError:
            candidate = candidate.parent  # the file in the way is found further up
        except OSError as error:
            if error.errno == errno.ELOOP:
                while candidate.parent != candidate and _loops(candidate.parent):
                    candidate = candidate.parent  # name the link itself, not a path under it
                raise _refused(label, path, f"{candidate} is a symbolic link loop") from None
            raise _refused(label, path, f"{candidate}: {error.strerror}") from None


def _loops(path: Path) -> bool:
    try:
        os.stat(path)
    except OSError as error:
        return error.errno == errno.ELOOP
    return False


def _probe(folder: Path, label: str, path: Path, make_folder: bool) -> None:
    """Create and remove a probe in `folder`: the real test of writability."""
    try:
        if make_folder:
            os.rmdir(tempfile.mkdtemp(prefix=_PROBE_PREFIX, dir=folder))
        else:
            descriptor, probe = tempfile.mkstemp(prefix=_PROBE_PREFIX, dir=folder)
            os.close(descriptor)
            os.unlink(probe)
    except OSError as error:
        raise _refused(label, path, f"{folder} is not writable ({error.strerror})") from None


def _check_ancestry(path: Path, label: str, target: Path) -> tuple[Path, os.stat_result]:
    existing, status = _nearest_existing(path, label)
    if existing != path and not stat.S_ISDIR(status.st_mode):
        raise _refused(label, target, f"{existing} is {_kind(status.st_mode)}, not a folder")
    return existing, status


def check_folder(path: str | Path, label: str) -> None:
    """Refuse `path` unless lrwa can create it as a folder, or write into it if it exists."""
    path = Path(path)
    existing, status = _check_ancestry(path, label, path)
    if existing == path and not stat.S_ISDIR(status.st_mode):
        raise _refused(label, path, f"it is {_kind(status.st_mode)}, not a folder")
    _probe(existing, label, path, make_folder=existing != path)


def check_file(path: str | Path, label: str) -> None:
    """Refuse `path` unless lrwa can write it as a file (an existing file would be replaced)."""
    path = Path(path)
    existing, status = _check_ancestry(path, label, path)
    if existing == path:
        if not stat.S_ISREG(status.st_mode):
            raise _refused(label, path, f"it is {_kind(status.st_mode)}, not a regular file")
        existing, status = path.parent, os.stat(path.parent)
    _probe(existing, label, path, make_folder=existing != path.parent)
