"""A study's records heal or are refused in one line (issue 21's cases F1, F3-F10, F13,
F14, F18): a bad state key stops a study before it writes anything; a torn journal line is
dropped and other journal damage refused; curves/ and trials.parquet are views that a
rerun, `lrwa report` and `load_study` rebuild; a trial that failed outside the engine (a
full disk) is run again by a rerun; a restored searcher never hands a trial Tune is
resuming to a second trial.

One tiny study is run once for the module; each damage case works on a copy of it whose
study.json names the copy's place, and needs no Ray, since a complete study is healed
without starting Tune.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from tiny_study import assert_one_truth, read_journal, write_study_file

from lrwa.errors import LrwaError
from lrwa.tune import load_study
from lrwa.tune.integrity import KEY_ENV
from lrwa.tune.layout import CURVES_DIR, OPTUNA_FILE, RAY_DIR, STUDY_JSON, TRIALS_FILE
from lrwa.tune.runner import run_study
from lrwa.tune.study import load_study_file
from lrwa.tune.trainable import FaultPlan

EPOCHS = 2


@pytest.fixture(scope="module")
def finished(ray_session, teacher_file, tmp_path_factory):
    """(study file, study folder) of a finished two-trial study."""
    root = tmp_path_factory.mktemp("finished")
    study_file = write_study_file(root, teacher_file, base={"epochs": EPOCHS})
    outcome = run_study(load_study_file(study_file), root / "results")
    assert outcome.complete and outcome.statuses["completed"] == 2
    return study_file, outcome.store.local_path()


def _copy(finished, tmp_path):
    """A copy of the finished study in tmp_path/results, its study.json pointing there."""
    study_file, source = finished
    target = tmp_path / "results" / "tiny"
    shutil.copytree(source, target)
    record = json.loads((target / STUDY_JSON).read_text())
    record["location"] = str(target)
    (target / STUDY_JSON).write_text(json.dumps(record))
    return study_file, target


def _rerun(study_file, study_dir):
    lines = []
    outcome = run_study(load_study_file(study_file), study_dir.parent, out=lines.append)
    return outcome, lines


def test_rays_own_experiment_state_reads_back_as_json(finished):
    """What `internals.experiment_trials` reads from a real experiment state of Ray (the
    names it relies on are checked one by one in test_internals.py)."""
    from lrwa.tune.integrity import restored_trials
    from lrwa.tune.storage import open_study_location

    trials = restored_trials(open_study_location(finished[1]))
    assert len(trials) == 2
    assert all(status == "TERMINATED" and last["epoch"] == EPOCHS
               for status, last in trials.values())


# -- the state key (F13, F14, F18) ------------------------------------------------------------

def _bad_keys(folder):
    """name -> a state key path that must be refused."""
    (folder / "empty").write_bytes(b"")
    (folder / "whitespace").write_bytes(b"  \n\t\n")
    (folder / "random").write_bytes(bytes(range(200, 248)))  # 48 bytes, not text
    (folder / "short").write_text("ab" * 16 + "\n")  # 16 bytes of hex
    (folder / "folder").mkdir()
    os.symlink(folder / "loop-b", folder / "loop-a")  # unreadable, even for root
    os.symlink(folder / "loop-a", folder / "loop-b")
    return {"empty": ("empty", "is empty"), "whitespace": ("whitespace", "is empty"),
            "random": ("random", "is not hex digits"),
            "short": ("short", "holds 16 bytes, fewer than 32"),
            "folder": ("folder", "is a directory"), "loop": ("loop-a", "cannot be read")}


@pytest.mark.parametrize("case", ["empty", "whitespace", "random", "short", "folder", "loop"])
def test_a_bad_state_key_is_refused_before_anything_is_written(teacher_file, tmp_path,
                                                               monkeypatch, case):
    name, message = _bad_keys(tmp_path)[case]
    monkeypatch.setenv(KEY_ENV, str(tmp_path / name))
    study = load_study_file(write_study_file(tmp_path, teacher_file))
    with pytest.raises(LrwaError, match=f"state key .*{name} {message}") as error:
        run_study(study, tmp_path / "results")
    assert "\n" not in str(error.value)
    assert not (tmp_path / "results").exists()


def test_an_empty_state_key_fails_the_command_in_one_line(teacher_file, tmp_path):
    (tmp_path / "empty.key").write_bytes(b"")
    study_file = write_study_file(tmp_path, teacher_file)
    done = subprocess.run([sys.executable, "-m", "lrwa", "tune", str(study_file), "--storage",
                           str(tmp_path / "results")], check=False, capture_output=True,
                          text=True,
                          env={**os.environ, KEY_ENV: str(tmp_path / "empty.key")},
                          timeout=300)
    assert done.returncode == 2, done.stderr
    expected = (f"lrwa: error: state key {tmp_path / 'empty.key'} is empty; a state key is 64 "
                "hex digits (python -c 'import secrets; print(secrets.token_hex(32))'), set "
                f"by {KEY_ENV} or kept in ~/.config/lrwa/state.key")
    assert done.stderr.strip().splitlines() == [expected]
    assert not (tmp_path / "results").exists()


# -- journal damage (F4-F7) -------------------------------------------------------------------

def test_a_torn_last_journal_line_is_dropped_and_the_study_stays_complete(finished, tmp_path):
    """F4: a crash mid-append leaves a line without its end; here the last record, which
    told the journal that the second trial completed."""
    study_file, study_dir = _copy(finished, tmp_path)
    journal = study_dir / OPTUNA_FILE
    journal.write_bytes(journal.read_bytes()[:-37])
    outcome, lines = _rerun(study_file, study_dir)
    assert outcome.complete and not outcome.ran, lines
    assert outcome.statuses["completed"] == 2
    assert sum("dropped a torn last record" in line for line in lines) == 1, lines
    assert journal.read_bytes().endswith(b"\n")
    assert_one_truth(study_dir, budget=2, epochs=EPOCHS)
    outcome, lines = _rerun(study_file, study_dir)  # healed for good: no notice again
    assert outcome.complete and not any("torn" in line for line in lines)


@pytest.mark.parametrize(("damage", "problem"), [
    ("cut", "it lacks 1 trials that Ray ran"),
    ("empty", "it lacks 2 trials that Ray ran"),
    ("garbage", "line [0-9]+ is not an Optuna journal record"),
])
def test_other_journal_damage_is_refused_in_one_line(finished, tmp_path, damage, problem):
    """F5 (cut short: here before the second trial was created), F6 (emptied), F7 (a
    garbage line appended): refused naming the file and what to do, never an
    AssertionError from Ray or Optuna. (A journal cut
    after every trial was created is healed instead: the ends it lost are recorded again
    from Ray's experiment state, as for a torn last line.)"""
    study_file, study_dir = _copy(finished, tmp_path)
    journal = study_dir / OPTUNA_FILE
    data = journal.read_bytes()
    lines = data.splitlines(keepends=True)
    created = [index for index, line in enumerate(lines) if json.loads(line)["op_code"] == 4]
    damaged = {"cut": b"".join(lines[:created[1]]),  # up to the second trial's creation
               "empty": b"",
               "garbage": data + b"garbage line\n"}[damage]
    journal.write_bytes(damaged)
    with pytest.raises(LrwaError) as error:
        _rerun(study_file, study_dir)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"{study_dir / OPTUNA_FILE} is damaged")
    assert "restore it from a copy, or pass --restart" in message
    import re

    assert re.search(problem, message), message
    assert journal.read_bytes() == damaged  # nothing was changed


