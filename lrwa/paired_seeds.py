"""Comparing two systems run on the same seeds: paired differences, intervals, power.

Two systems trained with the same seeds share their initial weights and noise streams, so
their per-seed results are correlated, and the honest comparison is of the per-seed
differences. For differences d_1..d_n (system A minus system B, one per seed):

- the mean difference with its 95% t-interval (n - 1 degrees of freedom);
- the paired t-test's two-sided p-value;
- the exact sign-flip permutation p-value: the share of the 2^n sign patterns whose mean
  is at least as far from 0 as the observed one (with 5 seeds it cannot go below 1/16);
- the verdict: "A higher" or "B higher" when the interval excludes 0 and the sign-flip
  p-value is below 0.05, otherwise "no difference detected";
- the smallest true difference the comparison would detect with 80% power (two-sided
  paired t at 5%), from the observed spread of the differences, and the seeds needed to
  detect a given difference.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

LEVEL = 0.05
POWER = 0.8
MAX_EXACT_SEEDS = 20  # 2^20 sign patterns; more seeds would use a Monte Carlo test


@dataclass(frozen=True)
class PairedComparison:
    n: int
    mean: float
    ci_low: float
    ci_high: float
    t_p: float
    sign_flip_p: float
    higher: int  # seeds where A > B
    detectable: float  # the smallest difference found with 80% power at this n and spread
    verdict: str


def sign_flip_p(differences: Sequence[float]) -> float:
    """Exact two-sided sign-flip p-value of the mean of `differences`."""
    d = np.asarray(differences, dtype=float)
    if len(d) > MAX_EXACT_SEEDS:
        raise ValueError(f"exact sign-flip test for at most {MAX_EXACT_SEEDS} seeds")
    observed = abs(d.mean())
    signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
    means = np.abs(signs @ d) / len(d)
    return float((means >= observed * (1 - 1e-12)).mean())


def power(effect: float, sd: float, n: int) -> float:
    """Power of the two-sided paired t-test at LEVEL to detect a true mean difference."""
    if n < 2 or sd <= 0:
        return float("nan")
    critical = stats.t.ppf(1 - LEVEL / 2, n - 1)
    shift = abs(effect) / (sd / math.sqrt(n))
    if shift > critical + 10:
        return 1.0  # the test all but surely rejects; scipy's far tails turn NaN there
    # The wrong-sign tail is below 1e-20 long before scipy returns NaN for it.
    wrong_sign = float(np.nan_to_num(stats.nct.cdf(-critical, n - 1, shift)))
    return float(stats.nct.sf(critical, n - 1, shift)) + wrong_sign


def detectable_effect(sd: float, n: int, target: float = POWER) -> float:
    """The smallest true difference detected with probability `target`."""
    if n < 2 or sd <= 0:
        return float("nan")
    scale = sd / math.sqrt(n)
    upper = (stats.t.ppf(1 - LEVEL / 2, n - 1) + 10) * scale
    return float(optimize.brentq(lambda e: power(e, sd, n) - target, 1e-9 * scale, upper))


def seeds_needed(effect: float, sd: float, target: float = POWER) -> int:
    """Seeds for the paired t-test to detect `effect` with probability `target`."""
    n = 2
    while power(effect, sd, n) < target:
        n += 1
        if n > 100_000:
            return n
    return n


def compare(a: Sequence[float], b: Sequence[float], names: tuple[str, str] = ("A", "B")
            ) -> PairedComparison:
    """System A against system B, index i of each being seed i's result."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(d) != len(b) or len(d) < 2:
        raise ValueError("a paired comparison needs two equal-length samples of >= 2 seeds")
    n, mean, sd = len(d), float(d.mean()), float(d.std(ddof=1))
    half = float(stats.t.ppf(1 - LEVEL / 2, n - 1) * sd / math.sqrt(n)) if sd > 0 else 0.0
    t_p = float(stats.ttest_rel(a, b).pvalue) if sd > 0 else (0.0 if mean else 1.0)
    flip = sign_flip_p(d)
    if mean - half > 0 and flip < LEVEL:
        verdict = f"{names[0]} higher"
    elif mean + half < 0 and flip < LEVEL:
        verdict = f"{names[1]} higher"
    else:
        verdict = "no difference detected"
    return PairedComparison(n, mean, mean - half, mean + half, t_p, flip,
                            int((d > 0).sum()), detectable_effect(sd, n), verdict)
