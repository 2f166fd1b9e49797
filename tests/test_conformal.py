"""Conformal prediction sets (evaluation/conformal.py): the exact finite-sample quantile, the
LAC / APS / ordinal APS scores against hand-worked values, coverage within the theoretical
bounds on simulations with a known distribution (marginal and class-conditional), the rare
class that marginal calibration under-covers, contiguous ordinal sets, summaries and text."""

import math

import numpy as np
import pytest

from alz_jax.evaluation import conformal
from alz_jax.host.errors import UserError

NAMES = ("NonDemented", "VeryMild", "Mild", "Moderate")


# (n, alpha, ceil((n + 1)(1 - alpha))): the last three come out one too high in float arithmetic.
@pytest.mark.parametrize(
    "n, alpha, rank",
    [(9, 0.1, 9), (19, 0.05, 19), (99, 0.1, 90), (100, 0.1, 91), (4, 0.2, 4), (10, 0.3, 8),
     (1, 0.5, 1), (99, 0.45, 55), (149, 0.18, 123), (24, 0.44, 14)],
)  # fmt: skip
def test_quantile_rank_is_exact(n, alpha, rank):
    assert conformal.quantile_rank(n, alpha) == rank


@pytest.mark.parametrize(
    "alpha, needed", [(0.1, 9), (0.05, 19), (0.2, 4), (0.3, 3), (0.5, 1), (0.25, 3), (0.01, 99)]
)
def test_units_needed_is_the_smallest_finite_n(alpha, needed):
    assert conformal.units_needed(alpha) == needed
    rng = np.random.default_rng(0)
    assert math.isinf(conformal.conformal_quantile(rng.random(needed - 1), alpha))
    assert math.isfinite(conformal.conformal_quantile(rng.random(needed), alpha))


@pytest.mark.parametrize("n, alpha", [(9, 0.1), (20, 0.1), (50, 0.2), (99, 0.45), (149, 0.18)])
def test_conformal_quantile_is_the_rank_th_smallest(n, alpha):
    scores = np.random.default_rng(n).permutation(np.arange(n)) / n  # distinct, k/n
    rank = conformal.quantile_rank(n, alpha)
    assert conformal.conformal_quantile(scores, alpha) == (rank - 1) / n
    assert math.isinf(conformal.conformal_quantile(scores[: conformal.units_needed(alpha) - 1],
                                                   alpha))  # fmt: skip


def test_scores_against_hand_worked_values():
    probs = np.array([[0.35, 0.05, 0.4, 0.2], [0.2, 0.4, 0.2, 0.2]])
    np.testing.assert_allclose(conformal.label_scores(probs, "lac"),
                               [[0.65, 0.95, 0.6, 0.8], [0.8, 0.6, 0.8, 0.8]])  # fmt: skip
    # APS: classes by descending probability (ties: lower index first), cumulative mass.
    np.testing.assert_allclose(conformal.label_scores(probs, "aps"),
                               [[0.75, 1.0, 0.4, 0.95], [0.6, 0.4, 0.8, 1.0]])  # fmt: skip
    # Ordinal APS, row 0: start at class 2 (0.4); neighbours 1 (0.05) and 3 (0.2): add 3 (0.6);
    # then 1 (0.65); then 0 (1.0). Row 1: from 1, a tie between 0 and 2 takes the left (0.6).
    np.testing.assert_allclose(conformal.label_scores(probs, "aps", ordinal=True),
                               [[1.0, 0.65, 0.4, 0.6], [0.6, 0.4, 0.8, 1.0]])  # fmt: skip
    np.testing.assert_allclose(conformal.label_scores(probs, "lac", ordinal=True),
                               conformal.label_scores(probs, "lac"))  # fmt: skip


def test_sets_from_hand_worked_quantiles():
    probs = np.array([[0.35, 0.05, 0.4, 0.2]])
    calibrated = {"score": "aps", "ordinal": False, "num_classes": 4, "quantiles": [0.75]}
    assert conformal.prediction_sets(probs, calibrated).tolist() == [[True, False, True, False]]
    # Ordinal APS at 0.65: {1, 2, 3}, a range; ordinal LAC at 0.65: {0, 2} -> hull 0..2.
    calibrated.update(ordinal=True, quantiles=[0.65])
    assert conformal.prediction_sets(probs, calibrated).tolist() == [[False, True, True, True]]
    calibrated.update(score="lac")
    assert conformal.prediction_sets(probs, calibrated).tolist() == [[True, True, True, False]]
    # Class-conditional: class 0's quantile 0.5 excludes it, class 3's None (inf) includes it.
    calibrated.update(ordinal=False, quantiles=[0.5, 0.0, 0.6, None])
    assert conformal.prediction_sets(probs, calibrated).tolist() == [[False, False, True, True]]


