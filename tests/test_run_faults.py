"""A run folder under faults: concurrent runs, kills, moves, foreign state, full disks, memory.

Each test provokes the real fault where a test can: a second `lrwa` process, a SIGKILL, a
file-size limit (RLIMIT_FSIZE, so writes fail with EFBIG as on a full disk), an address
space limit (RLIMIT_AS, so allocations fail). The others run the CLI in-process. Every
run is tiny: a 1-epoch LeNet-5 teacher on the 8x8 `digits` set, a LeNet-5-half student,
two epochs of two iterations.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from lrwa import run as run_module
from lrwa.atomic import write_text
from lrwa.cli import main
from lrwa.config import build_config
from lrwa.distiller import Distiller
from lrwa.errors import LrwaError
from lrwa.folder_lock import LOCK_FILE, hold_folder
from lrwa.models import build_model
from lrwa.run import CHECKPOINT_FILE, run_distillation
from lrwa.teacher import load_teacher, save_teacher, train_teacher

LRWA = Path(sys.executable).with_name("lrwa")
TINY = {"epochs": 2, "iters_per_epoch": 2, "student_steps": 2, "batch_size": 32,
        "generator_width": 8, "latent_dim": 16, "buffer_size": 64, "replay_ratio": 0.25,
        "insert_every": 1, "device": "cpu"}
RUN_FILES = {"config.yaml", "checkpoint.pt", "metrics.parquet", "summary.json",
             "learning_curve.png", "student.pt", LOCK_FILE}


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LRWA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    def no_default_teacher(progress: bool = True) -> None:
        raise AssertionError("this test would train the embedded mnist5k teacher")

    monkeypatch.setattr(run_module, "default_teacher", no_default_teacher)


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("teacher") / "digits-lenet5.pt"
    save_teacher(train_teacher("digits", "lenet5", epochs=1, progress=False), path)
    return path


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, teacher_file: Path,
                 tiny_config: Path) -> Path:
    """A complete two-epoch run written by the `lrwa` script under umask 022."""
    out = tmp_path_factory.mktemp("finished") / "run"
    completed = script("distill", "--teacher", teacher_file, "--config", tiny_config,
                       "--out", out, umask=0o022)
    assert completed.returncode == 0, completed.stderr
    return out


def script(*argv: object, umask: int = -1, prelude: str = "",
           timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """The `lrwa` command in a new process; `prelude` runs first in that process."""
    command = [str(LRWA), *map(str, argv)]
    if prelude:
        program = prelude + "\nimport sys\nfrom lrwa.cli import main\nsys.exit(main(sys.argv[1:]))"
        command = [sys.executable, "-c", program, *map(str, argv)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False,
                          umask=umask)


def one_line_error(completed: subprocess.CompletedProcess[str], *phrases: str) -> str:
    assert completed.returncode == 2, (completed.returncode, completed.stderr)
    lines = completed.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lrwa: error: "), completed.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


def run_cli(argv: Sequence[object], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main([str(arg) for arg in argv])
    return code, capsys.readouterr().err


def in_process_error(argv: Sequence[object], capsys: pytest.CaptureFixture[str],
                     *phrases: str) -> str:
    code, err = run_cli(argv, capsys)
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lrwa: error: "), err
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


def epochs_in(out: Path) -> list[int]:
    return pd.read_parquet(out / "metrics.parquet")["epoch"].tolist()


def temporaries(out: Path) -> list[str]:
    return sorted(path.name for path in out.iterdir() if path.name.endswith(".tmp"))


# ---------------------------------------------------------------- one writer, early deaths

# The first checkpoint write leaves part of its temporary on disk and then waits to be
# killed: a run that dies mid-write, before any checkpoint exists.
STALL_IN_FIRST_CHECKPOINT = textwrap.dedent("""
    import time
    import torch

    def stalled_save(payload, stream, *args, **kwargs):
        stream.write(b"the first part of a checkpoint")
        stream.flush()
        print("STALLED", flush=True)
        time.sleep(600)

    torch.save = stalled_save
