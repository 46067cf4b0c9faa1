"""The `lrwa` command line: each user mistake is exit 2 and one line on stderr, no traceback.

Most cases call `lrwa.cli.main` in-process; three run the installed `lrwa` script to prove
the exit status and the single stderr line end to end. Distillation tests use conftest's
`teacher_file`, a LeNet-5 trained for one epoch on the 8x8 `digits` set, with `--teacher`, so the
embedded mnist5k teacher is never trained; a guard fails any test that would train it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

import lrwa
from lrwa import run as run_module
from lrwa import teacher as teacher_module
from lrwa.cli import _explicit_overrides, build_parser, main
from lrwa.teacher import load_teacher

LRWA = Path(sys.executable).with_name("lrwa")
METRIC_COLUMNS = ("epoch", "test_acc", "loss_acq", "loss_ret", "loss_gen", "grad_cos",
                  "buffer_fill", "samples_per_s", "wall_s")
SUMMARY_KEYS = ("best_acc", "final_acc", "mean_acc", "var_acc", "max_drop", "teacher_acc",
                "config", "seed", "versions")
TINY_RUN = {"epochs": 2, "iters_per_epoch": 2, "student_steps": 2, "batch_size": 32,
            "generator_width": 8, "latent_dim": 16, "buffer_size": 64, "replay_ratio": 0.25,
            "insert_every": 1, "device": "cpu"}


class Ran:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err


def run_cli(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> Ran:
    """Run the CLI in-process; argparse's own refusals exit through SystemExit."""
    capsys.readouterr()
    try:
        code = main([str(arg) for arg in argv])
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return Ran(code, out, err)


def assert_user_error(ran: Ran, *phrases: str) -> str:
    """Exit 2, exactly one stderr line starting with `lrwa`, holding every phrase."""
    assert ran.code == 2, (ran.code, ran.err)
    lines = ran.err.splitlines()
    assert len(lines) == 1, ran.err
    assert lines[0].startswith("lrwa"), lines[0]
    assert "Traceback" not in ran.err and "Traceback" not in ran.out
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


@pytest.fixture(autouse=True)
def one_thread_and_private_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models on a shared machine: threads only add contention
    monkeypatch.setenv("LRWA_CACHE_DIR", str(tmp_path / "cache"))

    def no_default_teacher(progress: bool = True) -> None:
        raise AssertionError("this test would train the embedded mnist5k teacher")

    monkeypatch.setattr(run_module, "default_teacher", no_default_teacher)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def malicious_file(tmp_path: Path) -> tuple[Path, Path]:
    class OpensAFile:
        def __reduce__(self):
            return (open, (str(tmp_path / "pwned"), "w"))

    path = tmp_path / "malicious.pt"
    torch.save(OpensAFile(), path)
    return path, tmp_path / "pwned"


# ---------------------------------------------------------------- lrwa teacher train


@pytest.mark.parametrize(("flags", "phrases"), [
    (["--dataset", "imagenet", "--arch", "lenet5"],
     ["argument --dataset: invalid choice: 'imagenet'", "'mnist5k', 'digits'"]),
    (["--dataset", "digits", "--arch", "lenet7"],
     ["argument --arch: invalid choice: 'lenet7'", "'lenet5-half'"]),
    (["--dataset", "digits", "--arch", "lenet5", "--epochs", "0"],
     ["--epochs must be at least 1, got 0"]),
    (["--dataset", "digits", "--arch", "lenet5", "--epochs", "-3"],
     ["--epochs must be at least 1, got -3"]),
    (["--dataset", "digits", "--arch", "lenet5", "--epochs", "ten"],
     ["argument --epochs", "invalid int value: 'ten'"]),
    (["--dataset", "cifar10", "--arch", "resnet18"], ["dataset 'cifar10' needs --data-root"]),
    (["--arch", "lenet5"], ["--dataset"]),
])
def test_teacher_train_refuses_bad_input(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                         flags: list[str], phrases: list[str]) -> None:
    out = tmp_path / "teacher.pt"
    assert_user_error(run_cli(["teacher", "train", *flags, "--out", out], capsys), *phrases)
    assert not out.exists()


