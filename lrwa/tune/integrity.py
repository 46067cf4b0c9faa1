"""The trust boundary around Ray's stored state: sign what this study's driver wrote, and
refuse to restore anything else.

Ray Tune restores a study by unpickling files under `STUDY/ray/` (tuner.pkl, the
experiment and searcher state), so whoever can write the study's storage could run
code on the driver when the study is resumed. lrwa cannot stop Ray from unpickling;
it can check, before `Tuner.restore`, that every top-level file under `ray/` is one
this study's driver wrote:

* Whenever Ray saves its experiment state, after the files are written to the
  driver's staging folder and before they are uploaded, `record_state` hashes them
  and writes `ray_state.json`: the SHA-256 of each file (this save's and the
  previous one's, since the upload runs in the background and a kill can land
  between the two) and an HMAC-SHA256 over the lot.
* The HMAC key is a random 32-byte key kept outside the storage, in
  `$LRWA_STATE_KEY_FILE` or `~/.config/lrwa/state.key` (created with mode 0600 on
  first use). Someone who can write the storage but not read that file cannot
  forge the record. A key file that is empty, shorter than 32 bytes, not hex, a
  directory or unreadable is refused in one line before a study writes anything
  (an empty key would let anyone sign).
* `verify_state` refuses, in one line, a missing or unsigned record, a record signed
  with another key, a file whose digest was never recorded, and a file the record
  does not know.

What this cannot check: a driver machine whose key was stolen, and Ray's trial
folders (params.pkl, checkpoints), which Ray does not unpickle on restore; lrwa loads
its own checkpoints with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any

from lrwa.errors import LrwaError, first_line
from lrwa.tune.internals import (
    STORAGE_MARKER_FILE,
    TEMPORARY_PREFIXES,
    TUNER_FILE,
    experiment_trials,
    newest_experiment_state,
)
from lrwa.tune.layout import RAY_DIR, RAY_STATE_FILE
from lrwa.tune.storage import StudyStore

KEY_ENV = "LRWA_STATE_KEY_FILE"
KEY_BYTES = 32  # the HMAC key: 32 random bytes, stored as 64 hex digits
RECORD_FORMAT = "lrwa-ray-state/1"


def key_file() -> Path:
    configured = os.environ.get(KEY_ENV)
    if configured:
        return Path(configured).expanduser()
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "lrwa" / "state.key"


def _bad_key(path: Path, problem: str) -> LrwaError:
    return LrwaError(f"state key {path} {problem}; a state key is {2 * KEY_BYTES} hex digits "
                     f"(python -c 'import secrets; print(secrets.token_hex({KEY_BYTES}))'), "
                     f"set by {KEY_ENV} or kept in ~/.config/lrwa/state.key")


def _read_key(path: Path) -> bytes | None:
    """The key the file holds (None when there is no file), refused in one line unless it
    is 64 or more hex digits: an empty or short key would let anyone who can write the
    storage sign Ray's state."""
    try:
        key = bytes.fromhex(path.read_bytes().decode("ascii").strip())
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise _bad_key(path, "is a directory") from None
    except OSError as error:
        raise _bad_key(path, f"cannot be read ({first_line(error)})") from None
    except ValueError:  # UnicodeDecodeError included
        raise _bad_key(path, "is not hex digits") from None
    if len(key) < KEY_BYTES:
        raise _bad_key(path, "is empty" if not key else
                       f"holds {len(key)} bytes, fewer than {KEY_BYTES}")
    return key


def signing_key(create: bool) -> bytes | None:
    """This machine's key (made on first use when `create`), or None when there is none.
    Checked before a study writes anything (`runner.run_study`)."""
    path = key_file()
    key = _read_key(path)
    if key is not None or not create:
        return key
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(handle, "w") as written:
            written.write(secrets.token_hex(KEY_BYTES) + "\n")
    except FileExistsError:
        pass  # another driver made it first; use theirs
    except OSError as error:
        raise _bad_key(path, f"cannot be created ({first_line(error)})") from None
    return _read_key(path)


def key_id(key: bytes) -> str:
    return hashlib.sha256(b"lrwa-key-id" + key).hexdigest()[:12]


def _mac(key: bytes, versions: list[dict[str, str]]) -> str:
    message = json.dumps(versions, sort_keys=True, separators=(",", ":")).encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _digest_files(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.iterdir())
            if path.is_file() and path.name != STORAGE_MARKER_FILE
            and not path.name.startswith(TEMPORARY_PREFIXES)}


def record_state(store: StudyStore, staging: Path | None = None) -> None:
    """Sign the state Ray is about to upload from `staging` (and the stored tuner.pkl,
    which Ray writes to the storage directly), keeping the previous version too."""
    key = signing_key(create=True)
    files = _digest_files(staging) if staging is not None else {}
    tuner = store.digest(f"{RAY_DIR}/{TUNER_FILE}")
    if tuner is not None:
        files[TUNER_FILE] = tuner
    record = store.read_record(RAY_STATE_FILE, RECORD_FORMAT)
    previous = record["versions"][-1:] if record and record.get("key") == key_id(key) else []
    if previous and previous[-1] == files:
        return
    versions = [*previous, files]
    store.write_bytes(RAY_STATE_FILE, json.dumps(
        {"format": RECORD_FORMAT, "key": key_id(key), "versions": versions,
         "mac": _mac(key, versions)}, indent=1).encode())


def verify_state(store: StudyStore) -> None:
    """Refuse (LrwaError) Ray state under `ray/` that this study's driver did not write."""
    where = store.location(RAY_DIR)
    record = store.read_record(RAY_STATE_FILE, RECORD_FORMAT)
    if record is None:
        raise LrwaError(f"{where} holds Ray state that lrwa never signed (no "
                        f"{RAY_STATE_FILE}); it cannot be trusted: pass --restart to move "
                        "the study aside and start over")
    key = signing_key(create=False)
    if key is None or record.get("key") != key_id(key):
        raise LrwaError(f"{where} was signed with another state key ({record.get('key')}) "
                        f"than this machine's ({key_file()}); copy the key of the machine "
                        f"that ran the study there, or set {KEY_ENV}")
    versions = record.get("versions")
    if not isinstance(versions, list) or not hmac.compare_digest(
            str(record.get("mac")), _mac(key, versions)):
        raise LrwaError(f"{store.location(RAY_STATE_FILE)} does not match its signature: "
                        "someone changed it; the study's Ray state cannot be trusted")
    allowed = {(name, digest) for files in versions for name, digest in files.items()}
    for relative in store.list_files(RAY_DIR, recursive=False):
        name = relative.rpartition("/")[2]
        if name == STORAGE_MARKER_FILE:
            continue
        if name not in {known for known, _ in allowed}:
            raise LrwaError(f"{store.location(relative)} was not written by this study's "
                            "driver; Ray would unpickle it on restore, so lrwa refuses")
        if (name, store.digest(relative)) not in allowed:
            raise LrwaError(f"{store.location(relative)} changed since this study's driver "
                            "wrote it; Ray would unpickle it on restore, so lrwa refuses")


def restored_trials(store: StudyStore) -> dict[str, tuple[str, dict[str, Any]]]:
    """{trial id: (status, last result)} of the trials in the experiment state Tune restores
    from (read as JSON, never unpickled); empty when Ray holds none."""
    newest = newest_experiment_state(store.list_files(RAY_DIR, recursive=False))
    data = store.read_bytes(f"{RAY_DIR}/{newest}") if newest else None
    return experiment_trials(data) if data else {}
