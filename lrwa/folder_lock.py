"""One writer per folder: an exclusive hold on a run folder (or a study folder) while it is written.

    with hold_folder(out_dir, "lrwa distill"):
        ...  # nobody else holding out_dir gets past hold_folder until this block ends

`hold_folder` takes an fcntl write lock on the file `.lrwa.lock` inside the folder and
writes the holder's record there: host, pid, start time and purpose. A second holder, in
another process or in this one, fails at once with an LrwaError that quotes the record:
"<folder> is in use by <purpose> (host H, pid P, since T)". It never waits, and it reads
the record without truncating it.

The lock is an open-file-description lock (F_OFD_SETLK, Linux) where the system has
them, else a classic POSIX lock (`fcntl.lockf`). Both are the same byte-range locks to
the kernel and to NFS; the difference is ownership. A POSIX lock belongs to the process
and is dropped when the process closes *any* descriptor of the file, e.g. when a copy
of the run folder (a Ray checkpoint made from it) reads the lock file; an OFD lock
belongs to the one open file and survives that. With POSIX locks only, this module
also keeps the folders held by this process and refuses a second hold before it would
open the file again.

The kernel releases the lock when the holder's process ends in any way, SIGKILL and
out-of-memory kills included, so a dead holder never blocks anyone: the record it left
behind is ignored because no process holds the lock. The lock file itself stays in the
folder; removing it would let two processes lock two different files of the same name.

Across machines: fcntl locks are honoured on NFSv4 (locking is part of the protocol) and
on NFSv3 where the lock manager (lockd/statd) runs, so two hosts sharing an NFS folder
exclude each other. A file system without locks (NFS mounted `nolock`, some FUSE
mounts) makes the hold local to one machine, and one that refuses them fails the hold
in one line.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

from lrwa.errors import LrwaError
from lrwa.yaml_files import clipped

LOCK_FILE = ".lrwa.lock"
_RECORD_BYTES = 4096  # a record is about 150 bytes; a larger file was not written by us

_held_here: dict[tuple[int, int], dict[str, object]] = {}
_held_here_guard = threading.Lock()


def _record(purpose: str) -> dict[str, object]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "purpose": purpose,
            "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def _in_use(folder: Path, record: object) -> LrwaError:
    if not isinstance(record, dict):
        # Between a new holder's lock and its record the file is briefly empty.
        return LrwaError(f"{folder} is in use by another lrwa process (no record of it yet)")
    purpose, host, pid, since = (clipped(str(record.get(key, "?")))
                                 for key in ("purpose", "host", "pid", "since"))
    return LrwaError(f"{folder} is in use by {purpose} (host {host}, pid {pid}, since {since})")


def _read_record(descriptor: int) -> object:
    try:
        return json.loads(os.pread(descriptor, _RECORD_BYTES, 0).decode("utf-8"))
    except (OSError, ValueError):
        return None


def _try_lock(descriptor: int) -> bool:
    """Take the write lock on the whole file without waiting; False when another holds it."""
    try:
        if hasattr(fcntl, "F_OFD_SETLK"):
            # struct flock: l_type, l_whence, l_start, l_len (0: to the end), l_pid (0 for OFD).
            request = struct.pack("hhqqi", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)
            fcntl.fcntl(descriptor, fcntl.F_OFD_SETLK, request)
        else:
            fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        if error.errno in (errno.EACCES, errno.EAGAIN):
            return False
        raise
    return True


def _folder_identity(folder: Path) -> tuple[int, int]:
    status = folder.stat()
    return status.st_dev, status.st_ino


@contextlib.contextmanager
def hold_folder(folder: Path, purpose: str) -> Iterator[None]:
    """Hold `folder` (created if missing) exclusively for the block; see the module docstring.

    `purpose` says who holds it, as a second holder's message will show it, e.g.
    "lrwa distill" or "the study 'dc'".
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        identity = _folder_identity(folder)
    except OSError as error:
        raise LrwaError(f"cannot use {folder}: {error.strerror}") from None
    record = _record(purpose)
    with _held_here_guard:
        if identity in _held_here:
            raise _in_use(folder, _held_here[identity])
        _held_here[identity] = record
    try:
        try:
            # Never O_TRUNC: a refused prober must leave the holder's record. O_NOFOLLOW: a
            # symlink planted in the folder must not make the holder truncate its target.
            descriptor = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW,
                                 0o666)
        except OSError as error:
            raise LrwaError(f"cannot lock {folder / LOCK_FILE}: {error.strerror}") from None
        try:
            try:
                locked = _try_lock(descriptor)
            except OSError as error:
                raise LrwaError(f"cannot lock {folder / LOCK_FILE}: {error.strerror} (does "
                                "this file system support locks?)") from None
            if not locked:
                raise _in_use(folder, _read_record(descriptor))
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, json.dumps(record).encode("utf-8"), 0)
            try:
                yield
            finally:
                os.ftruncate(descriptor, 0)  # no stale record; closing releases the lock
        finally:
            os.close(descriptor)
    finally:
        with _held_here_guard:
            del _held_here[identity]