def test_teacher_train_data_root_without_the_dataset(capsys: pytest.CaptureFixture[str],
                                                     tmp_path: Path) -> None:
    empty_root = tmp_path / "data"
    empty_root.mkdir()
    ran = run_cli(["teacher", "train", "--dataset", "cifar10", "--arch", "resnet18",
                "--data-root", empty_root, "--out", tmp_path / "t.pt"], capsys)
    assert_user_error(ran, f"no cifar10 under {empty_root}", "--download")


def test_teacher_train_will_not_overwrite_without_force(capsys: pytest.CaptureFixture[str],
                                                        tmp_path: Path) -> None:
    out = tmp_path / "precious.pt"
    out.write_bytes(b"the only copy of something")
    ran = run_cli(["teacher", "train", "--dataset", "digits", "--arch", "lenet5", "--epochs", "1",
                "--out", out], capsys)
    assert_user_error(ran, f"{out} already exists; pass --force")
    assert out.read_bytes() == b"the only copy of something"

    ran = run_cli(["teacher", "train", "--dataset", "digits", "--arch", "lenet5", "--epochs", "1",
                "--device", "cpu", "--force", "--out", out], capsys)
    assert ran.code == 0, ran.err
    assert load_teacher(out).metadata["dataset"] == "digits"
    assert f"-> {out}" in ran.out


def unusable_outputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Places no command can write, each with the reason its one-line error must give."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "gone")
    return {
        "device": (Path("/dev/null"), "it is a device"),
        "under a file": (a_file / "run", f"{a_file} is a regular file, not a folder"),
        "symlink loop": (loop / "run", f"{loop} is a symbolic link loop"),
        "dangling symlink": (dangling, f"{dangling} is a symbolic link to nothing"),
        # sysfs refuses new entries even to root, as a read-only mount would.
        "unwritable": (Path("/sys/lrwa-test-run"), "/sys is not writable"),
    }


@pytest.mark.parametrize("case", ["device", "under a file", "symlink loop", "dangling symlink",
                                  "unwritable", "a folder"])
def test_teacher_train_refuses_an_unwritable_out_before_training(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        case: str) -> None:
    def never_train(*args: object, **kwargs: object) -> None:
        raise AssertionError("the teacher was trained although it could not be saved")

    monkeypatch.setattr(teacher_module, "train_teacher", never_train)
    places = {**unusable_outputs(tmp_path), "a folder": (tmp_path, "is a folder")}
    out, reason = places[case]
    ran = run_cli(["teacher", "train", "--dataset", "digits", "--arch", "lenet5",
                   "--out", out], capsys)
    assert_user_error(ran, str(out), reason)
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("flags", [["--seed", "-1"], ["--seed", str(2**32)], ["--seed", "x"]])
def test_teacher_train_refuses_a_seed_out_of_range(capsys: pytest.CaptureFixture[str],
                                                   tmp_path: Path, flags: list[str]) -> None:
    ran = run_cli(["teacher", "train", "--dataset", "digits", "--arch", "lenet5", *flags,
                   "--out", tmp_path / "t.pt"], capsys)
    assert_user_error(ran, "argument --seed")


# ---------------------------------------------------------------- lrwa teacher eval


def test_teacher_eval_prints_the_recorded_accuracy(capsys: pytest.CaptureFixture[str],
                                                   teacher_file: Path) -> None:
    ran = run_cli(["teacher", "eval", teacher_file], capsys)
    assert ran.code == 0 and ran.err == ""
    accuracy = load_teacher(teacher_file).metadata["test_acc"]
    assert f"lenet5 on digits, test accuracy {100 * accuracy:.2f}%" in ran.out


def test_teacher_eval_refuses_bad_files(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                        teacher_file: Path,
                                        malicious_file: tuple[Path, Path]) -> None:
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(teacher_file.read_bytes()[:1000])
    malicious, marker = malicious_file
    lines = [
        assert_user_error(run_cli(["teacher", "eval", tmp_path / "nope.pt"], capsys),
                          "does not exist"),
        assert_user_error(run_cli(["teacher", "eval", empty], capsys), "is empty"),
        assert_user_error(run_cli(["teacher", "eval", corrupt], capsys),
                          "not a readable PyTorch checkpoint"),
        assert_user_error(run_cli(["teacher", "eval", malicious], capsys),
                          "refused: unpickling it would call"),
    ]
    assert len(set(lines)) == 4
    assert not marker.exists()


