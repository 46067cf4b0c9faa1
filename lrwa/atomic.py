"""Atomic file writes: every result lrwa writes appears whole or not at all.

A run killed mid-write must never leave a truncated file where a good one
stood, so each writer writes a temporary file in the same folder, flushes it to
disk, and renames it over the target (an atomic step on POSIX file systems).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success rename it onto `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                         dir=target.parent)
    os.close(handle)
    temporary_path = Path(temporary)
    try:
        yield temporary_path
        with open(temporary_path, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(temporary_path, target)
    finally:
        temporary_path.unlink(missing_ok=True)


def write_with(target: str | Path, writer: Callable[[IO[Any]], None], binary: bool = True) -> None:
    """Call `writer` on an open temporary file, then move it onto `target`."""
    with atomic_path(target) as temporary, open(temporary, "wb" if binary else "w") as stream:
        writer(stream)


def write_text(target: str | Path, text: str) -> None:
    write_with(target, lambda stream: stream.write(text), binary=False)
