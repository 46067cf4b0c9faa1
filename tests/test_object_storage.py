"""Studies in object storage, against a real S3-compatible server on loopback (moto's).

The server speaks the S3 protocol over HTTP, so these tests exercise pyarrow's S3
client, Ray Tune's remote experiment storage and lrwa's mirrors exactly as they
run against AWS; only the endpoint differs. The credentials are moto's dummies.
"""

from __future__ import annotations

import logging
import os
import shutil

import pyarrow.fs as pafs
import pytest
from tiny_study import write_study_file, write_tiny_teacher

from lrwa.analysis import BEST_CONFIG, load_study, write_report
from lrwa.cli import main
from lrwa.errors import LrwaError
from lrwa.tune.curves import OPTUNA_FILE, STUDY_JSON, TRIALS_FILE
from lrwa.tune.runner import run_study
from lrwa.tune.storage import StudyStorage, TreePusher, split_study_uri
from lrwa.tune.study import load_study_file
from lrwa.tune.trainable import FaultPlan

BUCKET = "lrwa-studies"
DUMMY_ENVIRONMENT = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture(scope="module")
def endpoint():
    """host:port of a moto S3 server with one bucket; its environment outlives Ray's start,
    so the trial processes see the same (dummy) credentials."""
    from moto.server import ThreadedMotoServer

    saved = {key: os.environ.get(key) for key in DUMMY_ENVIRONMENT}
    os.environ.update(DUMMY_ENVIRONMENT)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    filesystem = pafs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http",
                                   allow_bucket_creation=True)
    filesystem.create_dir(BUCKET)
    yield f"{host}:{port}"
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def ray_session(endpoint, ray_session):
    """conftest's session, started after the endpoint's environment is in place."""
    return ray_session


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    return write_tiny_teacher(tmp_path_factory.mktemp("teacher"))


def _uri(endpoint, path):
    return f"s3://{BUCKET}/{path}?endpoint_override={endpoint}&scheme=http"


def _stored(endpoint, prefix):
    """Paths (relative to `prefix`) of every object under it, read with a separate client."""
    filesystem = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http")
    root = f"{BUCKET}/{prefix}"
    selector = pafs.FileSelector(root, recursive=True, allow_not_found=True)
    return {item.path[len(root) + 1:] for item in filesystem.get_file_info(selector)
            if item.type == pafs.FileType.File}


def _forget_local_copies(storage_uri):
    """What a fresh head node has of the study: nothing but the store."""
    shutil.rmtree(StudyStorage(storage_uri).local_root(), ignore_errors=True)


def test_study_runs_resumes_and_reports_through_s3(ray_session, endpoint, teacher_file,
                                                    tmp_path, capsys):
    storage = _uri(endpoint, "studies")
    study_file = write_study_file(tmp_path, teacher_file, base={"epochs": 3},
                                  budget={"max_concurrent": 1})
    study = load_study_file(study_file)
    faults = FaultPlan(epoch=2, marker=str(tmp_path / "interrupt-once"), action="interrupt",
                       driver_pid=os.getpid())
    first = run_study(study, storage, faults=faults)
    assert first.interrupted and first.statuses["completed"] < 2

    stored = _stored(endpoint, "studies/tiny")
    assert {STUDY_JSON, "study.yaml", TRIALS_FILE, OPTUNA_FILE} <= stored
    assert any(path.startswith("ray/") for path in stored)  # Tune's experiment state
    assert any(path.startswith("curves/trial_id=") for path in stored)
    assert any(path.startswith("runs/") and path.endswith("/checkpoint.pt") for path in stored)

    # A new head node: only the store knows the study, and it resumes from there.
    _forget_local_copies(storage)
    # Through the CLI, as a user would, which also writes the report back to the store.
    capsys.readouterr()
    assert main(["tune", str(study_file), "--storage", storage]) == 0
    printed = capsys.readouterr().out
    assert f"resuming study 'tiny': 2 trials, up to 1 at a time -> s3://{BUCKET}/studies/tiny" \
        in printed
    assert f"study s3://{BUCKET}/studies/tiny: 2 completed" in printed
    assert {BEST_CONFIG, "report/top_learning_curves.png"} <= _stored(endpoint, "studies/tiny")

    _forget_local_copies(storage)
    trials, curves = load_study(_uri(endpoint, "studies/tiny"))
    assert sorted(trials["status"]) == ["completed", "completed"]
    epochs = curves.groupby("trial_id")["epoch"].apply(list).to_dict()
    assert epochs == {trial_id: [1, 2, 3] for trial_id in trials["trial_id"]}
    assert not curves.duplicated(["trial_id", "epoch"]).any()
    stored = _stored(endpoint, "studies/tiny")
    for trial_id in trials["trial_id"]:
        assert {f"runs/{trial_id}/student.pt", f"runs/{trial_id}/summary.json"} <= stored

    # `lrwa report s3://...` reads the study back and writes its report to the store.
    filesystem = pafs.S3FileSystem(endpoint_override=endpoint, scheme="http")
    filesystem.delete_dir(f"{BUCKET}/studies/tiny/report")
    filesystem.delete_file(f"{BUCKET}/studies/tiny/{BEST_CONFIG}")
    assert main(["report", _uri(endpoint, "studies/tiny"), "--no-plots"]) == 0
    assert "best configuration" in capsys.readouterr().out
    assert BEST_CONFIG in _stored(endpoint, "studies/tiny")
    write_report(_uri(endpoint, "studies/tiny"), out=lambda line: None)
    assert "report/top_learning_curves.png" in _stored(endpoint, "studies/tiny")


def test_missing_bucket_and_empty_prefix_fail_in_one_line(endpoint, teacher_file, tmp_path,
                                                          capsys):
    study = load_study_file(write_study_file(tmp_path, teacher_file))
    no_bucket = f"s3://no-such-bucket/x?endpoint_override={endpoint}&scheme=http"
    with pytest.raises(LrwaError, match=r"storage s3://no-such-bucket/x/tiny cannot be written"):
        run_study(study, no_bucket)
    assert main(["report", _uri(endpoint, "nothing/here")]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("lrwa: error:") and "holds no study results" in error
    assert len(error.splitlines()) == 1


def test_pushes_only_what_changed_and_pulls_it_back(endpoint, tmp_path):
    storage = StudyStorage(_uri(endpoint, "unit"))
    local = storage.study_dir("demo")
    shutil.rmtree(local, ignore_errors=True)
    (local / "runs" / "t1").mkdir(parents=True)
    (local / "runs" / "t1" / "a.txt").write_text("first")
    (local / "runs" / "t1" / "b.txt").write_text("kept")
    pusher = TreePusher(storage, "demo")
    pusher.push("runs/t1")
    assert _stored(endpoint, "unit/demo") == {"runs/t1/a.txt", "runs/t1/b.txt"}

    # Only the changed file goes up again: change b behind the pusher's back on the store,
    # rewrite a locally, push; b's stored copy must be the store's, a's the new one.
    storage.filesystem()[0].delete_file(storage.remote_path("demo", "runs/t1/b.txt"))
    (local / "runs" / "t1" / "a.txt").write_text("second, longer")
    pusher.push("runs/t1")
    assert _stored(endpoint, "unit/demo") == {"runs/t1/a.txt"}

    shutil.rmtree(local)
    assert storage.pull("demo", skip=("ray",)) == 1
    assert (local / "runs" / "t1" / "a.txt").read_text() == "second, longer"
    parent, name = split_study_uri(_uri(endpoint, "unit/demo"))
    assert name == "demo" and parent.uri == _uri(endpoint, "unit")
