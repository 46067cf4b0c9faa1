"""Atomic file writes: every result lrwa writes appears whole or not at all.

A run killed mid-write must never leave a truncated file where a good one
stood, so each writer writes a temporary file in the same folder, flushes it to
disk, and renames it over the target (an atomic step on POSIX file systems).
The temporary is named `.<target name>.<random>.tmp`; one left by a killed
process is recognised by `is_temporary` and removed by the next run.

Files follow the umask, as any other program's do (0644 under the usual 022):
the temporary is created with mode 0666 less the umask, not tempfile's 0600.

A full disk (ENOSPC), an exhausted quota (EDQUOT) or a file-size limit (EFBIG)
while writing becomes one LrwaError naming the file; the temporary is removed
and the file it would have replaced is left as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from lrwa.errors import LrwaError

OUT_OF_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# `.<name>.<12 hex>.tmp`, and tempfile's `.<name>.<8 characters>.tmp` of earlier versions.
_TEMPORARY = re.compile(r"\..+\.[A-Za-z0-9_]{8,12}\.tmp")


def out_of_space(error: BaseException | None) -> OSError | None:
    """The ENOSPC/EDQUOT/EFBIG OSError behind `error`, if any.

    torch.save into a stream reports a failed write as a RuntimeError whose context is
    the OSError, so the chain is searched, not only `error` itself.
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in OUT_OF_SPACE:
            return error
        error = error.__cause__ or error.__context__
    return None


def out_of_space_message(target: str | Path, error: OSError) -> str:
    return (f"cannot write {target}: {error.strerror}; nothing of it was written and any "
            "earlier version is kept")


def is_temporary(path: Path) -> bool:
    """A temporary of `atomic_path`, such as a killed write leaves behind."""
    return _TEMPORARY.fullmatch(path.name) is not None


def _create_temporary(target: Path) -> Path:
    while True:
        temporary = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            # 0o666 and the umask decide the mode, as for any file the user's programs create.
            os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return temporary
        except FileExistsError:
            continue


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success rename it onto `target`.

    Writers that can, should write through an open stream (`write_with`): torch.save
    to a file name reports a full disk without saying so.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary = _create_temporary(target)
    except OSError as error:
        raise LrwaError(f"cannot write {target}: {error.strerror}") from None
    try:
        yield temporary
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(temporary, target)
    except Exception as error:
        cause = out_of_space(error)
        if cause is None:
            raise
        raise LrwaError(out_of_space_message(target, cause)) from None
    finally:
        temporary.unlink(missing_ok=True)


def write_with(target: str | Path, writer: Callable[[IO[Any]], None], binary: bool = True) -> None:
    """Call `writer` on an open temporary file, then move it onto `target`."""
    with atomic_path(target) as temporary, open(temporary, "wb" if binary else "w") as stream:
        writer(stream)


def write_text(target: str | Path, text: str) -> None:
    write_with(target, lambda stream: stream.write(text), binary=False)
