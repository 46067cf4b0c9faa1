"""A study's search space as Optuna distributions, and its seeded sampler.

The space goes to `OptunaSearch` as Optuna distributions rather than Tune
domains: Optuna then owns the sampling (TPE sees the true log scale and integer
steps), and the Optuna study in the journal file records the same parameters
that the trials ran with.
"""

from __future__ import annotations

import warnings

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from lrwa.tune.study import SpaceEntry, Study


def distribution(parameter: SpaceEntry) -> BaseDistribution:
    if parameter.type == "categorical":
        return CategoricalDistribution(list(parameter.choices))
    if parameter.type == "int":
        return IntDistribution(int(parameter.low), int(parameter.high), log=parameter.log,
                               step=parameter.step or 1)
    return FloatDistribution(float(parameter.low), float(parameter.high), log=parameter.log)


def optuna_space(study: Study) -> dict[str, BaseDistribution]:
    return {name: distribution(parameter) for name, parameter in study.space.items()}


def build_sampler(study: Study) -> optuna.samplers.BaseSampler:
    """TPE (multivariate, so correlated keys such as buffer size and ratio are modelled
    jointly), random search, or every point of a categorical grid once; all seeded from
    the study's seed."""
    if study.sampler.type == "grid":
        return optuna.samplers.GridSampler(
            {name: list(parameter.choices) for name, parameter in study.space.items()},
            seed=study.seed)
    if study.sampler.type == "random":
        return optuna.samplers.RandomSampler(seed=study.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=study.seed, multivariate=True,
                                          n_startup_trials=study.sampler.n_startup_trials)
