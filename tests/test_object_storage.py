"""Studies in object storage, against a real S3-compatible server on loopback (moto's).

Ray Tune persists each trial's checkpoints and its own experiment state to the bucket;
lrwa writes the study's files there straight through pyarrow.fs; the only local file is
the driver's working copy of the Optuna journal. A "fresh head node" is a driver without
that copy: it must resume from the bucket alone. The credentials are moto's dummies.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pyarrow.fs as pafs
import pytest
from moto_s3 import BUCKET, client, moto_server, read_object, s3_uri, stored
from tiny_study import assert_one_truth, write_study_file

from lrwa.cli import main
from lrwa.errors import LrwaError
from lrwa.tune import load_study, lock
from lrwa.tune import storage as storage_module
from lrwa.tune.layout import (
    BEST_CONFIG,
    LOCK_FILE,
    OPTUNA_FILE,
    RAY_DIR,
    RAY_STATE_FILE,
    REPORT_DIR,
    STUDY_JSON,
    STUDY_YAML,
    TRIALS_FILE,
)
from lrwa.tune.lock import hold_study
from lrwa.tune.runner import run_study
from lrwa.tune.storage import open_store
from lrwa.tune.study import load_study_file
from lrwa.tune.trainable import FaultPlan

EPOCHS = 3
CLOSED_PORT = "127.0.0.1:9"  # discard: nothing listens there


@pytest.fixture(scope="module")
def endpoint():
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def ray_session(endpoint, ray_session):
    """conftest's session, started after the endpoint's environment is in place."""
    return ray_session


def _forget_local_journal(storage):
    """What a fresh head node has of the study: nothing but the bucket."""
    path = open_store(storage, "tiny").journal_file()
    path.unlink(missing_ok=True)
    assert not path.exists()


def test_study_resumes_from_s3_on_a_fresh_head_node_and_reports(ray_session, endpoint,
                                                                 teacher_file, tmp_path,
                                                                 capsys):
    storage = s3_uri(endpoint, "studies")
    location = s3_uri(endpoint, "studies/tiny")
    study_file = write_study_file(tmp_path, teacher_file, base={"epochs": EPOCHS},
                                  budget={"max_concurrent": 1})
    faults = FaultPlan(epoch=2, marker=str(tmp_path / "interrupt-once"), action="interrupt",
                       driver_pid=os.getpid())
    first = run_study(load_study_file(study_file), storage, faults=faults)
    assert not first.complete and first.statuses["completed"] < 2
    assert LOCK_FILE not in stored(endpoint, "studies/tiny")  # the lease went with the driver

    _forget_local_journal(storage)
    capsys.readouterr()
    assert main(["tune", str(study_file), "--storage", storage]) == 0
    printed = capsys.readouterr().out
    assert f"resuming study 'tiny': 2 trials, up to 1 at a time -> s3://{BUCKET}/studies/tiny" \
        in printed
    assert f"study s3://{BUCKET}/studies/tiny: 2 completed" in printed
    assert "endpoint_override" not in printed  # the query never reaches the output

    _forget_local_journal(storage)
    trials, _, _ = assert_one_truth(location, budget=2, epochs=EPOCHS)
    files = stored(endpoint, "studies/tiny")
    assert {STUDY_JSON, STUDY_YAML, TRIALS_FILE, OPTUNA_FILE, RAY_STATE_FILE,
            f"{RAY_DIR}/tuner.pkl"} <= files
    assert any(re.fullmatch(rf"{RAY_DIR}/experiment_state-.*\.json", path) for path in files)
    for trial_id in trials["trial_id"]:
        checkpoints = sorted({path.split("/")[2] for path in files
                              if path.startswith(f"{RAY_DIR}/{trial_id}/checkpoint_")})
        assert len(checkpoints) == 2  # the newest two are kept
        last = f"{RAY_DIR}/{trial_id}/{checkpoints[-1]}"
        assert {f"{last}/checkpoint.pt", f"{last}/student.pt"} <= files
        assert f"{RAY_DIR}/{trial_id}/{checkpoints[0]}/student.pt" not in files
    record = json.loads(read_object(endpoint, f"studies/tiny/{STUDY_JSON}"))
    assert record["location"] == f"s3://{BUCKET}/studies/tiny"

    # `lrwa report s3://...` reads the study back and writes its report into the bucket.
    bucket = client(endpoint)
    bucket.delete_dir(f"{BUCKET}/studies/tiny/{REPORT_DIR}")
    bucket.delete_file(f"{BUCKET}/studies/tiny/{BEST_CONFIG}")
    assert main(["report", location]) == 0
    printed = capsys.readouterr().out
    assert "best trials of 'tiny'" in printed and trials["trial_id"].iloc[0] in printed
    files = stored(endpoint, "studies/tiny")
    assert BEST_CONFIG in files
    assert f"{REPORT_DIR}/top_learning_curves.png" in files
    assert read_object(endpoint, f"studies/tiny/{REPORT_DIR}/top_learning_curves.png")[
        :8] == b"\x89PNG\r\n\x1a\n"


def _one_line_error(capsys, argv):
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("lrwa: error:") and len(error.splitlines()) == 1, error
    assert "endpoint_override" not in error
    return error


def _refused_at_once(monkeypatch):
    """pyarrow's default client retries a refused connection for 6 s on every request; one
    that gives up at once fails with the same error, so the test need not wait it out."""
    parse = storage_module._filesystem

    def filesystem(uri):
        if CLOSED_PORT not in uri:
            return parse(uri)
        once = pafs.AwsStandardS3RetryStrategy(max_attempts=1)
        return client(CLOSED_PORT, retry_strategy=once), parse(uri)[1]

    monkeypatch.setattr(storage_module, "_filesystem", filesystem)


def test_missing_bucket_empty_prefix_and_unreachable_endpoint_fail_in_one_line(
        endpoint, teacher_file, tmp_path, capsys, monkeypatch):
    study_file = write_study_file(tmp_path, teacher_file)
    no_bucket = s3_uri(endpoint, "x", bucket="no-such-bucket")
    with pytest.raises(LrwaError, match=r"cannot write s3://no-such-bucket/x/tiny/") as info:
        run_study(load_study_file(study_file), no_bucket)
    assert "\n" not in str(info.value)
    assert "no-such-bucket/x/tiny" in _one_line_error(
        capsys, ["tune", str(study_file), "--storage", no_bucket])
    assert "does not exist" in _one_line_error(capsys, ["report", s3_uri(endpoint,
                                                                         "nothing/here")])
    with pytest.raises(LrwaError, match="does not exist"):
        load_study(s3_uri(endpoint, "nothing/here"))
    _refused_at_once(monkeypatch)
    unreachable = s3_uri(CLOSED_PORT, "studies")
    assert "cannot write s3://lrwa-studies/studies/tiny" in _one_line_error(
        capsys, ["tune", str(study_file), "--storage", unreachable])
    assert "cannot reach s3://lrwa-studies/studies/tiny" in _one_line_error(
        capsys, ["report", s3_uri(CLOSED_PORT, "studies/tiny")])
    assert not stored(endpoint, "nothing")


HOLDER = textwrap.dedent("""
    import sys, time
    from lrwa.tune.lock import hold_study
    from lrwa.tune.storage import open_store
    with hold_study(open_store(sys.argv[1], "tiny")):
        print("held", flush=True)
        time.sleep(120)
