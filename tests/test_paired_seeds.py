"""The paired verdict rule on tables with known answers."""

from __future__ import annotations

import math

import pytest

from lrwa.paired_seeds import compare, detectable_effect, power, seeds_needed, sign_flip_p


def test_five_seeds_all_higher_by_one_to_five_points() -> None:
    result = compare([11, 22, 33, 44, 55], [10, 20, 30, 40, 50], ("A", "B"))
    # d = 1..5: mean 3, sd sqrt(2.5), t_{0.975, 4} = 2.776445
    half = 2.7764451051977987 * math.sqrt(2.5) / math.sqrt(5)
    assert (result.mean, result.ci_low, result.ci_high) == pytest.approx((3, 3 - half, 3 + half))
    assert result.t_p == pytest.approx(0.013236, abs=1e-5)  # t = 4.2426, 4 df
    # Five seeds all the same way: 2 of 32 sign patterns are as extreme, p = 1/16 > 0.05,
    # so the rule does not call it, however large the t statistic.
    assert result.sign_flip_p == pytest.approx(2 / 32)
    assert result.higher == 5 and result.verdict == "no difference detected"


def test_six_seeds_the_same_way_can_be_called() -> None:
    result = compare([2, 3, 4, 5, 6, 7], [1, 1, 1, 1, 1, 1], ("lrwa", "joint"))
    assert result.sign_flip_p == pytest.approx(2 / 64) and result.verdict == "lrwa higher"
    flipped = compare([1, 1, 1, 1, 1, 1], [2, 3, 4, 5, 6, 7], ("lrwa", "joint"))
    assert flipped.verdict == "joint higher" and flipped.mean == pytest.approx(-3.5)


def test_a_mixed_table_is_no_difference() -> None:
    result = compare([1, -1, 2, -2, 0.5, -0.5, 1, -1, 0.2, -0.2], [0] * 10)
    assert result.mean == pytest.approx(0) and result.verdict == "no difference detected"
    assert result.ci_low < 0 < result.ci_high and result.sign_flip_p == pytest.approx(1.0)


def test_sign_flip_counts_sign_patterns() -> None:
    # d = (1, 2, 3): 8 patterns; |mean| >= 2 only for all-plus and all-minus.
    assert sign_flip_p([1, 2, 3]) == pytest.approx(2 / 8)
    # d = (3, -1): patterns (3,-1)=1, (-3,1)=-1, (3,1)=2, (-3,-1)=-2 -> |mean|>=1: all four.
    assert sign_flip_p([3, -1]) == pytest.approx(1.0)


def test_power_and_the_detectable_effect() -> None:
    # For many seeds the paired t approaches the normal: (z_.975 + z_.8) sd / sqrt(n).
    assert detectable_effect(1.0, 400) == pytest.approx((1.959964 + 0.841621) / 20, rel=0.01)
    assert power(detectable_effect(2.34, 5), 2.34, 5) == pytest.approx(0.8, abs=1e-6)
    # The audit's numbers: sd 2.34 over 5 seeds detects about 3.9 points; 1 point needs more
    # seeds than 5 and more than the normal approximation's 43.
    assert detectable_effect(2.34, 5) == pytest.approx(3.9, abs=0.2)
    assert seeds_needed(1.0, 2.34) > 43
    assert math.isnan(detectable_effect(0.0, 5))