# -- the views (F8-F10) -----------------------------------------------------------------------

def _curve_files(study_dir):
    return sorted((study_dir / CURVES_DIR).glob("*.parquet"))


@pytest.mark.parametrize("damage", ["garbage", "empty"])
def test_a_damaged_curve_is_rebuilt_by_a_rerun(finished, tmp_path, damage):
    """F8, F9: the rerun of a complete study rebuilds the curve from Ray's results."""
    study_file, study_dir = _copy(finished, tmp_path)
    damaged = _curve_files(study_dir)[0]
    damaged.write_bytes(b"not parquet at all" if damage == "garbage" else b"")
    outcome, lines = _rerun(study_file, study_dir)
    assert outcome.complete
    trial_id = damaged.stem
    expected = (f"rebuilt the curves of 1 trials ({trial_id}) from Ray's results and "
                f"{TRIALS_FILE} of {study_dir}")
    assert [line for line in lines if line.startswith("rebuilt")] == [expected]
    assert_one_truth(study_dir, budget=2, epochs=EPOCHS)


def test_report_and_load_study_rebuild_missing_curves(finished, tmp_path, capsys):
    """F10: curves/ removed; `load_study` and `lrwa report` rebuild it, with a notice."""
    from lrwa.tune.report import write_report

    _, study_dir = _copy(finished, tmp_path)
    _, curves = load_study(str(finished[1]))
    shutil.rmtree(study_dir / CURVES_DIR)
    _, healed = load_study(str(study_dir))
    assert "rebuilt the curves of 2 trials" in capsys.readouterr().err
    columns = ["trial_id", "epoch", "test_acc", "loss_acq", "alpha"]
    assert healed[columns].equals(curves[columns])
    assert len(healed) == 2 * EPOCHS
    shutil.rmtree(study_dir / CURVES_DIR)
    notes = []
    write_report(study_dir, plots=False, out=notes.append)
    assert any(line.startswith("rebuilt the curves of 2 trials") for line in notes), notes
    assert len(_curve_files(study_dir)) == 2


