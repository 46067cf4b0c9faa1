"""Where a study lives: a local or shared folder, or an object store (`s3://`, `gs://`).

Every process works in a local folder laid out as `runner.py` draws it. For a
folder storage that is the study folder itself. For an object store it is a
mirror under the cache folder, and the store is the source of truth:

* a trial pulls its run folder from the store when it starts (so it resumes on
  any node) and pushes what changed after every epoch, before Tune hears of the
  epoch, so the store never lags what Tune has recorded;
* the driver pulls the study's own files when it starts (so a fresh head node
  resumes a study begun elsewhere) and pushes study.json, trials.parquet and a
  copy of the Optuna journal as trials end;
* Ray Tune writes its experiment state straight to the store (`storage_filesystem`).

pyarrow.fs does the object-store work: credentials come from the provider's usual
chain (environment, profile, instance role), never from lrwa's files, and an
S3-compatible endpoint from `AWS_ENDPOINT_URL` or the URI's query, e.g.
`s3://bucket/prefix?endpoint_override=127.0.0.1:9000&scheme=http`. Objects appear
whole on upload, so readers never see a partial file.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from lrwa.atomic import atomic_path
from lrwa.errors import LrwaError

REMOTE_SCHEMES = ("s3", "gs", "gcs")


def is_remote(uri: str | os.PathLike[str]) -> bool:
    return urlsplit(str(uri)).scheme in REMOTE_SCHEMES


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else ""


@functools.lru_cache(maxsize=8)
def _filesystem(uri: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as error:  # noqa: BLE001 - pyarrow raises several types for bad URIs
        raise LrwaError(f"storage {redact(uri)}: {type(error).__name__}: "
                        f"{_first_line(error)}") from None


def redact(uri: str) -> str:
    """The URI without its query (which may name an endpoint but never belongs in logs)."""
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.netloc}{parts.path}".rstrip("/")


def open_storage(storage: str | os.PathLike[str]) -> StudyStorage:
    """A StudyStorage; a folder is made absolute here, since Tune runs trials elsewhere."""
    text = os.fspath(storage)
    return StudyStorage(text if is_remote(text) else str(StudyStorage(text).local_root()))


def split_study_uri(uri: str) -> tuple[StudyStorage, str]:
    """`s3://bucket/prefix/<study>?query` -> (the storage `s3://bucket/prefix?query`, study)."""
    parts = urlsplit(uri)
    parent, _, name = parts.path.rstrip("/").rpartition("/")
    if not name or not parts.netloc:
        raise LrwaError(f"{redact(uri)} does not name a study (expected "
                        f"{parts.scheme}://bucket/prefix/<study>)")
    query = f"?{parts.query}" if parts.query else ""
    return StudyStorage(f"{parts.scheme}://{parts.netloc}{parent}{query}"), name


def fetch_study(uri: str, skip: Iterable[str] = ("runs", "ray")) -> tuple[StudyStorage, str, Path]:
    """A fresh local copy of a stored study's results (its curves, trial table, study files,
    journal and report; not the run folders or Ray state): (storage, study, local folder)."""
    storage, name = split_study_uri(uri)
    local = storage.study_dir(name)
    if local.exists():
        shutil.rmtree(local)  # a mirror: the store is the truth
    if not storage.pull(name, skip=skip):
        raise LrwaError(f"{redact(uri)} holds no study results (nothing stored there)")
    return storage, name, local


@dataclasses.dataclass(frozen=True)
class StudyStorage:
    """A study storage URI or folder; plain values only, so it pickles to every trial."""

    uri: str

    @property
    def remote(self) -> bool:
        return is_remote(self.uri)

    # -- the local side ------------------------------------------------------------------------

    def local_root(self) -> Path:
        if not self.remote:
            text = self.uri.removeprefix("file://")
            if "://" in text:
                raise LrwaError(f"storage {text!r}: unsupported scheme (use a folder, "
                                f"file://, or one of {', '.join(s + '://' for s in REMOTE_SCHEMES)})")
            return Path(text).expanduser().resolve()
        from lrwa.teacher import cache_dir

        key = hashlib.sha256(redact(self.uri).encode()).hexdigest()[:16]
        return cache_dir() / "mirrors" / key

    def study_dir(self, name: str) -> Path:
        return self.local_root() / name

    def location(self, name: str) -> str:
        """Where the study lives, for people and for study.json's resumption guard."""
        return f"{redact(self.uri)}/{name}" if self.remote else str(self.study_dir(name))

    # -- the store side ------------------------------------------------------------------------

    def filesystem(self) -> tuple[Any, str]:
        """(pyarrow FileSystem, base path within it); remote storages only."""
        return _filesystem(self.uri)

    def remote_path(self, name: str, relative: str = "") -> str:
        base = self.filesystem()[1].rstrip("/")
        return "/".join(part for part in (base, name, relative.strip("/")) if part)

    def _remote_files(self, name: str, relative: str) -> list[str]:
        """Paths (relative to the study) of the stored files at or under `relative`."""
        import pyarrow.fs as pafs

        fs = self.filesystem()[0]
        root = self.remote_path(name)
        target = self.remote_path(name, relative)
        info = fs.get_file_info(target)
        if info.type == pafs.FileType.File:
            return [relative]
        if info.type != pafs.FileType.Directory:
            return []
        selector = pafs.FileSelector(target, recursive=True, allow_not_found=True)
        return [item.path[len(root) + 1:] for item in fs.get_file_info(selector)
                if item.type == pafs.FileType.File]

    def pull(self, name: str, relative: str = "", skip: Iterable[str] = ()) -> int:
        """Copy the store's files at or under `relative` into the local study folder,
        leaving out those under any `skip` prefix; returns how many were copied."""
        if not self.remote:
            return 0
        fs = self.filesystem()[0]
        local = self.study_dir(name)
        skipped = tuple(prefix.rstrip("/") + "/" for prefix in skip)
        copied = 0
        for path in self._remote_files(name, relative):
            if path.startswith(skipped):
                continue
            with atomic_path(local / path) as temporary, \
                    fs.open_input_stream(self.remote_path(name, path)) as source, \
                    open(temporary, "wb") as target:
                shutil.copyfileobj(source, target, length=1 << 20)
            copied += 1
        return copied

    def push(self, name: str, relatives: Iterable[str]) -> None:
        """Copy these local files (paths relative to the study folder) to the store."""
        if not self.remote:
            return
        fs = self.filesystem()[0]
        local = self.study_dir(name)
        for relative in relatives:
            source = local / relative
            if not source.is_file():
                continue
            with open(source, "rb") as reader, \
                    fs.open_output_stream(self.remote_path(name, relative)) as writer:
                shutil.copyfileobj(reader, writer, length=1 << 20)

    def delete(self, name: str, relative: str) -> None:
        """Remove a file or folder from the store (a no-op where there is none)."""
        if not self.remote:
            return
        import pyarrow.fs as pafs

        fs = self.filesystem()[0]
        target = self.remote_path(name, relative)
        kind = fs.get_file_info(target).type
        if kind == pafs.FileType.File:
            fs.delete_file(target)
        elif kind == pafs.FileType.Directory:
            fs.delete_dir(target)

    def holds(self, name: str, relative: str = "") -> bool:
        """Whether the store has anything at or under `relative` of the study."""
        return bool(self.remote and self._remote_files(name, relative))

    def check_writable(self, name: str) -> None:
        """Write and remove a probe object, so a missing bucket or credential fails now,
        in one line, not after the first trial."""
        if not self.remote:
            return
        probe = f".write-probe-{os.getpid()}"
        try:
            fs = self.filesystem()[0]
            with fs.open_output_stream(self.remote_path(name, probe)) as writer:
                writer.write(b"ok")
            fs.delete_file(self.remote_path(name, probe))
        except OSError as error:
            raise LrwaError(f"storage {self.location(name)} cannot be written "
                            f"({_first_line(error)[:200]})") from None

    def move_aside(self, name: str) -> str:
        """Copy the study's objects to `<name>.old-<time>`, then remove the originals (an
        object store has no rename); returns where they went."""
        import pyarrow.fs as pafs

        fs = self.filesystem()[0]
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = f"{name}.old-{stamp}"
        pafs.copy_files(self.remote_path(name), self.remote_path(target),
                        source_filesystem=fs, destination_filesystem=fs)
        fs.delete_dir(self.remote_path(name))
        return self.location(target)

    def ray_storage(self, name: str) -> tuple[str, Any]:
        """(storage_path, storage_filesystem) for Ray Tune's RunConfig and Tuner.restore."""
        if not self.remote:
            return str(self.study_dir(name)), None
        return self.remote_path(name), self.filesystem()[0]


class TreePusher:
    """Pushes the files of a local folder that changed since the last push (size or mtime),
    so a trial's per-epoch upload is its checkpoint and metrics, not its whole folder."""

    def __init__(self, storage: StudyStorage, name: str) -> None:
        self.storage = storage
        self.name = name
        self.seen: dict[str, tuple[int, int]] = {}

    def push(self, *relatives: str) -> None:
        if not self.storage.remote:
            return
        root = self.storage.study_dir(self.name)
        changed = []
        for relative in relatives:
            target = root / relative
            files = [target] if target.is_file() else sorted(
                path for path in target.rglob("*") if path.is_file()
                and not path.name.endswith(".tmp"))
            for path in files:
                stat = path.stat()
                key = path.relative_to(root).as_posix()
                if self.seen.get(key) != (stat.st_size, stat.st_mtime_ns):
                    changed.append(key)
                    self.seen[key] = (stat.st_size, stat.st_mtime_ns)
        self.storage.push(self.name, changed)