def test_teacher_eval_of_a_plain_state_dict_needs_its_names(capsys: pytest.CaptureFixture[str],
                                                            tmp_path: Path,
                                                            teacher_file: Path) -> None:
    plain = tmp_path / "plain.pt"
    torch.save(load_teacher(teacher_file).model.state_dict(), plain)
    assert_user_error(run_cli(["teacher", "eval", plain], capsys), "plain state_dict", "--dataset")
    ran = run_cli(["teacher", "eval", plain, "--arch", "lenet5", "--dataset", "digits"], capsys)
    assert ran.code == 0, ran.err


# ---------------------------------------------------------------- lrwa distill: refusals


@pytest.mark.parametrize(("flags", "phrases"), [
    (["--alpha", "-0.5"], ["config key 'alpha' is -0.5", "[0, 100]"]),
    (["--mode", "meta", "--replay", "none"], ["mode 'meta' needs a replay scheme"]),
    (["--mode", "joint", "--replay", "none"], ["mode 'joint' needs a replay scheme"]),
    (["--buffer-size", "0"], ["config key 'buffer_size' is 0"]),
    (["--buffer-size", "10"], ["buffer_size 10 is smaller than one replayed batch (64"]),
    (["--replay-ratio", "0"], ["config key 'replay_ratio'", "(0, 4]"]),
    (["--replay-ratio", "5"], ["config key 'replay_ratio' is 5.0", "(0, 4]"]),
    (["--epochs", "0"], ["config key 'epochs' is 0"]),
    (["--epochs", "-2"], ["config key 'epochs' is -2"]),
    (["--mode", "maml"], ["argument --mode: invalid choice: 'maml'"]),
    (["--replay", "ring"], ["argument --replay: invalid choice: 'ring'"]),
    (["--student", "lenet9"], ["'student' is 'lenet9'", "lenet5-half"]),
    (["--dataset", "mnist5k"], ["records dataset 'digits', not 'mnist5k'"]),
    (["--teacher-arch", "resnet18"], ["records arch 'lenet5', not 'resnet18'"]),
])
def test_distill_refuses_bad_flags(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                   teacher_file: Path, flags: list[str],
                                   phrases: list[str]) -> None:
    out = tmp_path / "run"
    ran = run_cli(["distill", "--teacher", teacher_file, "--out", out, *flags], capsys)
    assert_user_error(ran, *phrases)
    assert not out.exists() or not any(out.iterdir())  # nothing half-written


@pytest.mark.parametrize("case", ["device", "under a file", "symlink loop", "dangling symlink",
                                  "unwritable", "a file"])
def test_distill_refuses_an_unusable_out_in_one_line(capsys: pytest.CaptureFixture[str],
                                                     tmp_path: Path, teacher_file: Path,
                                                     case: str) -> None:
    places = {**unusable_outputs(tmp_path), "a file": (tmp_path / "notes.txt", "a regular file")}
    out, reason = places[case]
    ran = run_cli(["distill", "--teacher", teacher_file, "--out", out], capsys)
    assert_user_error(ran, f"--out {out} cannot be used", reason)
    ran = run_cli(["distill", "--teacher", teacher_file, "--out", tmp_path / "run", "--workers",
                   "2", "--storage", out], capsys)
    assert_user_error(ran, f"--storage {out} cannot be used", reason)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("flags", "phrase"), [
    (["--gpus-per-worker", "nan"], ("argument --gpus-per-worker: must be a finite number of "
                                    "at least 0, got nan")),
    (["--gpus-per-worker", "inf"], "got inf"),
    (["--gpus-per-worker", "-1"], "got -1"),
    (["--gpus-per-worker", "lots"], "argument --gpus-per-worker: invalid float value: 'lots'"),
    (["--workers", "0"], "argument --workers: must be at least 1, got 0"),
    (["--workers", "-2"], "argument --workers: must be at least 1, got -2"),
    (["--workers", "2.5"], "argument --workers: invalid int value: '2.5'"),
])
def test_distill_refuses_numeric_flags_outside_the_config(capsys: pytest.CaptureFixture[str],
                                                          tmp_path: Path, flags: list[str],
                                                          phrase: str) -> None:
    assert_user_error(run_cli(["distill", "--out", tmp_path / "run", *flags], capsys), phrase)