def test_curves_whose_data_is_gone_are_named_never_zero_rows_in_silence(finished, tmp_path,
                                                                       capsys):
    _, study_dir = _copy(finished, tmp_path)
    shutil.rmtree(study_dir / CURVES_DIR)
    for trial_folder in (study_dir / RAY_DIR).iterdir():
        if trial_folder.is_dir():
            shutil.rmtree(trial_folder)
    trials, curves = load_study(str(study_dir))
    assert len(trials) == 2 and curves.empty
    error = capsys.readouterr().err
    assert f"no curve for trials {', '.join(trials['trial_id'])}" in error or \
        f"no curve for trials {', '.join(reversed(list(trials['trial_id'])))}" in error, error


# -- transient faults (F3) and a restored searcher (F1) ----------------------------------------

def test_a_trial_failed_by_a_full_disk_is_run_again_by_the_rerun(ray_session, teacher_file,
                                                                 tmp_path, monkeypatch):
    """F3: an OSError (here ENOSPC, raised at every attempt of the first session) is not a
    verdict on the configuration: the trials stay unfinished, with the error noted, and
    the rerun resumes them from their last checkpoint, without Tune's missing-metric
    check ending the study."""
    study = load_study_file(write_study_file(tmp_path, teacher_file, base={"epochs": EPOCHS},
                                             budget={"trials": 1, "max_concurrent": 1}))
    # Ray's own retries from the last checkpoint would meet the same full disk; none here,
    # so the trial errors at once (each retry costs a new trial process).
    monkeypatch.setattr("lrwa.tune.runner.MAX_TRIAL_RESTARTS", 0)
    lines = []
    first = run_study(study, tmp_path / "results", out=lines.append,
                      faults=FaultPlan(epoch=EPOCHS, action="oserror"))
    assert not first.complete and first.statuses["unfinished"] == 1, lines
    assert sum("No space left on device" in line and "a rerun resumes it" in line
               for line in lines) == 1, lines
    journal = read_journal(first.store.local_path())
    assert {trial.state.name for trial in journal.trials} == {"RUNNING"}
    second = run_study(study, tmp_path / "results")
    assert second.complete and second.statuses["completed"] == 1
    assert_one_truth(second.store.local_path(), budget=1, epochs=EPOCHS)


def _signed_searcher(store):
    """The study's searcher as the driver builds it: a random sampler, seed 0, over alpha."""
    import optuna
    from ray.tune.search import ConcurrencyLimiter

    from lrwa.tune.journal import journal_storage
    from lrwa.tune.search import SignedSearchGenerator, StudySearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = {"alpha": optuna.distributions.FloatDistribution(0.1, 1.0, log=True)}
    searcher = StudySearch(space=space, metric="mean_acc", mode="max", study_name="tiny",
                           storage=journal_storage(store),
                           sampler=optuna.samplers.RandomSampler(seed=0))
    return SignedSearchGenerator(ConcurrencyLimiter(searcher, 4), store)


def _saved_after_one_trial(tmp_path):
    """A study's signed searcher that has given "trial-a" and saved its state then:
    (store, the running searcher, the staging folder, trial-a's parameters)."""
    from lrwa.tune.storage import open_store

    store = open_store(tmp_path / "results", "tiny")
    running = _signed_searcher(store)
    saved = tmp_path / "staging"
    saved.mkdir()
    first = running.searcher.suggest("trial-a")
    running.save_to_dir(str(saved), "s")  # the searcher's state knows trial-a only
    return store, running, saved, first