""")


@pytest.mark.slow  # a whole run or more
def test_a_held_folder_refuses_a_second_run_and_a_killed_holder_leaves_it_startable(
        tmp_path: Path, teacher_file: Path, tiny_config: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    program = (STALL_IN_FIRST_CHECKPOINT
               + "\nimport sys\nfrom lrwa.cli import main\nsys.exit(main(sys.argv[1:]))")
    first = subprocess.Popen([sys.executable, "-c", program, "distill", "--teacher",
                              str(teacher_file), "--config", str(tiny_config), "--out", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "STALLED", first.stderr.read()
        holder = f"is in use by lrwa distill (host {socket.gethostname()}, pid {first.pid}, since "
        # A second process, and this one, are refused at once, for a new run or a resume.
        one_line_error(script("distill", "--teacher", teacher_file, "--config", tiny_config,
                              "--out", out), f"{out} {holder}")
        in_process_error(["distill", "--out", out, "--resume"], capsys, f"{out} {holder}")
        # Probing did not erase the holder's record.
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == first.pid
    finally:
        first.kill()  # SIGKILL: no cleanup runs, the kernel drops the lock
        first.wait()
    assert sorted(path.name for path in out.iterdir() if not path.name.endswith(".tmp")) == [
        LOCK_FILE, "config.yaml"]
    assert len(temporaries(out)) == 1  # the killed checkpoint write

    fresh, resumed = tmp_path / "fresh", tmp_path / "resumed"
    shutil.copytree(out, fresh)
    shutil.copytree(out, resumed)
    saved_config = (out / "config.yaml").read_bytes()

    # Started afresh, as if the folder were empty; the stale temporary is removed.
    code, err = run_cli(["distill", "--teacher", teacher_file, "--config", tiny_config,
                         "--out", fresh], capsys)
    assert code == 0, err
    assert epochs_in(fresh) == [1, 2] and temporaries(fresh) == []
    # Resumed: from epoch 0 with the saved config, which stays as it was.
    code, err = run_cli(["distill", "--out", resumed, "--resume"], capsys)
    assert code == 0, err
    assert epochs_in(resumed) == [1, 2] and temporaries(resumed) == []
    assert (resumed / "config.yaml").read_bytes() == saved_config
    # The killed holder's own folder is free too: its lock died with it.
    code, err = run_cli(["distill", "--out", out, "--resume"], capsys)
    assert code == 0, err
    assert set(RUN_FILES) <= {path.name for path in out.iterdir()}


def test_hold_folder_in_one_process(tmp_path: Path) -> None:
    with hold_folder(tmp_path, "the study 'dc'"):
        record = json.loads((tmp_path / LOCK_FILE).read_text())
        assert record["pid"] == os.getpid() and record["purpose"] == "the study 'dc'"
        refused = pytest.raises(LrwaError, match=rf"^{tmp_path} is in use by the study 'dc' "
                                                 rf"\(host .+, pid {os.getpid()}, since .+\)$")
        with refused, hold_folder(tmp_path, "lrwa distill"):
            pass
        # The refused second holder must not have dropped the first one's lock.
        probe = subprocess.run([sys.executable, "-c", textwrap.dedent(f"""
            from lrwa.folder_lock import hold_folder
            from lrwa.errors import LrwaError
            try:
                with hold_folder({str(tmp_path)!r}, "a probe"):
                    print("HELD")
            except LrwaError as error:
                print(error)
            """)], capture_output=True, text=True, timeout=60, check=False)
        assert f"is in use by the study 'dc' (host {socket.gethostname()}" in probe.stdout
    with hold_folder(tmp_path, "lrwa distill"):  # released at the end of the block
        pass


def test_a_run_folder_is_never_overwritten_by_a_new_run(capsys: pytest.CaptureFixture[str],
                                                        finished_run: Path, teacher_file: Path,
                                                        tiny_config: Path) -> None:
    before = {path.name: path.read_bytes() for path in finished_run.iterdir() if path.is_file()}
    in_process_error(["distill", "--teacher", teacher_file, "--config", tiny_config,
                      "--out", finished_run], capsys, "already holds files", "--resume")
    after = {path.name: path.read_bytes() for path in finished_run.iterdir() if path.is_file()}
    assert after == before


def test_a_resume_cannot_end_a_run_before_the_epochs_it_has_run(
        tmp_path: Path, finished_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    summary = (out / "summary.json").read_bytes()
    in_process_error(["distill", "--out", out, "--resume", "--epochs", "1"], capsys,
                     "has already run 2 epochs; epochs must be at least 2, not 1")
    assert (out / "summary.json").read_bytes() == summary


# ---------------------------------------------------------------- moving


def test_a_run_resumes_from_any_working_directory(tmp_path: Path, teacher_file: Path,
                                                  tiny_config: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    shutil.copy(teacher_file, first / "teacher.pt")
    monkeypatch.chdir(first)
    code, err = run_cli(["distill", "--teacher", "teacher.pt", "--config", tiny_config,
                         "--out", "run"], capsys)
    assert code == 0, err
    saved = yaml.safe_load((first / "run" / "config.yaml").read_text())
    assert saved["teacher"] == str((first / "teacher.pt").resolve())

    # From elsewhere, naming the same teacher by a relative path and through a symlink.
    monkeypatch.chdir(second)
    (second / "link.pt").symlink_to(first / "teacher.pt")
    for teacher in ("../first/teacher.pt", "link.pt"):
        code, err = run_cli(["distill", "--out", "../first/run", "--resume", "--epochs", "3",
                             "--teacher", teacher], capsys)
        assert code == 0, err
    assert epochs_in(first / "run") == [1, 2, 3]
    # Another file is another setting.
    shutil.copy(teacher_file, second / "other.pt")
    in_process_error(["distill", "--out", "../first/run", "--resume", "--teacher", "other.pt"],
                     capsys, "--resume:", "was run with teacher=", "other.pt")
    # The run folder itself moved: its config still finds the teacher.
    shutil.move(first / "run", second / "moved")
    code, err = run_cli(["distill", "--out", "moved", "--resume", "--epochs", "4"], capsys)
    assert code == 0, err
    assert epochs_in(second / "moved") == [1, 2, 3, 4]


# ---------------------------------------------------------------- foreign state


def test_a_checkpoint_of_another_run_is_refused_in_one_line(
        tmp_path: Path, finished_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    payload = torch.load(out / CHECKPOINT_FILE, weights_only=True)
    metrics = (out / "metrics.parquet").read_bytes()

    # Another run's config: another student architecture.
    other_config = {**payload, "config": {**payload["config"], "student": "lenet5"}}
    torch.save(other_config, out / CHECKPOINT_FILE)
    in_process_error(["distill", "--out", out, "--resume", "--epochs", "3"], capsys,
                     f"{out / CHECKPOINT_FILE} is not this run's checkpoint (it has "
                     "student='lenet5', config.yaml has 'lenet5-half')")

    # The right config, another model's weights: what load_state_dict would choke on.
    other_student = build_model("lenet5", 1, 8, 10).state_dict()
    other_weights = {**payload, "distiller": {**payload["distiller"], "student": other_student}}
    torch.save(other_weights, out / CHECKPOINT_FILE)
    line = in_process_error(["distill", "--out", out, "--resume", "--epochs", "3"], capsys,
                            "is not this run's checkpoint (Error(s) in loading state_dict",
                            "written by another run or is damaged")
    assert len(line) < 400
    assert (out / "metrics.parquet").read_bytes() == metrics


def test_a_run_config_with_a_repeated_key_is_refused(tmp_path: Path, finished_run: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    with open(out / "config.yaml", "a") as config:
        config.write("epochs: 50\n")
    in_process_error(["distill", "--out", out, "--resume"], capsys,
                     f"run config {out / 'config.yaml'} is refused at line",
                     "it repeats the key 'epochs'")


# ---------------------------------------------------------------- disk full, umask


@pytest.mark.slow  # a whole run or more
def test_a_full_disk_loses_nothing_and_metrics_never_lead_the_checkpoint(
        tmp_path: Path, finished_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    before = {name: (out / name).read_bytes()
              for name in ("checkpoint.pt", "metrics.parquet", "summary.json", "student.pt")}
    # Epoch 3's checkpoint is a little larger than epoch 2's: one byte less cannot be written.
    limit = len(before["checkpoint.pt"]) - 1
    prelude = textwrap.dedent(f"""
        import resource, signal
        import lrwa.run, lrwa.cli  # imported before the limit, as they are at any start
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
    """)
    completed = script("distill", "--out", out, "--resume", "--epochs", "3", prelude=prelude)
    one_line_error(completed, f"cannot write {out / CHECKPOINT_FILE}: File too large",
                   "any earlier version is kept")
    for name, content in before.items():
        assert (out / name).read_bytes() == content, name
    assert temporaries(out) == []
    assert epochs_in(out) == [1, 2]  # the table did not get ahead of the checkpoint
    code, err = run_cli(["distill", "--out", out, "--resume", "--epochs", "3"], capsys)
    assert code == 0, err
    assert epochs_in(out) == [1, 2, 3]


def test_run_files_follow_the_umask(finished_run: Path, tmp_path: Path) -> None:
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in finished_run.iterdir()}
    assert set(RUN_FILES) <= set(modes)
    assert modes == dict.fromkeys(modes, 0o644)
    previous = os.umask(0o027)
    try:
        write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o640


# ---------------------------------------------------------------- sizes that cannot run


@pytest.mark.parametrize(("flags", "phrase"), [
    (["--student", "resnet18", "--batch-size", "1", "--buffer-size", "8"],
     "batch_size 1 is too small for resnet18 on digits"),
    (["--student", "resnet18", "--batch-size", "8", "--replay-ratio", "0.125"],
     "the replayed batch (replay_ratio x batch_size) 1 is too small for resnet18 on digits"),
])
def test_a_batch_with_one_value_per_batchnorm_channel_is_refused_before_the_run(
        tmp_path: Path, teacher_file: Path, tiny_config: Path,
        capsys: pytest.CaptureFixture[str], flags: list[str], phrase: str) -> None:
    out = tmp_path / "run"
    in_process_error(["distill", "--teacher", teacher_file, "--config", tiny_config,
                      "--out", out, *flags], capsys, phrase, "one value per channel")
    assert not (out / "config.yaml").exists()
    code, err = run_cli(["distill", "--teacher", teacher_file, "--config", tiny_config,
                         "--out", out], capsys)
    assert code == 0, err  # the folder was left startable


@pytest.mark.slow  # a whole run or more
def test_memory_that_cannot_be_had_is_one_line_and_the_folder_stays_startable(
        tmp_path: Path, teacher_file: Path, tiny_config: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    # 300 MB of address space beyond what the started process maps; the batch needs GBs.
    prelude = textwrap.dedent("""
        import resource
        import matplotlib.pyplot, lrwa.run, lrwa.cli
        from lrwa.data import load_split
        load_split("digits", "test")  # the libraries a run loads, loaded before the limit

        def mapped():
            with open("/proc/self/status") as status:
                return next(int(line.split()[1]) * 1024 for line in status
                            if line.startswith("VmSize"))

        limit = mapped() + 300 * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    """)
    completed = script("distill", "--teacher", teacher_file, "--config", tiny_config,
                       "--out", out, "--batch-size", "300000", "--buffer-size", "1000000",
                       prelude=prelude)
    one_line_error(completed, "out of memory at batch_size 300000",
                   "use a smaller batch_size; no epoch had completed, so nothing was saved")
    code, err = run_cli(["distill", "--teacher", teacher_file, "--config", tiny_config,
                         "--out", out], capsys)
    assert code == 0, err


# ---------------------------------------------------------------- non-finite loss


@pytest.mark.parametrize(("poisoned_epoch", "ending"), [
    (0, "; no epoch had completed, so nothing was saved"),
    (1, "; the last good checkpoint (epoch 1) is kept"),
])
def test_a_non_finite_loss_says_what_was_kept(tmp_path: Path, teacher_file: Path,
                                              tiny_config: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str],
                                              poisoned_epoch: int, ending: str) -> None:
    original = Distiller.student_step

    def poisoned(self: Distiller, probe_cosine: bool) -> object:
        if self.epoch == poisoned_epoch:
            with torch.no_grad():
                next(self.student.parameters()).fill_(math.nan)
        return original(self, probe_cosine)

    monkeypatch.setattr(Distiller, "student_step", poisoned)
    out = tmp_path / "run"
    line = in_process_error(["distill", "--teacher", teacher_file, "--config", tiny_config,
                             "--out", out], capsys, f"at epoch {poisoned_epoch + 1}")
    assert line.endswith(ending)
    assert (out / CHECKPOINT_FILE).is_file() == (poisoned_epoch > 0)


# ---------------------------------------------------------------- what on_epoch sees


def test_on_epoch_sees_every_file_of_the_last_epoch(tmp_path: Path, teacher_file: Path) -> None:
    teacher = load_teacher(teacher_file)
    config = build_config("digits", overrides={**TINY, "epochs": 3})
    out = tmp_path / "run"
    seen = []

    def on_epoch(row: dict) -> None:
        summary = json.loads((out / "summary.json").read_text())
        checkpoint = torch.load(out / CHECKPOINT_FILE, weights_only=True)
        seen.append({"epoch": row["epoch"], "checkpoint": checkpoint["distiller"]["epoch"],
                     "metrics": epochs_in(out)[-1], "complete": summary["complete"],
                     "student": (out / "student.pt").is_file(),
                     "plot": (out / "learning_curve.png").is_file()})

    run_distillation(config, out, teacher=teacher, on_epoch=on_epoch, progress=False)
    assert seen == [
        {"epoch": 1, "checkpoint": 1, "metrics": 1, "complete": False, "student": False,
         "plot": False},
        {"epoch": 2, "checkpoint": 2, "metrics": 2, "complete": False, "student": False,
         "plot": False},
        {"epoch": 3, "checkpoint": 3, "metrics": 3, "complete": True, "student": True,
         "plot": True},
    ]
    final = load_teacher(out / "student.pt")
    assert final.metadata["test_acc"] == pytest.approx(
        json.loads((out / "summary.json").read_text())["final_acc"])
