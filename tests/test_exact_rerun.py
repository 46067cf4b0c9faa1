"""A study's tuned best reruns exactly: `lrwa distill --config best_config.yaml` gives its
trial's curve epoch for epoch on the CPU, because the trial's execution settings (threads,
device) are part of the config it records."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import yaml
from tiny_study import write_study_file, write_tiny_teacher

from lrwa.cli import main
from lrwa.tune import load_study
from lrwa.tune.report import write_report
from lrwa.tune.runner import run_study
from lrwa.tune.study import load_study_file

CURVE_COLUMNS = ["epoch", "test_acc", "loss_acq", "loss_ret", "loss_gen", "buffer_fill"]


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory):
    return write_tiny_teacher(tmp_path_factory.mktemp("teacher"))


def test_best_config_reruns_its_trial_exactly(ray_session, teacher_file, tmp_path):
    study = load_study_file(write_study_file(tmp_path, teacher_file, base={"epochs": 3},
                                             scheduler="none"))
    run_study(study, tmp_path / "results")
    study_dir = tmp_path / "results" / "tiny"
    report = write_report(study_dir, plots=False, out=lambda line: None)
    best = yaml.safe_load((study_dir / "best_config.yaml").read_text())
    # The trial ran on its one CPU of the study's resources: the config says so.
    assert (best["torch_threads"], best["device"], best["deterministic"]) == (1, "cpu", False)

    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the rerun takes its threads from the config, not the caller
    try:
        assert main(["distill", "--config", str(study_dir / "best_config.yaml"),
                     "--out", str(tmp_path / "rerun")]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)

    _, curves = load_study(study_dir)
    trial = curves[curves["trial_id"] == report["best_trial"]][CURVE_COLUMNS]
    rerun = pd.read_parquet(tmp_path / "rerun" / "metrics.parquet")[CURVE_COLUMNS]
    assert len(rerun) == 3
    pd.testing.assert_frame_equal(rerun.reset_index(drop=True), trial.reset_index(drop=True),
                                  check_exact=True, check_dtype=False)

    # run_dir is the trial's run folder: the checkpoint of its last epoch, with its student.
    trials, _ = load_study(study_dir)
    run_dir = study_dir / trials.set_index("trial_id").loc[report["best_trial"], "run_dir"]
    assert run_dir.name.startswith("checkpoint_")
    assert {"student.pt", "checkpoint.pt", "config.yaml"} <= {p.name for p in run_dir.iterdir()}
    assert pd.read_parquet(run_dir / "metrics.parquet")["epoch"].tolist() == [1, 2, 3]

    # The run folder's config.yaml is the resolved config: what ran, named.
    saved = yaml.safe_load((tmp_path / "rerun" / "config.yaml").read_text())
    assert (saved["dataset"], saved["teacher_arch"]) == ("digits", "lenet5")
    assert (saved["torch_threads"], saved["device"]) == (1, "cpu")
