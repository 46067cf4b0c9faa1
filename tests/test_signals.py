"""SIGTERM and SIGHUP, what preemption, `ray stop` and a closed SSH session send, stop
lrwa as Ctrl+C does: `lrwa tune` saves its trials, says so in one line and continues on
the rerun with every epoch once; `lrwa distill` keeps its last checkpoint for --resume.
Real signals, sent to real `lrwa` processes once they have printed an epoch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import pandas as pd
import pytest
import yaml
from tiny_study import read_journal, write_study_file, write_tiny_teacher

from lrwa.signals import stop_like_ctrl_c

RUN_LIMIT_S = 300
EPOCHS = 4


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    return write_tiny_teacher(tmp_path_factory.mktemp("teacher"))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_stop_signals_do_what_sigint_does_now(signum):
    """Python's SIGINT (KeyboardInterrupt) outside Tune; inside `Tuner.fit`, Tune's handler."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    stop_like_ctrl_c()
    try:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signum)
            signal.sigtimedwait([], 0.5)  # lets the handler run
        heard = []
        signal.signal(signal.SIGINT, lambda sig, frame: heard.append(sig))
        os.kill(os.getpid(), signum)
        signal.sigtimedwait([], 0.5)
        assert heard == [signal.SIGINT]
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _interrupted(arguments, signum, marker, env=None):
    """Run `lrwa ARGUMENTS`, send `signum` once a stdout line holds `marker`, and return
    (return code, stdout, stderr)."""
    process = subprocess.Popen([sys.executable, "-m", "lrwa", *arguments],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, **(env or {})})
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.append(process.stderr.read()), daemon=True)
    reader.start()
    stdout = []
    timer = threading.Timer(RUN_LIMIT_S, process.kill)
    timer.start()
    try:
        sent = False
        for line in process.stdout:
            stdout.append(line)
            if not sent and marker in line:
                process.send_signal(signum)
                sent = True
        process.wait()
    finally:
        timer.cancel()
    reader.join()
    assert sent, "".join(stdout) + "".join(stderr)
    return process.returncode, "".join(stdout), "".join(stderr)


# One real signal per command keeps the suite lean; the unit test above shows both signals
# take the same path.
@pytest.mark.parametrize("signum", [signal.SIGTERM])
def test_tune_stops_on_a_signal_and_the_rerun_continues(teacher_file, tmp_path, signum):
    study = write_study_file(tmp_path, teacher_file, base={"epochs": EPOCHS},
                             budget={"trials": 2, "max_concurrent": 1})
    storage = tmp_path / "studies"
    command = ["tune", str(study), "--storage", str(storage)]
    # RAY_ADDRESS unset: each command starts a Ray of its own, as on a fresh machine.
    env = {"RAY_ADDRESS": ""}
    code, stdout, stderr = _interrupted(command, signum, "epoch 1/", env)
    assert code == 0, stderr[-3000:]
    assert "interrupted with 0 of 2 trials ended: rerun the same command to continue" in stdout
    assert "Traceback" not in stderr and "SIGTERM received" not in stderr, stderr[-3000:]
    rerun = subprocess.run(check=False, args=[sys.executable, "-m", "lrwa", *command], capture_output=True,
                           text=True, timeout=RUN_LIMIT_S, env={**os.environ, **env})
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming study 'tiny'" in rerun.stdout
    assert_each_epoch_once(storage / "tiny", trials=2, epochs=EPOCHS)


def assert_each_epoch_once(location, trials, epochs):
    """Every trial completed, in the table and the journal, with each epoch once."""
    from lrwa.tune import load_study

    table, curves = load_study(str(location))
    assert sorted(table["status"]) == ["completed"] * trials
    assert {trial.user_attrs["trial_id"]: trial.state.name
            for trial in read_journal(location).trials} == dict.fromkeys(table["trial_id"],
                                                                          "COMPLETE")
    for trial_id in table["trial_id"]:
        assert curves[curves["trial_id"] == trial_id]["epoch"].tolist() == list(
            range(1, epochs + 1))


# The plain process, and a Ray Train run, whose own SIGINT handler aborts the run.
@pytest.mark.parametrize(("signum", "workers"), [(signal.SIGHUP, 1), (signal.SIGTERM, 2)])
def test_distill_keeps_its_last_checkpoint_on_a_signal(teacher_file, tmp_path, signum, workers):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"student": "lenet5-half", "epochs": 30,
                                      "iters_per_epoch": 2, "batch_size": 32,
                                      "generator_width": 8, "latent_dim": 16,
                                      "device": "cpu"}))
    out = tmp_path / "run"
    env = {"RAY_ADDRESS": ""}  # a Ray of the command's own where it needs one
    flags = ["--workers", str(workers)]
    code, _, stderr = _interrupted(["distill", "--teacher", str(teacher_file), "--config",
                                    str(config), "--out", str(out), *flags],
                                   signum, "epoch    2", env)
    assert code == 130, stderr[-3000:]
    assert stderr.strip().splitlines() == [
        "lrwa: interrupted; completed epochs are saved, rerun with --resume"]
    done = pd.read_parquet(out / "metrics.parquet")["epoch"].tolist()
    assert done[:2] == [1, 2] and done == list(range(1, len(done) + 1))
    resumed = subprocess.run(check=False, args=[sys.executable, "-m", "lrwa", "distill",
                                                "--out", str(out), "--resume", *flags,
                                                "--epochs", str(len(done) + 1)],
                             capture_output=True, text=True, timeout=RUN_LIMIT_S,
                             env={**os.environ, **env})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert pd.read_parquet(out / "metrics.parquet")["epoch"].tolist() == list(
        range(1, len(done) + 2))