def test_a_restored_searcher_never_hands_on_a_trial_tune_restored(tmp_path):
    """F1: the searcher's saved state can be older than Tune's experiment state (the two
    files are uploaded one after the other, and a kill can fall between). A trial Tune
    restored and resumes must not be handed to a new trial as "lost": both would run the
    same configuration."""
    store, running, saved, first = _saved_after_one_trial(tmp_path)
    second = running.searcher.suggest("trial-b")
    # Tune's experiment state, saved later, holds both trials (JSON as Ray writes it).
    state = {"trial_data": [[json.dumps({"trial_id": trial_id, "status": "RUNNING"}),
                             json.dumps({"last_result": {}})]
                            for trial_id in ("trial-a", "trial-b")]}
    store.write_bytes(f"{RAY_DIR}/experiment_state-2026-01-01_00-00-00.json",
                      json.dumps(state).encode())

    restored = _signed_searcher(store)
    restored.restore_from_dir(str(saved))
    third = restored.searcher.suggest("trial-c")
    assert third != second and third != first
    journal = read_journal(store.local_path())
    assert [trial.user_attrs["trial_id"] for trial in journal.trials] == [
        "trial-a", "trial-b", "trial-c"]


def test_a_lost_trial_is_still_handed_on(tmp_path):
    """F1 as it was seen: Optuna gave a trial that no saved state of Tune holds (the driver
    died first); the restored searcher gives it to Tune's next trial, and the trial after
    that gets a configuration of its own (it drew the lost trial's numbers again)."""
    store, running, saved, _ = _saved_after_one_trial(tmp_path)
    lost = running.searcher.suggest("trial-b")
    restored = _signed_searcher(store)
    restored.restore_from_dir(str(saved))
    assert restored.searcher.suggest("trial-c") == lost
    # The next trial draws anew: the saved random state would repeat the lost trial's draw.
    assert restored.searcher.suggest("trial-d") != lost
    journal = read_journal(store.local_path())
    assert [trial.user_attrs["trial_id"] for trial in journal.trials] == [
        "trial-a", "trial-c", "trial-d"]


# -- object stores: the journal's cache and its traffic (F11, item 6) -------------------------

def test_an_object_stores_journal_is_sent_as_what_changed_and_the_cache_never_leads(
        tmp_path, monkeypatch):
    """The journal logic of object stores, on a folder that claims to be one (pyarrow does
    the rest the same way for both): each push sends only the records appended since the
    last, so a study's journal traffic is about twice its final size (the parts, then one
    whole write at the end of a session), not its size at every trial; and a study whose
    stored journal is gone starts with none, whatever the local cache holds."""
    import dataclasses

    import optuna

    from lrwa.tune import journal as journal_module
    from lrwa.tune.layout import JOURNAL_PARTS
    from lrwa.tune.storage import StudyStore, open_store

    @dataclasses.dataclass(frozen=True)
    class FolderAsObjectStore(StudyStore):
        @property
        def remote(self) -> bool:
            return True

    store = FolderAsObjectStore(open_store(tmp_path / "bucket", "tiny").storage, "tiny")
    sent = []
    write = StudyStore.write_bytes
    monkeypatch.setattr(StudyStore, "write_bytes",
                        lambda self, relative, data: (sent.append(len(data)),
                                                      write(self, relative, data))[1])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    journal_module.pull_journal(store)
    study = optuna.create_study(study_name="tiny",
                                storage=journal_module.journal_storage(store))
    for _ in range(40):  # a trial's start and end each push, as the recorder does
        trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        journal_module.push_journal(store)
        study.tell(trial, 0.5)
        journal_module.push_journal(store)
    cache = store.journal_file().read_bytes()
    assert journal_module.stored_journal(store) == cache
    assert len(store.list_files(JOURNAL_PARTS)) == 80
    journal_module.compact_journal(store)
    assert store.list_files(JOURNAL_PARTS) == []
    assert store.read_bytes(OPTUNA_FILE) == cache
    assert sum(sent) == 2 * len(cache)  # every record sent once, then the whole once

    journal_module.pull_journal(store)  # a rerun: the cache is what the store holds
    assert store.journal_file().read_bytes() == cache
    shutil.rmtree(tmp_path / "bucket" / "tiny")  # F11: the study's prefix is deleted
    journal_module.pull_journal(store)
    assert not store.journal_file().exists()
    assert journal_module.stored_journal(store) is None