def test_distill_reports_a_bad_config_value_that_a_flag_overrides(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, teacher_file: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("alpha: fast\nepochs: 2\n")
    for resume in ([], ["--resume"]):
        ran = run_cli(["distill", "--teacher", teacher_file, "--config", config, "--alpha", "0.5",
                       "--out", tmp_path / "run", *resume], capsys)
        assert_user_error(ran, "config key 'alpha' must be a float, got 'fast'")


def test_distill_refuses_duplicate_keys_in_a_config_file(capsys: pytest.CaptureFixture[str],
                                                         tmp_path: Path,
                                                         teacher_file: Path) -> None:
    config = tmp_path / "twice.yaml"
    config.write_text("epochs: 2\nbatch_size: 32\nepochs: 20\n")
    ran = run_cli(["distill", "--teacher", teacher_file, "--config", config,
                   "--out", tmp_path / "run"], capsys)
    assert_user_error(ran, f"config file {config} is refused at line 3: it repeats the key "
                           "'epochs' (first at line 1)")


def test_loss_form_flags_override_their_config_keys() -> None:
    parser = build_parser()
    typed = parser.parse_args(["distill", "--out", "r", "--replay-loss", "concatenated",
                               "--detach-inner"])
    assert _explicit_overrides(typed) == {"replay_loss": "concatenated", "detach_inner": True}
    untyped = parser.parse_args(["distill", "--out", "r"])
    assert _explicit_overrides(untyped) == {}  # the config file's values stand


def test_distill_refuses_detach_inner_outside_the_meta_step(capsys: pytest.CaptureFixture[str],
                                                            tmp_path: Path,
                                                            teacher_file: Path) -> None:
    ran = run_cli(["distill", "--teacher", teacher_file, "--mode", "joint", "--detach-inner",
                   "--out", tmp_path / "run"], capsys)
    assert_user_error(ran, "detach_inner changes only the meta step's theta'")
    ran = run_cli(["distill", "--teacher", teacher_file, "--first-order", "--detach-inner",
                   "--out", tmp_path / "run"], capsys)
    assert_user_error(ran, "first_order and detach_inner cannot be combined")


def test_distill_refuses_acquire_with_a_replay(capsys: pytest.CaptureFixture[str],
                                              tmp_path: Path, teacher_file: Path) -> None:
    # Acquire-only never reads the replay: accepting one would only cost time.
    for replay in ("memory", "generative"):
        ran = run_cli(["distill", "--teacher", teacher_file, "--mode", "acquire", "--replay",
                       replay, "--out", tmp_path / "run"], capsys)
        assert_user_error(ran, f"mode 'acquire' does not replay: replay '{replay}'",
                          "--replay none")
    assert not (tmp_path / "run").exists()


def test_help_names_choices_and_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    from lrwa import cli
    from lrwa.data import DATASETS
    from lrwa.models import model_names

    assert list(cli.DATASET_NAMES) == list(DATASETS) and list(cli.MODEL_NAMES) == model_names()
    ran = run_cli(["teacher", "train", "--help"], capsys)
    text = " ".join(ran.out.split())
    assert ran.code == 0
    assert "{mnist5k,digits,cifar10,cifar100,svhn}" in text and "{lenet5,lenet5-half," in text
    assert "default: the data set's recipe: mnist5k 12, digits 40" in text
    ran = run_cli(["distill", "--help"], capsys)
    text = " ".join(ran.out.split())
    # The small preset is what mnist5k users get without a flag: the help says it.
    assert "--epochs EPOCHS (default: 400; mnist5k and digits: 20)" in text
    assert "(default: 0.9; mnist5k and digits: 0.1)" in text
    assert "--iters-per-epoch ITERS_PER_EPOCH generator + student iterations per epoch " \
           "(default: 72; mnist5k and digits: 20)" in text


def test_distill_refuses_bad_teacher_files(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                           malicious_file: tuple[Path, Path]) -> None:
    malicious, marker = malicious_file
    ran = run_cli(["distill", "--teacher", malicious, "--out", tmp_path / "run"], capsys)
    assert_user_error(ran, "refused")
    assert not marker.exists()
    ran = run_cli(["distill", "--teacher", tmp_path / "nope.pt", "--out", tmp_path / "run"], capsys)
    assert_user_error(ran, "does not exist")


def test_distill_refuses_bad_config_files(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                          teacher_file: Path) -> None:
    base = ["distill", "--teacher", teacher_file, "--out", tmp_path / "run", "--config"]
    assert_user_error(run_cli([*base, tmp_path / "nope.yaml"], capsys), "does not exist")
    listed = tmp_path / "list.yaml"
    listed.write_text("- epochs\n- 3\n")
    assert_user_error(run_cli([*base, listed], capsys), "must hold a mapping")
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("epochs: 2\nlearning_rate: 0.1\n")
    assert_user_error(run_cli([*base, unknown], capsys), "unknown config key 'learning_rate'")


def test_distill_resume_without_a_run(capsys: pytest.CaptureFixture[str],
                                      tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    ran = run_cli(["distill", "--out", empty, "--resume"], capsys)
    assert_user_error(ran, f"--resume: {empty} holds no run to resume")
    ran = run_cli(["distill", "--out", tmp_path / "absent", "--resume"], capsys)
    assert_user_error(ran, "holds no run to resume")


def test_distill_will_not_write_into_a_used_folder(capsys: pytest.CaptureFixture[str],
                                                   tmp_path: Path, teacher_file: Path) -> None:
    out = tmp_path / "used"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    ran = run_cli(["distill", "--teacher", teacher_file, "--out", out], capsys)
    assert_user_error(ran, f"{out} already holds files", "--resume")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    assert (out / "notes.txt").read_text() == "my notes"


def test_distill_refuses_a_bad_config_before_training_the_default_teacher(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    ran = run_cli(["distill", "--mode", "meta", "--replay", "none", "--out", tmp_path / "r"],
                  capsys)
    assert_user_error(ran, "mode 'meta' needs a replay scheme")


def test_distill_refuses_a_used_folder_before_training_the_default_teacher(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("my notes")
    assert_user_error(run_cli(["distill", "--out", tmp_path], capsys), "already holds files")


def test_distill_dataset_without_teacher_is_not_silently_ignored(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # The embedded teacher is mnist5k; `--dataset digits` alone would be recorded but unused.
    ran = run_cli(["distill", "--dataset", "digits", "--out", tmp_path / "r"], capsys)
    assert_user_error(ran, "--dataset digits needs --teacher")


# ---------------------------------------------------------------- lrwa distill: a real run


@pytest.fixture(scope="module")
def tiny_run(teacher_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-epoch run, then the same run resumed to three epochs."""
    folder = tmp_path_factory.mktemp("distill")
    config = folder / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_RUN))
    out = folder / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["distill", "--teacher", str(teacher_file), "--config", str(config),
                     "--out", str(out)]) == 0
        shutil.copytree(out, folder / "after-two-epochs")
        assert main(["distill", "--out", str(out), "--resume", "--epochs", "3"]) == 0
    finally:
        torch.set_num_threads(threads)
    return folder


def test_distill_writes_every_result(tiny_run: Path, teacher_file: Path) -> None:
    out = tiny_run / "after-two-epochs"
    assert {"config.yaml", "checkpoint.pt", "metrics.parquet", "summary.json",
            "learning_curve.png", "student.pt"} <= {p.name for p in out.iterdir()}
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]

    config = yaml.safe_load((out / "config.yaml").read_text())
    assert {key: config[key] for key in TINY_RUN} == TINY_RUN
    assert config["teacher"] == str(teacher_file) and config["student"] == "lenet5-half"

    metrics = pd.read_parquet(out / "metrics.parquet")
    assert len(metrics) == 2
    assert set(METRIC_COLUMNS) <= set(metrics.columns)
    assert metrics["epoch"].tolist() == [1, 2]
    assert metrics["test_acc"].between(0.0, 1.0).all()
    assert metrics["buffer_fill"].between(0.0, 1.0).all()
    assert (metrics["samples_per_s"] > 0).all() and (metrics["wall_s"] > 0).all()

    summary = json.loads((out / "summary.json").read_text())
    assert set(SUMMARY_KEYS) <= set(summary)
    accuracies = metrics["test_acc"].tolist()
    assert summary["best_acc"] == pytest.approx(max(accuracies))
    assert summary["final_acc"] == pytest.approx(accuracies[-1])
    assert summary["mean_acc"] == pytest.approx(sum(accuracies) / 2)
    assert summary["max_drop"] == pytest.approx(max(0.0, accuracies[0] - accuracies[1]))
    # The teacher is measured on the same test split it was trained and evaluated against.
    assert summary["teacher_acc"] == pytest.approx(load_teacher(teacher_file).metadata["test_acc"])
    assert summary["config"] == config and summary["seed"] == 0
    assert summary["versions"]["lrwa"] == lrwa.__version__
    assert torch.__version__.startswith(summary["versions"]["torch"])

    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_distilled_student_is_read_by_teacher_eval(capsys: pytest.CaptureFixture[str],
                                                   tiny_run: Path) -> None:
    out = tiny_run / "after-two-epochs"
    final = json.loads((out / "summary.json").read_text())["final_acc"]
    ran = run_cli(["teacher", "eval", out / "student.pt"], capsys)
    assert ran.code == 0, ran.err
    assert f"lenet5-half on digits, test accuracy {100 * final:.2f}%" in ran.out


def test_resume_extends_the_run_without_repeating_epochs(tiny_run: Path) -> None:
    before = pd.read_parquet(tiny_run / "after-two-epochs" / "metrics.parquet")
    after = pd.read_parquet(tiny_run / "run" / "metrics.parquet")
    assert after["epoch"].tolist() == [1, 2, 3]
    pd.testing.assert_frame_equal(after.iloc[:2], before)  # the first two rows are kept as-is
    summary = json.loads((tiny_run / "run" / "summary.json").read_text())
    assert summary["epochs_run"] == 3 and summary["complete"] is True
    assert summary["final_acc"] == pytest.approx(after["test_acc"].iloc[-1])
    assert yaml.safe_load((tiny_run / "run" / "config.yaml").read_text())["epochs"] == 2


def test_resume_of_a_finished_run_says_so_without_training(
        capsys: pytest.CaptureFixture[str], tiny_run: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tiny_run / "run"
    before = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished run was set up for training again")

    monkeypatch.setattr(run_module, "Distiller", no_training)
    ran = run_cli(["distill", "--out", out, "--resume"], capsys)
    assert ran.code == 0, ran.err
    summary = json.loads((out / "summary.json").read_text())
    assert ran.out.startswith(f"{out} is already complete: all 3 epochs ran; nothing to "
                              "resume (pass --epochs N to extend it)\n")
    assert f"best {100 * summary['best_acc']:.2f}%" in ran.out
    after = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}
    assert {name: data for name, data in after.items() if name != ".lrwa.lock"} == {
        name: data for name, data in before.items() if name != ".lrwa.lock"}


def test_resume_with_a_different_setting_is_refused(capsys: pytest.CaptureFixture[str],
                                                    tiny_run: Path) -> None:
    out = tiny_run / "run"
    metrics_before = (out / "metrics.parquet").read_bytes()
    ran = run_cli(["distill", "--out", out, "--resume", "--alpha", "0.3"], capsys)
    assert_user_error(ran, "--resume:", "alpha=0.1", "not 0.3")
    assert (out / "metrics.parquet").read_bytes() == metrics_before


# ---------------------------------------------------------------- the installed script


def script(*argv: object) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(LRWA), *map(str, argv)], capture_output=True, text=True,
                          timeout=120, env=environment, check=False)


def assert_script_user_error(completed: subprocess.CompletedProcess[str], phrase: str) -> None:
    assert completed.returncode == 2, completed.stderr
    lines = completed.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("lrwa") and phrase in lines[0], lines
    assert "Traceback" not in completed.stderr + completed.stdout


def test_script_argparse_error_is_one_line() -> None:
    assert_script_user_error(script("distill", "--out", "x", "--mode", "maml"),
                             "invalid choice: 'maml'")


def test_script_refuses_a_malicious_teacher(malicious_file: tuple[Path, Path]) -> None:
    malicious, marker = malicious_file
    assert_script_user_error(script("teacher", "eval", malicious), "refused")
    assert not marker.exists()


def test_script_refuses_a_bad_config_value(tmp_path: Path, teacher_file: Path) -> None:
    assert_script_user_error(
        script("distill", "--teacher", teacher_file, "--out", tmp_path / "run",
               "--replay-ratio", "5"), "config key 'replay_ratio'")
    assert not (tmp_path / "run").exists()
