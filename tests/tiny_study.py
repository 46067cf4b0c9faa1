"""A tiny study file shared by the study tests: two trials of tiny epochs on a digits
teacher, so a whole study costs Ray's start-up and little else."""

from __future__ import annotations

import yaml

TINY_BASE = {"student": "lenet5-half", "mode": "meta", "replay": "memory", "epochs": 2,
             "iters_per_epoch": 2, "student_steps": 2, "batch_size": 32, "generator_width": 8,
             "latent_dim": 16, "buffer_size": 64, "replay_ratio": 0.25, "insert_every": 1,
             "device": "cpu"}
SPACE = {"alpha": {"type": "loguniform", "low": 0.1, "high": 1.0},
         "buffer_size": {"type": "int", "low": 32, "high": 128, "log": True},
         "replay_ratio": {"type": "uniform", "low": 0.1, "high": 0.5}}
ENGINE_METRICS = ["loss_gen", "loss_acq", "loss_ret", "grad_cos", "buffer_fill",
                  "samples_per_s", "train_s", "student_lr", "test_acc", "wall_s"]


def write_study_file(folder, teacher, name="tiny", **changes):
    data = {"name": name, "base": {**TINY_BASE, "teacher": str(teacher)}, "space": SPACE,
            "objective": {"metric": "mean_acc", "direction": "max"},
            "budget": {"trials": 2, "max_concurrent": 2},
            "resources": {"cpus": 1, "gpus": 0, "workers": 1},
            "sampler": {"type": "tpe", "n_startup_trials": 1},
            "points_to_evaluate": [{"alpha": 0.9, "buffer_size": 64, "replay_ratio": 0.25}],
            "seed": 3}
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def write_tiny_teacher(folder):
    from lrwa.teacher import save_teacher, train_teacher

    path = folder / "digits-lenet5.pt"
    save_teacher(train_teacher("digits", "lenet5", epochs=1, progress=False), path)
    return path
