"""Selective prediction (evaluation/selective.py) and its figure: the risk-coverage curve and
accuracy at abstention on a hand-computed example (ties by index), the validation threshold that
refers exactly floor(rate * n) units, and the refusal of a bad eval.abstain_rate."""

import math

import numpy as np
import pytest
from matplotlib.figure import Figure

from alz_jax.evaluation import figures, selective
from alz_jax.host.errors import UserError

# Six units: by confidence (ties by index) the order is 5, 0, 2, 1, 3, 4; correct 1 1 0 1 1 0.
CONF = np.array([0.9, 0.6, 0.8, 0.6, 0.5, 0.95])
LABELS = np.array([0, 1, 1, 0, 2, 0])
PREDICTED = np.array([0, 1, 0, 0, 1, 0])


def test_confidence_is_the_probability_of_the_called_class():
    probs = np.array([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])
    np.testing.assert_array_equal(selective.confidence(probs, np.array([2, 0])), [0.3, 0.6])


def test_risk_coverage_on_a_hand_computed_example():
    curve = selective.risk_coverage(LABELS, PREDICTED, CONF, 3)
    np.testing.assert_allclose(curve["coverage"], np.arange(1, 7) / 6)
    np.testing.assert_allclose(curve["accuracy"], [1, 1, 2 / 3, 3 / 4, 4 / 5, 4 / 6])
    # Mean recall over the classes among the answered; unit 1 (class 1, right) comes before
    # unit 3 on their tie, so 4 answered give class 1 a recall of 1/2 (0.75, not 0.5).
    np.testing.assert_allclose(curve["balanced_accuracy"], [1, 1, 0.5, 0.75, 0.75, 0.5])
    assert curve["area_accuracy"] == pytest.approx(293 / 360)
    assert curve["area_balanced_accuracy"] == pytest.approx(0.75)
    assert curve["confidence"] == [0.95, 0.9, 0.8, 0.6, 0.6, 0.5] and curve["n"] == 6


def test_accuracy_at_abstention_is_exact():
    rows = selective.accuracy_at_abstention(LABELS, PREDICTED, CONF, 3, rates=(0.05, 0.2, 0.5))
    assert [(r["rate"], r["abstained"], r["answered"]) for r in rows] == [
        (0.05, 0, 6), (0.2, 1, 5), (0.5, 3, 3)]  # fmt: skip
    assert [r["accuracy"] for r in rows] == pytest.approx([4 / 6, 4 / 5, 2 / 3])
    assert [r["balanced_accuracy"] for r in rows] == pytest.approx([0.5, 0.75, 0.5])
    default = selective.accuracy_at_abstention(LABELS, PREDICTED, CONF, 3)
    assert [r["rate"] for r in default] == [0.05, 0.1, 0.2]


@pytest.mark.parametrize(
    "n, rate, referred",
    # 0.29 * 100 is 28.999999999999996 in floats: the rule counts 29.
    [(137, 0.05, 6), (137, 0.1, 13), (137, 0.2, 27), (137, 0.29, 39), (137, 0.5, 68),
     (100, 0.29, 29), (10, 0.05, 0), (3, 0.0, 0)],
)  # fmt: skip
def test_threshold_refers_exactly_the_requested_share_on_validation(n, rate, referred):
    conf = np.random.default_rng(n).permutation(n) / n + 0.001  # distinct
    threshold = selective.abstention_threshold(conf, rate)
    refer = selective.refer(conf, threshold)
    assert refer.sum() == referred == math.floor(round(rate * n, 9))
    # The referred are the least confident.
    assert refer.sum() == 0 or conf[refer].max() < conf[~refer].min()
    if referred == 0:
        assert threshold == -math.inf


def test_a_tie_at_the_threshold_is_answered():
    conf = np.array([0.5, 0.5, 0.5, 0.9])
    threshold = selective.abstention_threshold(conf, 0.5)
    assert threshold == 0.5 and not selective.refer(conf, threshold).any()


@pytest.mark.parametrize("rate", [-0.1, 1.0, 1.5, "0.1", True])
def test_a_bad_abstain_rate_is_refused(rate):
    with pytest.raises(UserError, match=r"eval\.abstain_rate = .*: expected a number in \[0, 1\)"):
        selective.abstention_threshold(np.array([0.5, 0.7]), rate)


def test_no_validation_units_is_refused():
    with pytest.raises(UserError, match="no validation units to fix the abstention threshold"):
        selective.abstention_threshold(np.array([]), 0.1)


def test_risk_coverage_figure_draws_each_curve_and_the_marks():
    curves = {level: selective.risk_coverage(LABELS, PREDICTED, CONF, 3)
              for level in ("scan", "subject")}  # fmt: skip
    fig = figures.risk_coverage_figure(curves, "test split")
    (ax,) = fig.axes
    labels = [line.get_label() for line in ax.get_lines()]
    assert labels[:4] == ["scan accuracy", "scan balanced", "subject accuracy",
                          "subject balanced"]  # fmt: skip
    marks = [line.get_xdata()[0] for line in ax.get_lines()[4:]]
    assert marks == [0.8, 0.9, 0.95]
    cards = figures.card_figures(fig)
    assert len(cards) == 1 and isinstance(cards[0], Figure)
