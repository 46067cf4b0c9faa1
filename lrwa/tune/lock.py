"""One driver per study: the study is held while a driver runs it.

A folder storage is held with `lrwa.folder_lock.hold_folder` (a POSIX lock the kernel
drops when the holder dies, honoured across hosts on NFSv4). An object store offers
pyarrow no atomic create-if-absent, so there the hold is the best the store allows: a
lease object `lock.json` naming the holder and renewed every `RENEW_S` seconds. A
driver that finds a lease renewed within `LEASE_S` seconds refuses to start and names
its holder; a lease older than that belongs to a dead driver and is taken over. After
writing its lease a driver waits `SETTLE_S` seconds and reads it back, so of two
drivers started at once the later writer wins and the other refuses; two starts within
the same instant of the read-back can still both pass (S3's conditional writes would
close that gap; pyarrow does not expose them).
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from lrwa.errors import LrwaError
from lrwa.folder_lock import hold_folder
from lrwa.tune.layout import LOCK_FILE
from lrwa.tune.storage import StudyStore

LEASE_S = 90.0
RENEW_S = 20.0
SETTLE_S = 2.0


def _busy(store: StudyStore, lease: dict[str, Any]) -> LrwaError:
    return LrwaError(f"study {store.location()} is in use by lrwa tune (host "
                     f"{lease.get('host')}, pid {lease.get('pid')}, since {lease.get('since')});"
                     " wait for it to finish or stop it")


def _alive(lease: dict[str, Any] | None) -> bool:
    """Whether the lease was renewed within LEASE_S. A renewal time that is not a number,
    or lies further ahead than any clock skew, is no lease: it would block for ever."""
    try:
        age = time.time() - float(lease.get("renewed")) if lease else math.inf
    except (TypeError, ValueError):
        return False
    return abs(age) < LEASE_S


@contextlib.contextmanager
def _hold_lease(store: StudyStore) -> Iterator[None]:
    lease = store.read_record(LOCK_FILE)
    if _alive(lease):
        raise _busy(store, lease)
    token = uuid.uuid4().hex
    since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    mine = {"host": socket.gethostname(), "pid": os.getpid(), "since": since, "token": token,
            "renewed": time.time()}
    store.write_bytes(LOCK_FILE, json.dumps(mine).encode())
    time.sleep(SETTLE_S)
    lease = store.read_record(LOCK_FILE)
    if not lease or lease.get("token") != token:
        raise _busy(store, lease or {})
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(RENEW_S):
            current = store.read_record(LOCK_FILE)
            if current and current.get("token") != token:
                return  # taken over after we looked dead; the other driver now holds it
            store.write_bytes(LOCK_FILE, json.dumps({**mine, "renewed": time.time()}).encode())

    renewer = threading.Thread(target=renew, daemon=True, name="lrwa-study-lease")
    renewer.start()
    try:
        yield
    finally:
        stop.set()
        renewer.join()
        current = store.read_record(LOCK_FILE)
        if current and current.get("token") == token:
            store.delete(LOCK_FILE)


def hold_study(store: StudyStore) -> contextlib.AbstractContextManager[None]:
    """Hold the study for the block, or fail at once naming the driver that holds it."""
    if store.remote:
        return _hold_lease(store)
    return hold_folder(store.local_path(), f"lrwa tune of study '{store.name}'")
