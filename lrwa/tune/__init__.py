"""Hyperparameter studies of the distillation engine with Ray Tune and Optuna.

A study is a short YAML file (`study.py` reads and checks it, `space.py` turns its
space into Optuna distributions). `runner.py` holds the study (`lock.py`), checks its
folder and Ray's stored state (`integrity.py`) and drives a `ray.tune.Tuner` with
`search.StudySearch` (OptunaSearch on the study's journal) and ASHA where asked, with
the placement `resources.py` computes. `trainable.py` runs one trial through the
engine and reports each epoch with its checkpoint; `recorder.py`, in the driver,
writes the curves and trial table (`results.py`) and tells the journal how each
trial ended (`journal.py`); `views.py` rebuilds those views from the journal and Ray's
files. `storage.py` reaches folders and object stores through pyarrow.fs; `layout.py`
names every file; `internals.py` holds every private name of Ray and Optuna lrwa uses.
`report.py` is `lrwa report`, `estimate.py` the dry run, `commands.py` the command-line
handlers. Nothing here is imported by the engine: the arrow points from Tune to lrwa only.
"""

from __future__ import annotations

from typing import Any


def load_study(location: str) -> Any:
    """(trials, curves) of a study as pandas frames: see `lrwa.tune.results.load_study`."""
    from lrwa.tune.results import load_study as load

    return load(location)