""")


def _lease(endpoint, prefix):
    return json.loads(read_object(endpoint, f"{prefix}/tiny/{LOCK_FILE}"))


def test_the_s3_lease_refuses_a_second_driver_and_a_dead_ones_is_taken_over(
        endpoint, teacher_file, tmp_path, monkeypatch):
    monkeypatch.setattr(lock, "SETTLE_S", 0.2)
    storage = s3_uri(endpoint, "leased")
    study = load_study_file(write_study_file(tmp_path, teacher_file))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, storage], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LrwaError, match=rf"in use by lrwa tune \(host .*, pid {holder.pid}, "
                                            r"since ") as info:
            run_study(study, storage)
        assert "\n" not in str(info.value)
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding it: the lease stays behind
        holder.wait()
    dead = _lease(endpoint, "leased")
    assert dead["pid"] == holder.pid

    # A lease not renewed for LEASE_S belongs to a dead driver: the next one takes it over.
    monkeypatch.setattr(lock, "LEASE_S", 1.0)
    time.sleep(1.0 + max(0.0, dead["renewed"] + 1.0 - time.time()))
    store = open_store(storage, "tiny")
    with hold_study(store):
        mine = _lease(endpoint, "leased")
        assert (mine["pid"], mine["host"]) == (os.getpid(), dead["host"])
        assert mine["token"] != dead["token"]
    assert LOCK_FILE not in stored(endpoint, "leased/tiny")  # given back on the way out


@pytest.mark.parametrize("renewed", ["soon", None, 1e12])
def test_a_lease_that_cannot_be_right_blocks_nobody(endpoint, monkeypatch, renewed):
    """A lease whose renewal time is unreadable, or centuries ahead (a crafted or corrupt
    object), would otherwise hold the study for ever."""
    monkeypatch.setattr(lock, "SETTLE_S", 0.1)
    prefix = f"odd-lease-{renewed}"
    store = open_store(s3_uri(endpoint, prefix), "tiny")
    store.write_bytes(LOCK_FILE, json.dumps({"host": "elsewhere", "pid": 1, "since": "then",
                                             "token": "x", "renewed": renewed}).encode())
    with hold_study(store):
        assert _lease(endpoint, prefix)["pid"] == os.getpid()


def test_a_study_whose_prefix_is_gone_is_a_new_study_and_restart_starts_over(
        ray_session, endpoint, teacher_file, tmp_path):
    """F11, F12: the local journal is a cache of the bucket's, never its source. With the
    study's prefix deleted a rerun starts a new study (it used to report the cached trials
    as complete); so does --restart, whatever the cache holds."""
    storage = s3_uri(endpoint, "gone")
    study = load_study_file(write_study_file(tmp_path, teacher_file, base={"epochs": 1},
                                             budget={"trials": 1, "max_concurrent": 1}))
    bucket = client(endpoint)
    first = run_study(study, storage)
    assert first.complete and first.ran and first.statuses["completed"] == 1
    assert open_store(storage, "tiny").journal_file().is_file()  # the cache is there
    bucket.delete_dir(f"{BUCKET}/gone/tiny")
    lines = []
    again = run_study(study, storage, out=lines.append)
    assert again.ran and again.complete and not again.resumed, lines
    assert again.statuses["completed"] == 1
    assert any(line.startswith("starting study 'tiny'") for line in lines), lines
    assert OPTUNA_FILE in stored(endpoint, "gone/tiny")
    bucket.delete_dir(f"{BUCKET}/gone/tiny")
    lines = []
    restarted = run_study(study, storage, restart=True, out=lines.append)
    assert restarted.ran and restarted.statuses["completed"] == 1, lines
    assert_one_truth(s3_uri(endpoint, "gone/tiny"), budget=1, epochs=1)


def test_files_and_whole_studies_move_in_an_object_store(endpoint):
    """An object store has no rename: a move copies, then deletes (`--restart`, and the
    leftovers of a start that Ray never recorded)."""
    store = open_store(s3_uri(endpoint, "moves"), "tiny")
    store.write_bytes("ray/a.json", b"a")
    store.write_bytes("optuna.journal", b"j")
    store.move("ray", store.path("attempts/1/ray"))
    store.move("optuna.journal", store.path("attempts/1/optuna.journal"))
    assert stored(endpoint, "moves/tiny") == {"attempts/1/ray/a.json",
                                              "attempts/1/optuna.journal"}
    aside = store.move_aside()
    assert re.fullmatch(r"s3://.*/moves/tiny\.old-\d{8}-\d{6}", aside), aside
    assert not store.exists()
    assert read_object(endpoint, f"{aside.partition(f'{BUCKET}/')[2]}/attempts/1/ray/a.json") \
        == b"a"
