"""A run's learning_curve.png reads at a glance: whole epochs, accuracy in %, plain numbers.

The figure plot_learning_curve returns is the one it saved, so its tick labels are the ones
drawn into the PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lrwa.plot_axes import MARGIN, MIN_SPAN, accuracy_limits
from lrwa.sinks import CURVE_FILE, plot_learning_curve


def curve(accuracies: list[float | None]) -> list[dict[str, Any]]:
    return [{"epoch": epoch, "test_acc": acc} for epoch, acc in enumerate(accuracies, start=1)]


def shown(labels: list[Any]) -> list[str]:
    return [label.get_text() for label in labels if label.get_text()]


def drawn_ticks(axis: Any, which: str) -> list[str]:
    """The tick labels inside the axis' limits, as they were drawn."""
    low, high = getattr(axis, f"get_{which}lim")()
    ticks = getattr(axis, f"get_{which}ticks")()
    labels = getattr(axis, f"get_{which}ticklabels")()
    return [label.get_text() for tick, label in zip(ticks, labels, strict=True)
            if low <= tick <= high]


@pytest.mark.parametrize("epochs", [1, 2, 3, 7, 400])
def test_epoch_ticks_are_whole_numbers(tmp_path: Path, epochs: int) -> None:
    figure = plot_learning_curve(tmp_path, curve([0.5 + 0.001 * e for e in range(epochs)]),
                                 "run", teacher_acc=0.987)
    [axis] = figure.axes
    ticks = drawn_ticks(axis, "x")
    assert ticks, "no epoch ticks drawn"
    assert all(tick.isdigit() for tick in ticks), ticks
    assert (tmp_path / CURVE_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_accuracy_is_in_percent_and_the_legend_names_both_lines(tmp_path: Path) -> None:
    figure = plot_learning_curve(tmp_path, curve([0.42, None, 0.61, 0.73]), "mnist5k",
                                 teacher_acc=0.9871)
    [axis] = figure.axes
    assert axis.get_ylabel() == "test accuracy (%)"
    [student, teacher] = axis.get_lines()
    assert list(student.get_xdata()) == [1, 3, 4]  # the epoch without a test pass is left out
    assert list(student.get_ydata()) == pytest.approx([42.0, 61.0, 73.0])
    assert list(teacher.get_ydata()) == pytest.approx([98.71, 98.71])
    assert shown(axis.get_legend().get_texts()) == [
        "student, test accuracy", "teacher, test accuracy (98.71%)"]


def test_without_a_known_teacher_accuracy_only_the_student_is_drawn(tmp_path: Path) -> None:
    figure = plot_learning_curve(tmp_path, curve([0.2, 0.3]), "plain state_dict teacher")
    [axis] = figure.axes
    assert len(axis.get_lines()) == 1
    assert shown(axis.get_legend().get_texts()) == ["student, test accuracy"]


def test_a_flat_curve_has_plain_tick_labels_without_an_offset(tmp_path: Path) -> None:
    # Within a hundredth of a point matplotlib would print "+9.801e1" above the axis.
    figure = plot_learning_curve(tmp_path, curve([0.98010, 0.98012, 0.98015]), "flat",
                                 teacher_acc=0.98013)
    [axis] = figure.axes
    assert axis.yaxis.get_offset_text().get_text() == ""
    assert axis.xaxis.get_offset_text().get_text() == ""
    labels = drawn_ticks(axis, "y")
    assert labels and all("e" not in label.lower() for label in labels), labels
    # Noise of a hundredth of a point is not stretched over the whole plot.
    low, high = axis.get_ylim()
    assert high - low >= MIN_SPAN and low <= 98.010 and 98.015 <= high <= 100.0


def test_a_curve_at_chance_is_drawn_from_chance_over_a_ten_point_span(tmp_path: Path) -> None:
    # The smoke study's curve: 9.2% to 9.4% on ten classes is noise at chance, not a rise.
    figure = plot_learning_curve(tmp_path, curve([0.092, 0.094]), "smoke", num_classes=10)
    [axis] = figure.axes
    low, high = axis.get_ylim()
    assert low <= 9.2 and high >= 9.2 + MIN_SPAN
    chance = [line for line in axis.get_lines() if line.get_label().startswith("chance")]
    assert len(chance) == 1 and list(chance[0].get_ydata()) == pytest.approx([10.0, 10.0])
    assert "chance (10%)" in shown(axis.get_legend().get_texts())


@pytest.mark.parametrize(("values", "chance", "expected"), [
    ([97.0, 99.0], None, (90.0, 100.0)),        # near the top: the span grows downwards
    ([9.2, 9.4], 10.0, (9.2, 19.2)),            # at chance: ten points from the lowest
    ([40.0, 80.0], 10.0, (10.0, 80.0)),         # a real rise: chance to the best
    ([], None, (0.0, 100.0)),
])
def test_accuracy_limits(values, chance, expected) -> None:
    low, high = accuracy_limits(values, chance)
    margin = MARGIN * (expected[1] - expected[0])
    assert (low, high) == pytest.approx((max(0.0, expected[0] - margin),
                                         min(100.0, expected[1] + margin)))