def _dirichlet_units(rng, trials: int, n: int, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(trials, n, k) class probabilities from a Dirichlet and labels drawn from them: a model
    whose probabilities are the true conditional distribution."""
    probs = rng.dirichlet(np.full(k, 0.7), size=(trials, n))
    u = rng.random((trials, n, 1))
    labels = np.minimum((probs.cumsum(axis=2) < u).sum(axis=2), k - 1)
    return probs, labels


def _coverages(calibration: str, score: str, alpha: float, trials: int = 300,
               nonempty: bool = False) -> tuple:  # fmt: skip
    """Per trial: test coverage (overall and per class) and calibration units per class, of the
    sets the scores define (`nonempty`: with APS's top class added where a set is empty)."""
    rng = np.random.default_rng([conformal.CALIBRATIONS.index(calibration),
                                 conformal.SCORES.index(score)])  # fmt: skip
    cal_p, cal_y = _dirichlet_units(rng, trials, 200)
    test_p, test_y = _dirichlet_units(rng, trials, 2000)
    overall, per_class, units = [], [], []
    for t in range(trials):
        calibrated = conformal.calibrate(cal_p[t], cal_y[t], alpha, score, calibration)
        sets = conformal.prediction_sets(test_p[t], calibrated, nonempty)
        summary = conformal.set_summary(sets, test_y[t], 4)
        overall.append(summary["coverage"])
        per_class.append(summary["coverage_per_class"])
        units.append(calibrated["class_units"])
    return np.array(overall), np.array(per_class, float), np.array(units)


def _within(values: np.ndarray, low: float, high: float) -> None:
    """The mean of per-trial `values` lies in [low, high] up to 3.5 Monte-Carlo standard errors."""
    se = values.std(ddof=1) / math.sqrt(len(values))
    assert low - 3.5 * se <= values.mean() <= high + 3.5 * se, (values.mean(), low, high, se)


@pytest.mark.parametrize("score", conformal.SCORES)
def test_marginal_coverage_within_the_theoretical_bounds(score):
    alpha, n = 0.1, 200
    overall, _, _ = _coverages("marginal", score, alpha)
    _within(overall, 1 - alpha, 1 - alpha + 1 / (n + 1))


@pytest.mark.parametrize("score", conformal.SCORES)
def test_class_conditional_coverage_within_each_class_bounds(score):
    alpha = 0.1
    _, per_class, units = _coverages("class", score, alpha)
    for c in range(4):
        # Given n_c calibration units of class c, its coverage lies in [1-a, 1-a+1/(n_c+1)].
        _within(per_class[:, c], 1 - alpha, 1 - alpha + float(np.mean(1 / (units[:, c] + 1))))


def test_aps_sets_always_hold_the_top_class_and_cover_at_least_as_often():
    """The report's APS sets (nonempty) are the scores' sets with the most probable class added
    where they were empty: never empty, at least the guaranteed coverage."""
    alpha = 0.1
    strict, _, _ = _coverages("marginal", "aps", alpha, trials=60)
    shown, _, _ = _coverages("marginal", "aps", alpha, trials=60, nonempty=True)
    assert np.all(shown >= strict - 1e-12) and shown.mean() > strict.mean()
    _within(shown, 1 - alpha, 1.0)
    rng = np.random.default_rng(3)
    cal_p, cal_y = _dirichlet_units(rng, 1, 200)
    test_p, _ = _dirichlet_units(rng, 1, 500)
    for ordinal in (False, True):
        calibrated = conformal.calibrate(cal_p[0], cal_y[0], alpha, "aps", ordinal=ordinal)
        sets = conformal.prediction_sets(test_p[0], calibrated)
        assert sets.any(axis=1).all()
        assert sets[np.arange(500), test_p[0].argmax(axis=1)].all()
    lac = conformal.calibrate(cal_p[0], cal_y[0], alpha, "lac")
    assert np.array_equal(
        conformal.prediction_sets(test_p[0], lac),
        conformal.prediction_sets(test_p[0], lac, nonempty=False),
    )


def _rare_class_units(rng, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Three classes, class 2 rare (6%) and poorly seen by the model: its units get
    probabilities like a common class's."""
    labels = rng.choice(3, size=n, p=[0.47, 0.47, 0.06])
    draws = rng.gamma(np.array([[6.0, 1, 1], [1, 6, 1], [3, 3, 1.5]])[labels])  # Dirichlet rows
    return draws / draws.sum(axis=1, keepdims=True), labels


def test_marginal_under_covers_a_rare_class_that_class_conditional_covers():
    rng = np.random.default_rng(7)
    rare_coverage: dict[str, list] = {"marginal": [], "class": []}
    for _ in range(60):
        cal_p, cal_y = _rare_class_units(rng, 600)
        test_p, test_y = _rare_class_units(rng, 3000)
        for calibration, coverages in rare_coverage.items():
            calibrated = conformal.calibrate(cal_p, cal_y, 0.1, "lac", calibration)
            sets = conformal.prediction_sets(test_p, calibrated)
            coverages.append(conformal.set_summary(sets, test_y, 3)["coverage_per_class"][2])
    print({k: np.mean(v) for k, v in rare_coverage.items()})
    assert np.mean(rare_coverage["marginal"]) < 0.6
    assert np.mean(rare_coverage["class"]) >= 0.89


@pytest.mark.parametrize("calibration", conformal.CALIBRATIONS)
@pytest.mark.parametrize("score", conformal.SCORES)
def test_ordinal_sets_are_contiguous(score, calibration):
    rng = np.random.default_rng(3)
    cal_p, cal_y = _dirichlet_units(rng, 1, 300, k=5)
    test_p, _ = _dirichlet_units(rng, 1, 2000, k=5)
    calibrated = conformal.calibrate(cal_p[0], cal_y[0], 0.2, score, calibration, ordinal=True)
    sets = conformal.prediction_sets(test_p[0], calibrated)
    plain = conformal.prediction_sets(test_p[0], {**calibrated, "ordinal": False})
    for row in sets[sets.any(axis=1)]:
        members = np.flatnonzero(row)
        assert members[-1] - members[0] + 1 == len(members), row
    # Not vacuous: some sets hold several classes, and plain LAC sets have gaps the hull fills.
    assert (sets.sum(axis=1) >= 2).any()
    if score == "lac":
        assert (sets.sum(axis=1) > plain.sum(axis=1)).any()


@pytest.mark.parametrize("ordinal", [False, True])
@pytest.mark.parametrize("calibration", conformal.CALIBRATIONS)
@pytest.mark.parametrize("score", conformal.SCORES)
def test_sets_are_nested_in_alpha(score, calibration, ordinal):
    rng = np.random.default_rng(5)
    cal_p, cal_y = _dirichlet_units(rng, 1, 400)
    test_p, _ = _dirichlet_units(rng, 1, 1000)
    all_sets = [
        conformal.prediction_sets(
            test_p[0], conformal.calibrate(cal_p[0], cal_y[0], alpha, score, calibration, ordinal))
        for alpha in (0.4, 0.3, 0.2, 0.1, 0.05)
    ]  # fmt: skip
    for larger, smaller in zip(all_sets[1:], all_sets[:-1], strict=True):
        assert np.all(larger >= smaller)  # a smaller alpha only adds labels
    assert all_sets[-1].sum() > all_sets[0].sum()


def test_calibrate_reports_quantiles_units_and_short_classes():
    probs = np.array([[0.7, 0.2, 0.1]] * 12 + [[0.1, 0.6, 0.3]] * 3)
    labels = np.array([0] * 12 + [1] * 3)
    calibrated = conformal.calibrate(probs, labels, 0.1, "lac", "class")
    assert calibrated["quantiles"] == [pytest.approx(0.3), None, None]
    assert calibrated["units"] == [12, 3, 0] and calibrated["needed"] == 9
    assert calibrated["short_classes"] == [1, 2]
    text = conformal.warning_text(calibrated, ["NC", "MCI", "AD"])
    assert text.splitlines() == [
        "warning: conformal class MCI has 3 calibration units; alpha 0.1 needs at least 9 per "
        "class, so every set holds MCI.",
        "warning: conformal class AD has 0 calibration units; alpha 0.1 needs at least 9 per "
        "class, so every set holds AD.",
    ]
    marginal = conformal.calibrate(probs, labels, 0.1, "aps")
    # APS true-label scores: 0.7 (x12) and 0.6 (x3); rank ceil(16 * 0.9) = 15 of 15.
    assert marginal["units"] == [15] and marginal["quantiles"][0] == pytest.approx(0.7)
    assert conformal.warning_text(marginal, ["NC", "MCI", "AD"]) is None
    small = conformal.calibrate(probs[:5], labels[:5], 0.1, "aps")
    assert small["quantiles"] == [None]
    assert conformal.warning_text(small, ["NC", "MCI", "AD"]) == (
        "warning: conformal calibration has 5 units; alpha 0.1 needs at least 9, so every "
        "prediction set holds every class.")  # fmt: skip
    assert conformal.prediction_sets(probs[:2], small).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [({"alpha": 0.0}, "eval.conformal_alpha = 0.0: expected a number in (0, 1)"),
     ({"alpha": 1.5}, "eval.conformal_alpha = 1.5: expected a number in (0, 1)"),
     ({"alpha": "0.1"}, "eval.conformal_alpha = '0.1': expected a number in (0, 1)"),
     ({"score": "raps"}, "eval.conformal_score = 'raps': expected one of lac, aps"),
     ({"calibration": "mondrian"},
      "eval.conformal_calibration = 'mondrian': expected one of marginal, class")],
)  # fmt: skip
def test_calibrate_refuses_bad_settings(kwargs, message):
    args = {"alpha": 0.1, "score": "aps", "calibration": "marginal", **kwargs}
    with pytest.raises(UserError) as e:
        conformal.calibrate(np.full((3, 2), 0.5), np.array([0, 1, 0]), **args)
    assert message in str(e.value)


def test_set_summary_and_weighted_scores_on_a_small_example():
    sets = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 1, 1], [0, 0, 1]], bool)
    labels = np.array([0, 1, 1, 0, 2])
    summary = conformal.set_summary(sets, labels, 4)
    assert summary == {
        "coverage": 0.6, "coverage_per_class": [0.5, 0.5, 1.0, None], "mean_set_size": 1.2,
        "singleton_share": 0.4, "empty_share": 0.2, "n": 5,
    }  # fmt: skip
    ones = conformal.set_scores(sets, labels, np.ones((1, 5)))
    assert ones["coverage"][0] == summary["coverage"]
    assert ones["set_size"][0] == pytest.approx(summary["mean_set_size"])
    assert ones["singleton"][0] == summary["singleton_share"]
    assert ones["empty"][0] == summary["empty_share"]
    assert [ones[f"coverage_class{c}"][0] for c in range(3)] == [0.5, 0.5, 1.0]
    # A resample drawing unit 0 twice, unit 2 once, unit 4 once (not 1 or 3).
    drawn = conformal.set_scores(sets, labels, np.array([[2, 0, 1, 0, 1]]))
    assert drawn["coverage"][0] == 0.75 and drawn["set_size"][0] == 0.75
    assert drawn["singleton"][0] == 0.75 and drawn["empty"][0] == 0.25
    assert drawn["coverage_class0"][0] == 1.0 and drawn["coverage_class1"][0] == 0.0


def test_format_set():
    assert conformal.format_set(np.array([0, 1, 1, 0], bool), NAMES, False) == "{VeryMild, Mild}"
    assert conformal.format_set(np.array([0, 1, 1, 1], bool), NAMES, True) == "VeryMild..Moderate"
    assert conformal.format_set(np.array([0, 0, 1, 0], bool), NAMES, True) == "Mild"
    assert conformal.format_set(np.zeros(4, bool), NAMES, True) == "{}"
    assert conformal.format_set(np.zeros(4, bool), NAMES, False) == "{}"
    assert conformal.format_set(np.array([1, 0, 1, 0], bool), NAMES, True) == "{NonDemented, Mild}"
