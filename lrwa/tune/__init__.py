"""Hyperparameter studies of the distillation engine with Ray Tune and Optuna.

A study is a short YAML file in `tune_studies/` (`study.py` reads and checks it,
`space.py` turns its space into Optuna distributions). `runner.py` turns it into a
`ray.tune.Tuner` with `OptunaSearch` (and ASHA where asked), with the placement
`resources.py` computes; `trainable.py` runs one trial through the engine;
`curves.py` writes every trial's learning curve and the trial table as Parquet
and `progress.py` prints the study's lines. `estimate.py` is the dry run, and
`commands.py` holds the `lrwa tune` and `lrwa report` command-line handlers.
Nothing here is imported by the engine: the arrow points from Tune to lrwa only.
"""
