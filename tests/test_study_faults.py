"""SIGKILL at any instant: a study's driver dies where a kill splits what it records, the
same study is rerun, and curves/, trials.parquet and the Optuna journal agree trial for
trial with nothing lost or duplicated. Also two `lrwa tune` started at once on one study,
and a trial's own process killed mid-run.

Each driver is a separate process (a short script calling `run_study`, made to kill
itself at the instant by wrapping one lrwa function in that process only) joined to this
module's Ray with RAY_ADDRESS, so a killed driver's trials die with its job and leave
nothing running. The kill runs of all instants overlap, each on its own storage, then
their reruns: the kills fire on events, not on time, so sharing the 2 CPUs changes
nothing but the wall time. Each driver starts once the previous one has built its Tuner:
Ray Tune stages every driver's experiment state in a folder of the cluster named by
the second its Tuner starts and the experiment's name ("ray" for every study), so two
studies whose Tuners start within one second on one cluster would share it. A driver
then needs seconds of imports before its own Tuner starts.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
from tiny_study import assert_one_truth, read_journal, write_study_file

from lrwa.tune.layout import CURVES_DIR, RAY_DIR, TRIALS_FILE
from lrwa.tune.runner import run_study
from lrwa.tune.study import load_study_file
from lrwa.tune.trainable import FaultPlan

EPOCHS = 3
DRIVER_TIMEOUT_S = 300

# Runs one driver of the study; argv: study file, storage, instant, marker file. Each
# instant wraps the lrwa function at whose edge the driver kills itself.
DRIVER = textwrap.dedent("""
    import json, os, signal, sys

    from lrwa.tune import recorder, search
    from lrwa.tune.layout import TRIALS_FILE
    from lrwa.tune.runner import run_study
    from lrwa.tune.storage import StudyStore
    from lrwa.tune.study import load_study_file
    from lrwa.tune.trainable import FaultPlan

    study_file, storage, instant, marker = sys.argv[1:]
    study = load_study_file(study_file)


    def die():
        os.kill(os.getpid(), signal.SIGKILL)


    faults = None
    if instant == "epoch":
        # In the trial, at the end of epoch 2, before Tune hears of that epoch.
        faults = FaultPlan(epoch=2, marker=marker, action="kill", driver_pid=os.getpid())
    elif instant == "final-report":
        # The trial's last epoch has reached the driver; its end is not yet recorded.
        hear = recorder.StudyRecorder.on_trial_result

        def on_trial_result(self, iteration, trials, trial, result, **info):
            hear(self, iteration, trials, trial, result, **info)
            if result.get("epoch") == study.epochs:
                die()

        recorder.StudyRecorder.on_trial_result = on_trial_result
    elif instant == "journal-told":
        # The journal holds the trial's end; trials.parquet and Ray's state do not yet.
        tell = recorder.record_outcome

        def record_outcome(*args, **kwargs):
            tell(*args, **kwargs)
            die()

        recorder.record_outcome = record_outcome
    elif instant == "table-write":
        # Half of trials.parquet is in the temporary file the rename would have published.
        write = StudyStore.write_bytes

        def write_bytes(self, relative, data):
            if relative != TRIALS_FILE:
                return write(self, relative, data)
            with open(self.local_path(f".{TRIALS_FILE}.0dead0ff.tmp"), "wb") as half:
                half.write(data[: len(data) // 2])
            die()

        StudyStore.write_bytes = write_bytes
    elif instant == "second-end-told":
        # F1: the second trial's end is in the journal, Ray's searcher state is older.
        tell = recorder.record_outcome
        told = []

        def record_outcome(*args, **kwargs):
            tell(*args, **kwargs)
            told.append(1)
            if len(told) == 2:
                die()

        recorder.record_outcome = record_outcome
    elif instant == "trial-created":
        # The second trial is in the journal; Ray has not saved its state since.
        ask = search.StudySearch.suggest
        asked = []

        def suggest(self, trial_id):
            params = ask(self, trial_id)
            asked.append(trial_id)
            if len(asked) == 2:
                die()
            return params

        search.StudySearch.suggest = suggest
    outcome = run_study(study, storage, faults=faults)
    print("statuses " + json.dumps(outcome.statuses), flush=True)
""")

INSTANTS = ("epoch", "final-report", "journal-told", "table-write", "trial-created")


@dataclasses.dataclass
class Killed:
    study_dir: Path      # the study after the rerun
    after_kill: Path     # a copy of the study as the killed driver left it
    kill_rc: int
    kill_output: str
    rerun_rc: int = 0
    rerun_output: str = ""


@pytest.fixture(scope="module")
def ray_address(ray_session):
    return ray.get_runtime_context().gcs_address


class Driver:
    """A driver process joined to the module's Ray; its output is read as it comes."""

    def __init__(self, command, ray_address):
        environment = {**os.environ, "RAY_ADDRESS": ray_address, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.pid = self.process.pid
        self.lines = []
        self.tuning = threading.Event()  # its Tuner is built (or it has exited)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.process.stdout:
            self.lines.append(line)
            if line.startswith(("starting study", "resuming study")):
                self.tuning.set()
        self.tuning.set()

    def finish(self):
        """(exit status, output); a driver still running after DRIVER_TIMEOUT_S is killed."""
        try:
            self.process.wait(timeout=DRIVER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            self.lines.append(f"[killed by the test after {DRIVER_TIMEOUT_S} s]\n")
        self.reader.join()
        return self.process.returncode, "".join(self.lines)


def _one_after_another(commands, ray_address):
    """Start each driver once the previous one's Tuner is built (see the module docstring)."""
    drivers = {}
    for key, command in commands.items():
        drivers[key] = Driver(command, ray_address)
        drivers[key].tuning.wait(timeout=DRIVER_TIMEOUT_S)
    return drivers


def _driver(study_file, storage, instant, marker):
    return [sys.executable, "-c", DRIVER, str(study_file), str(storage), instant, str(marker)]


@pytest.fixture(scope="module")
def killed(ray_address, teacher_file, tmp_path_factory):
    """For each instant: a study whose driver was SIGKILLed there, then rerun once."""
    root = tmp_path_factory.mktemp("killed")
    study_file = write_study_file(root, teacher_file, base={"epochs": EPOCHS},
                                  budget={"max_concurrent": 1})
    runs = _one_after_another({instant: _driver(study_file, root / instant, instant,
                                                root / f"{instant}.fired")
                               for instant in INSTANTS}, ray_address)
    results = {}
    for instant, driver in runs.items():
        rc, output = driver.finish()
        study_dir = root / instant / "tiny"
        after_kill = root / "after-kill" / instant
        shutil.copytree(study_dir, after_kill)
        results[instant] = Killed(study_dir, after_kill, rc, output)
    reruns = _one_after_another({instant: _driver(study_file, root / instant, "none",
                                                  root / "unused")
                                 for instant in INSTANTS}, ray_address)
    for instant, driver in reruns.items():
        results[instant].rerun_rc, results[instant].rerun_output = driver.finish()
    return results


def _journal_states(study_dir):
    return {trial.user_attrs.get("trial_id"): trial.state.name
            for trial in read_journal(study_dir).trials}


def _journal_numbers(study_dir):
    return {trial.number for trial in read_journal(study_dir).trials}


def _curve_epochs(study_dir, trial_id):
    """The epochs of a trial's curve: its curve file once it has ended, else what Ray
    persisted of it (its results and checkpoints)."""
    from lrwa.tune.results import read_curve_rows
    from lrwa.tune.storage import open_study_location
    from lrwa.tune.views import ray_rows

    store = open_study_location(study_dir)
    rows = read_curve_rows(store, trial_id) or ray_rows(store, trial_id)
    return [row["epoch"] for row in rows]


def _temporaries(study_dir):
    found = [*study_dir.iterdir(), *(study_dir / CURVES_DIR).rglob("*")] \
        if study_dir.is_dir() else []
    return [path.name for path in found if path.name.endswith(".tmp")]


def _check_kill_instant(instant, after):
    """What the killed driver left shows it died at `instant`."""
    states = _journal_states(after)
    if instant == "epoch":
        (trial_id,) = states
        assert states[trial_id] == "RUNNING"
        # Ray holds epoch 1 at least (the trial may persist epoch 2 before its job dies with
        # the driver); the driver's curve file comes only at the trial's end.
        assert _curve_epochs(after, trial_id)[:1] == [1]
        assert not (after / CURVES_DIR / f"{trial_id}.parquet").exists()
    elif instant == "final-report":
        (trial_id,) = states
        assert states[trial_id] == "RUNNING"
        assert _curve_epochs(after, trial_id) == list(range(1, EPOCHS + 1))
    elif instant in ("journal-told", "table-write"):
        assert list(states.values()) == ["COMPLETE"]
        assert not (after / TRIALS_FILE).exists()
        half = [name for name in _temporaries(after) if name.startswith(f".{TRIALS_FILE}")]
        assert len(half) == (instant == "table-write")
    elif instant == "trial-created":
        assert sorted(states.values()) == ["COMPLETE", "RUNNING"]


@pytest.mark.parametrize("instant", INSTANTS)
def test_a_driver_killed_at_any_instant_resumes_to_one_truth(killed, instant):
    run = killed[instant]
    assert run.kill_rc == -signal.SIGKILL, run.kill_output
    _check_kill_instant(instant, run.after_kill)
    started = _journal_numbers(run.after_kill)

    assert run.rerun_rc == 0, run.rerun_output
    assert "Traceback" not in run.rerun_output, run.rerun_output
    trials, _, _ = assert_one_truth(run.study_dir, budget=2, epochs=EPOCHS)
    # Nothing lost: each trial the killed driver had asked Optuna for is a trial of the end.
    assert started <= set(trials["number"])
    assert _temporaries(run.study_dir) == []
    last = run.rerun_output.strip().splitlines()[-1]
    assert last.startswith("statuses ") and json.loads(last.split(" ", 1)[1])["completed"] == 2


def test_two_tune_commands_at_once_one_runs_the_other_names_it(ray_address, teacher_file,
                                                               tmp_path):
    study_file = write_study_file(tmp_path, teacher_file, base={"epochs": EPOCHS},
                                  budget={"max_concurrent": 1})
    command = [sys.executable, "-m", "lrwa", "tune", str(study_file), "--storage",
               str(tmp_path / "results")]
    first, second = Driver(command, ray_address), Driver(command, ray_address)
    outcomes = {first.pid: first.finish(), second.pid: second.finish()}
    codes = sorted(rc for rc, _ in outcomes.values())
    assert codes == [0, 2], outcomes
    (winner,) = [pid for pid, (rc, _) in outcomes.items() if rc == 0]
    (loser_output,) = [output for rc, output in outcomes.values() if rc == 2]
    lines = loser_output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lrwa: error: "), loser_output
    assert f"is in use by lrwa tune of study 'tiny' (host {os.uname().nodename}, pid " \
           f"{winner}, since " in lines[0]
    assert_one_truth(tmp_path / "results" / "tiny", budget=2, epochs=EPOCHS)


def test_a_killed_trial_process_is_retried_from_its_last_checkpoint(ray_session, teacher_file,
                                                                    tmp_path):
    study = load_study_file(write_study_file(tmp_path, teacher_file, base={"epochs": EPOCHS},
                                             budget={"max_concurrent": 1}))
    faults = FaultPlan(epoch=2, marker=str(tmp_path / "killed-once"), action="kill-trial")
    outcome = run_study(study, tmp_path / "results", faults=faults)
    assert outcome.complete and outcome.statuses["completed"] == 2
    trials, _, _ = assert_one_truth(outcome.store.local_path(), budget=2, epochs=EPOCHS)
    # The killed process, from the marker it wrote: not from result.json, whose lines
    # before the kill may be gone (Ray restarts a retried trial's result.json from the
    # storage's copy, which lags the driver's by up to one experiment sync).
    killed = int(Path(faults.marker).read_text())
    restarts = []
    for trial_id in trials["trial_id"]:
        results = [json.loads(line) for line in (outcome.store.local_path(
            f"{RAY_DIR}/{trial_id}") / "result.json").read_text().splitlines()]
        restarts += [(result["epoch"], result["pid"] != killed) for result in results
                     if result["iterations_since_restore"] == 1 and result["epoch"] > 1]
    # One trial died at the end of epoch 2 and a new process went on from epoch 1's
    # checkpoint: its first result after the restore is epoch 2.
    assert restarts == [(2, True)]


def test_a_kill_after_a_trial_ends_never_makes_two_trials_share_a_configuration(
        ray_address, teacher_file, tmp_path):
    """F1: three sampled trials one at a time, the driver SIGKILLed as soon as the second
    one's end is in the journal, then rerun. The third trial must not repeat the second's
    parameters (a searcher restored from Ray's older state once suggested them again)."""
    study_file = write_study_file(tmp_path, teacher_file, base={"epochs": 1},
                                  budget={"trials": 3, "max_concurrent": 1},
                                  points_to_evaluate=[],
                                  sampler={"type": "tpe", "n_startup_trials": 3})
    killed = Driver(_driver(study_file, tmp_path, "second-end-told", tmp_path / "x"),
                    ray_address)
    kill_rc, kill_output = killed.finish()
    assert kill_rc == -signal.SIGKILL, kill_output
    assert sorted(_journal_states(tmp_path / "tiny").values()) == ["COMPLETE", "COMPLETE"]
    rerun_rc, rerun_output = Driver(_driver(study_file, tmp_path, "none", tmp_path / "x"),
                                    ray_address).finish()
    assert rerun_rc == 0 and "Traceback" not in rerun_output, rerun_output
    assert_one_truth(tmp_path / "tiny", budget=3, epochs=1)
    configurations = [tuple(sorted(trial.params.items()))
                      for trial in read_journal(tmp_path / "tiny").trials]
    assert len(configurations) == 3 and len(set(configurations)) == 3, configurations


def test_fault_plans_refuse_what_would_signal_a_process_group():
    with pytest.raises(ValueError, match="needs the driver's pid"):
        FaultPlan(epoch=1, action="kill")
    with pytest.raises(ValueError, match="needs the driver's pid"):
        FaultPlan(epoch=1, action="interrupt", driver_pid=-1)
    with pytest.raises(ValueError, match="is not one of"):
        FaultPlan(epoch=1, action="explode")


def test_a_damaged_trial_table_is_rebuilt_not_fatal(tmp_path):
    """trials.parquet is a view the driver rebuilds: bytes damaged in any way (here 1000
    seeded corruptions, some of which raised UnicodeDecodeError or KeyError in the driver)
    read as no table at all, or as the table written when the damage missed what is read;
    never as rows with a damaged name or value, which the driver would keep (a finished
    trial's row is not rewritten)."""
    import random

    import pyarrow as pa

    from lrwa.tune.results import write_trials_table
    from lrwa.tune.storage import open_store
    from lrwa.tune.views import read_table_rows as load_trials_safely

    store = open_store(tmp_path, "tiny")
    write_trials_table(store, [], [{"trial_id": "a1", "status": "completed", "mean_acc": 0.5},
                                   {"trial_id": "b2", "status": "errored", "mean_acc": 0.25}])
    good = store.read_bytes(TRIALS_FILE)
    written = load_trials_safely(store)
    assert {trial_id: (row["status"], row["mean_acc"]) for trial_id, row in written.items()} \
        == {"a1": ("completed", 0.5), "b2": ("errored", 0.25)}
    pq.write_table(pa.table({"status": ["completed"]}), sink := io.BytesIO())
    store.write_bytes(TRIALS_FILE, sink.getvalue())
    assert load_trials_safely(store) == {}
    rng = random.Random(0)
    accepted = []
    for corruption in range(1000):
        damaged = bytearray(good)
        for _ in range(rng.randint(1, 8)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        store.local_path(TRIALS_FILE).write_bytes(bytes(damaged))
        loaded = load_trials_safely(store)
        if loaded not in ({}, written):
            accepted.append((corruption, _differences(loaded, written)))
    assert accepted == [], f"damaged tables read as rows (corruption, what differs): {accepted}"


def _differences(loaded, written):
    """'trial.column' for every cell that differs, a column missing on one side included."""
    return sorted(f"{trial_id}.{column}" for trial_id in loaded.keys() | written.keys()
                  for column in (loaded.get(trial_id, {}).keys()
                                 | written.get(trial_id, {}).keys())
                  if loaded.get(trial_id, {}).get(column, "<missing>")
                  != written.get(trial_id, {}).get(column, "<missing>"))
