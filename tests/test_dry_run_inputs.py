"""`lrwa tune --dry-run` says what a study cannot find before it estimates its cost: the
teacher file, and the data set's files under data_root."""

from __future__ import annotations

from tiny_study import write_study_file

from lrwa.tune.estimate import dry_run
from lrwa.tune.study import load_study_file


def _dry_run(path, tmp_path):
    lines = []
    estimate = dry_run(load_study_file(path), tmp_path / "results", out=lines.append,
                       measure=False)
    return estimate, lines


def test_a_missing_teacher_and_missing_data_are_named(tmp_path):
    teacher = tmp_path / "teachers" / "cifar10-resnet34.pt"
    path = write_study_file(tmp_path, teacher, base={
        "teacher_arch": "resnet34", "dataset": "cifar10", "data_root": str(tmp_path / "data"),
        "student": "resnet18"})
    estimate, lines = _dry_run(path, tmp_path)
    ready = [line for line in lines if line.startswith("  not ready: ")]
    assert len(ready) == 2 == len(estimate["missing"]), lines
    assert f"teacher file {teacher} does not exist" in ready[0]
    assert ("lrwa teacher train --dataset cifar10 --arch resnet34 --out "
            f"{teacher}") in ready[0]
    assert ready[1].startswith("  not ready: data set cifar10: ")


def test_a_study_with_its_inputs_is_ready(tmp_path):
    from tiny_study import write_tiny_teacher

    path = write_study_file(tmp_path, write_tiny_teacher(tmp_path))
    estimate, lines = _dry_run(path, tmp_path)
    assert estimate["missing"] == [] and not any("not ready" in line for line in lines)


def test_the_estimate_counts_the_generative_replays_vae_steps(tmp_path):
    """PRE-DFKD's VAE trains 4 times an iteration: the measured estimate says so and costs
    more than the same study with MB-DFKD's memory bank."""
    import yaml
    from tiny_study import tiny_study_data, write_tiny_teacher

    from lrwa.tune.estimate import measure_epoch_seconds

    teacher = write_tiny_teacher(tmp_path)
    sizes = {"teacher": str(teacher), "device": "cpu", "epochs": 1, "iters_per_epoch": 2,
             "student_steps": 5, "batch_size": 32, "generator_width": 8, "latent_dim": 8,
             "vae_latent_dim": 8}
    seconds, how = {}, {}
    for system in ("pre-dfkd", "mb-dfkd"):
        data = tiny_study_data(system, {**sizes, "preset": system})
        data["space"] = {"alpha": data["space"]["alpha"]}
        data["points_to_evaluate"] = []
        path = tmp_path / f"{system}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        seconds[system], how[system] = measure_epoch_seconds(load_study_file(path))
    assert " x 4 at batch" in how["pre-dfkd"] and "VAE" not in how["mb-dfkd"]
    assert seconds["pre-dfkd"] > seconds["mb-dfkd"]
