"""Where a study lives: a folder (local or shared) or an object store (`s3://`, `gs://`).

Every study-level file is read and written straight in the storage through
`pyarrow.fs`; there is no local mirror. In a folder a file is written to a
temporary name and renamed, so readers see it whole or not at all; an object
store makes an object visible only when its upload completes. Ray Tune writes its
own experiment state and each trial's checkpoints under `ray/` of the same place.

Credentials for object stores come only from the provider's chain (environment,
profile, instance role), never from lrwa's files or logs; another S3-compatible
endpoint from `AWS_ENDPOINT_URL` or the URI's query, e.g.
`s3://bucket/prefix?endpoint_override=127.0.0.1:9000&scheme=http`. The query never
appears in what lrwa prints or records (`redact`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from lrwa.atomic import write_with
from lrwa.errors import LrwaError, first_line
from lrwa.tune.layout import LOCK_FILE, OPTUNA_FILE

REMOTE_SCHEMES = ("s3", "gs", "gcs")


def is_remote(uri: str | os.PathLike[str]) -> bool:
    return urlsplit(str(uri)).scheme in REMOTE_SCHEMES


def redact(uri: str) -> str:
    """The URI without its query (which may name an endpoint but never belongs in logs)."""
    parts = urlsplit(uri)
    if parts.scheme not in REMOTE_SCHEMES:
        return uri
    return f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/")


@functools.lru_cache(maxsize=8)
def _filesystem(uri: str) -> tuple[Any, str]:
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as error:  # noqa: BLE001 - pyarrow raises several types for bad URIs
        raise LrwaError(f"storage {redact(uri)}: {type(error).__name__}: "
                        f"{first_line(error)}") from None


def storage_uri(storage: str | os.PathLike[str]) -> str:
    """An object-store URI as given, or a folder made absolute (Tune runs trials elsewhere)."""
    text = os.fspath(storage)
    if is_remote(text):
        return text
    text = text.removeprefix("file://")
    if "://" in text:
        raise LrwaError(f"storage {text!r}: unsupported scheme (use a folder, file://, or "
                        f"one of {', '.join(s + '://' for s in REMOTE_SCHEMES)})")
    return str(Path(text).expanduser().resolve())


@dataclasses.dataclass(frozen=True)
class StudyStore:
    """One study's place in a storage; plain values only, so it pickles to every trial."""

    storage: str  # from `storage_uri`: an absolute folder or an object-store URI
    name: str

    @property
    def remote(self) -> bool:
        return is_remote(self.storage)

    @property
    def filesystem(self) -> Any:
        return _filesystem(self.storage)[0]

    def path(self, relative: str = "") -> str:
        """The path of `relative` (a '/'-separated path inside the study) in the filesystem."""
        base = _filesystem(self.storage)[1].rstrip("/")
        return "/".join(part for part in (base, self.name, relative.strip("/")) if part)

    def uri(self, relative: str = "") -> str:
        """A URI of `relative` that other pyarrow-based code (Ray Train) can open, the
        endpoint query included; never print it (`location` is for people)."""
        if not self.remote:
            return str(self.local_path(relative))
        parts = urlsplit(self.storage)
        path = "/".join(part for part in (parts.path.rstrip("/"), self.name, relative) if part)
        query = f"?{parts.query}" if parts.query else ""
        return f"{parts.scheme}://{parts.netloc}{'' if path.startswith('/') else '/'}{path}{query}"

    def location(self, relative: str = "") -> str:
        """Where the study (or a file of it) lives, for people and for study.json."""
        root = f"{redact(self.storage)}/{self.name}"
        return f"{root}/{relative}" if relative else root

    def local_path(self, relative: str = "") -> Path:
        """The local path of a file of a folder storage (readers such as Optuna's journal
        backend need one)."""
        if self.remote:
            raise ValueError("an object store has no local path")
        return Path(self.path(relative))

    # -- files --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _failing(self, action: str, relative: str) -> Iterator[None]:
        try:
            yield
        except OSError as error:
            raise LrwaError(f"cannot {action} {self.location(relative)} "
                            f"({first_line(error)[:200]})") from None

    def exists(self, relative: str = "") -> bool:
        with self._failing("reach", relative):
            return self.filesystem.get_file_info(self.path(relative)).type != pafs.FileType.NotFound

    def read_bytes(self, relative: str) -> bytes | None:
        """The file's bytes, or None when there is no such file."""
        with self._failing("read", relative):
            try:
                with self.filesystem.open_input_stream(self.path(relative)) as source:
                    return source.readall()
            except OSError as error:
                if isinstance(error, FileNotFoundError) or not self.exists(relative):
                    return None
                raise

    def write_bytes(self, relative: str, data: bytes) -> None:
        """Replace the file whole (in a folder, through `lrwa.atomic`)."""
        target = self.path(relative)
        with self._failing("write", relative):
            if not self.remote:
                write_with(target, lambda sink: sink.write(data))
                return
            self.filesystem.create_dir(target.rpartition("/")[0], recursive=True)
            with self.filesystem.open_output_stream(target) as sink:
                sink.write(data)

    def list_files(self, relative: str = "", recursive: bool = True) -> list[str]:
        """Paths, relative to the study, of the files at or under `relative`."""
        root = self.path()
        selector = pafs.FileSelector(self.path(relative), recursive=recursive,
                                     allow_not_found=True)
        with self._failing("list", relative):
            try:
                infos = self.filesystem.get_file_info(selector)
            except NotADirectoryError:
                return [relative]
        return sorted(info.path[len(root) + 1:] for info in infos
                      if info.type == pafs.FileType.File)

    def delete(self, relative: str) -> None:
        target = self.path(relative)
        kind = self.filesystem.get_file_info(target).type
        if kind == pafs.FileType.File:
            self.filesystem.delete_file(target)
        elif kind == pafs.FileType.Directory:
            self.filesystem.delete_dir(target)

    def read_record(self, relative: str, record_format: str | None = None) -> dict[str, Any] | None:
        """A JSON object lrwa wrote (its "format", where given, names what it is), or None
        when there is none, or the file is not one."""
        try:
            record = json.loads(self.read_bytes(relative) or b"null")
        except ValueError:
            return None
        if isinstance(record, dict) and record_format in (None, record.get("format")):
            return record
        return None

    def digest(self, relative: str) -> str | None:
        data = self.read_bytes(relative)
        return None if data is None else hashlib.sha256(data).hexdigest()

    # -- the study as a whole -----------------------------------------------------------

    def holds_anything(self) -> bool:
        """Whether the study holds files other than hidden ones (locks, probes) and the
        lease of the driver holding it (`lock.py`)."""
        return any(not path.rpartition("/")[2].startswith(".") and path != LOCK_FILE
                   for path in self.list_files())

    def check_writable(self) -> None:
        """Write and remove a probe, so a missing bucket, a denied write or a read-only
        folder fails now, in one line, not after the first trial."""
        probe = f".write-probe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.write_bytes(probe, b"ok")
        self.delete(probe)

    def move(self, relative: str, target: str) -> None:
        """Move a file or folder of the study to `target`, a path of the same filesystem (an
        object store copies, then deletes: it has no rename)."""
        fs = self.filesystem
        with self._failing("move", relative):
            fs.create_dir(target.rpartition("/")[0], recursive=True)
            if self.remote:
                pafs.copy_files(self.path(relative), target, source_filesystem=fs,
                                destination_filesystem=fs)
                self.delete(relative)
            else:
                fs.move(self.path(relative), target)

    def move_aside(self) -> str:
        """Move the study to `<name>.old-<time>`; returns where it went."""
        base = f"{self.name}.old-{time.strftime('%Y%m%d-%H%M%S')}"
        aside, counter = dataclasses.replace(self, name=base), 0
        while aside.exists():
            counter += 1
            aside = dataclasses.replace(self, name=f"{base}-{counter}")
        self.move("", aside.path())
        return aside.location()

    def journal_file(self) -> Path:
        """The local file Optuna's journal backend writes: the study's own file in a folder
        storage; for an object store, a working copy in lrwa's cache that is uploaded to the
        study after every change of a trial's state (`journal.py`)."""
        if not self.remote:
            return self.local_path(OPTUNA_FILE)
        from lrwa.teacher import cache_dir

        key = hashlib.sha256(self.location().encode()).hexdigest()[:16]
        return cache_dir() / "journals" / key / OPTUNA_FILE


def open_store(storage: str | os.PathLike[str], name: str) -> StudyStore:
    return StudyStore(storage_uri(storage), name)


def open_study_location(location: str | os.PathLike[str]) -> StudyStore:
    """The store of an existing study given its own folder or URI (for `lrwa report`):
    `s3://b/p/<study>?q` is study `<study>` of `s3://b/p?q`; a folder `DIR/<study>`, of DIR."""
    location = os.fspath(location)
    if not is_remote(location):
        path = Path(storage_uri(location))
        return StudyStore(str(path.parent), path.name)
    parts = urlsplit(location)
    parent, _, name = parts.path.rstrip("/").rpartition("/")
    if not name or not parts.netloc:
        raise LrwaError(f"{redact(location)} does not name a study (expected "
                        f"{parts.scheme}://bucket/prefix/<study>)")
    query = f"?{parts.query}" if parts.query else ""
    return StudyStore(f"{parts.scheme}://{parts.netloc}{parent}{query}", name)
