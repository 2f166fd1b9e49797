"""Scan-level methods (evaluation/scan_methods.py): ClinicaDL's soft vote weighted by each slice
position's validation balanced accuracy, exact against hand computations; the side-by-side
comparison of methods with thresholds from validation and paired subject-bootstrap differences;
the attention strip, readable as its file and as a TensorBoard card."""

import dataclasses

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from alz_jax.evaluation import figures, metrics, scan_methods, tasks
from alz_jax.evaluation.settings import EvalSettings
from alz_jax.host.errors import UserError
from tests.test_figures_readable import FILE_DPI, _problems

BINARY = tasks.BinaryTask(2)
SETTINGS = EvalSettings(bootstrap_samples=200, bootstrap_seed=3)


def _records(rows) -> dict:
    """Records from (scan, subject, label, slice position) rows."""
    scans, subjects, labels, positions = zip(*rows, strict=True)
    return {
        "file_name": np.array(
            [f"{s}_{p}.png" for s, p in zip(scans, positions, strict=True)], object
        ),
        "scan_id": np.array(scans, object),
        "subject_id": np.array(subjects, object),
        "label": np.array(labels, np.int64),
        "slice_index": np.array(positions, np.int64),
    }


def _cohort(subjects: int, seed: int, prefix: str = "s", scans: int = 2, slices: int = 4):
    """`subjects` subjects (alternately NC, AD) of `scans` scans of `slices` slices, with
    noisy P(AD) leaning towards the truth."""
    rows = [
        (f"{prefix}{i}_{c}", f"{prefix}{i}", i % 2, 80 + k)
        for i in range(subjects) for c in range(scans) for k in range(slices)
    ]  # fmt: skip
    records = _records(rows)
    rng = np.random.default_rng(seed)
    probs = np.clip(0.5 + 0.12 * (2 * records["label"] - 1) + rng.normal(0, 0.25, len(rows)), 0, 1)
    return records, probs


# ---- The weighted vote. ----


def test_weighted_vote_matches_a_hand_computation():
    records = _records([
        ("A", "x", 1, 10), ("A", "x", 1, 11), ("A", "x", 1, 12),
        ("B", "y", 0, 10), ("B", "y", 0, 11), ("B", "y", 0, 13),  # 13: not in validation
        ("C", "y", 0, 14), ("C", "y", 0, 15),  # every weight 0: the plain mean
    ])  # fmt: skip
    probs = np.array([0.25, 0.5, 1.0, 0.5, 0.25, 0.75, 0.25, 0.875])
    weights = {10: 1.0, 11: 3.0, 12: 2.0, 14: 0.0, 15: 0.0}
    unseen = (1.0 + 3.0 + 2.0 + 0.0 + 0.0) / 5
    a = (1.0 * 0.25 + 3.0 * 0.5 + 2.0 * 1.0) / (1.0 + 3.0 + 2.0)
    b = (1.0 * 0.5 + 3.0 * 0.25 + unseen * 0.75) / (1.0 + 3.0 + unseen)
    c = (0.25 + 0.875) / 2
    vote = scan_methods.weighted_vote(records, probs, weights)
    assert vote.tolist() == [a, a, a, b, b, b, c, c]
    # K classes: the same weights on each class's probability.
    k_probs = np.stack([probs, 1 - probs, np.full(8, 0.5)], axis=1)
    k_vote = scan_methods.weighted_vote(records, k_probs, weights)
    assert k_vote.shape == (8, 3)
    assert k_vote[0].tolist() == [a, (1.0 * 0.75 + 3.0 * 0.5 + 2.0 * 0.0) / 6.0, 0.5]
    assert k_vote[6].tolist() == [c, (0.75 + 0.125) / 2, 0.5]


def test_position_weights_are_validation_balanced_accuracies():
    records = _records([
        ("A", "x", 1, 10), ("B", "y", 1, 10), ("C", "z", 0, 10), ("D", "w", 0, 10),
        ("A", "x", 1, 11), ("B", "y", 1, 11), ("C", "z", 0, 11), ("D", "w", 0, 11),
        ("A", "x", 1, 12), ("C", "z", 0, 12), ("D", "w", 0, 12),
        ("C", "z", 0, 13), ("D", "w", 0, 13),  # NC only: the NC recall
    ])  # fmt: skip
    probs = np.array([0.9, 0.4, 0.2, 0.6, 0.9, 0.8, 0.1, 0.3, 0.5, 0.7, 0.2, 0.2, 0.8])
    # 10: sensitivity 1/2, specificity 1/2; 11: all right; 12: P(AD) 0.5 is called AD, so
    # sensitivity 1 and specificity 1/2; 13: one NC of two.
    expected = {10: 0.5, 11: 1.0, 12: 0.75, 13: 0.5}
    assert scan_methods.position_weights(records, probs, BINARY) == expected
    assert scan_methods.position_weights(records, probs, BINARY, min_accuracy=0.6) == {
        10: 0.0, 11: 1.0, 12: 0.75, 13: 0.0}  # fmt: skip
    k_records = _records([("A", "x", 0, 7), ("B", "y", 1, 7), ("C", "z", 2, 7), ("D", "w", 2, 7)])
    k_probs = np.eye(3)[[0, 1, 1, 2]] * 0.6 + 0.1  # argmax 0, 1, 1, 2
    weights = scan_methods.position_weights(k_records, k_probs, tasks.MulticlassTask(3))
    assert weights == {7: (1.0 + 1.0 + 0.5) / 3}


def test_weighted_vote_refuses_records_without_slice_positions():
    records = _records([("A", "x", 1, -1), ("A", "x", 1, -1)])
    with pytest.raises(UserError, match=r"no slice index \(slice_index is -1 or missing\)"):
        scan_methods.position_weights(records, np.array([0.2, 0.8]), BINARY)
    with pytest.raises(UserError, match="weighted vote weights each slice position"):
        scan_methods.weighted_vote(records, np.array([0.2, 0.8]), {3: 1.0})
    with pytest.raises(ValueError, match=r"shape \(2, 3\); expected one row per record \(2\)"):
        scan_methods.position_weights(_records([("A", "x", 1, 4)] * 2), np.ones((2, 3)), BINARY)


def test_level_units_of_the_broadcast_vote_give_the_vote_per_scan_and_its_mean_per_subject():
    records, probs = _cohort(6, seed=0, scans=3, slices=5)
    weights = {80: 0.9, 81: 0.5, 82: 0.0, 83: 0.7}  # 84: unseen, weighted 0.525
    vote = scan_methods.weighted_vote(records, probs, weights)
    units = metrics.level_units(records, vote, subjects_known=True)
    by_scan: dict = {}
    for scan, p, position in zip(records["scan_id"], probs, records["slice_index"], strict=True):
        w = weights.get(int(position), 0.525)
        entry = by_scan.setdefault(scan, [0.0, 0.0])
        entry[0], entry[1] = entry[0] + w * p, entry[1] + w
    expected = {scan: s / w for scan, (s, w) in by_scan.items()}
    assert len(units["scan"].keys) == 18
    for (scan, _), p in zip(units["scan"].keys, units["scan"].probs, strict=True):
        assert p == pytest.approx(expected[scan], rel=1e-13, abs=0)
    for (subject, _), p in zip(units["subject"].keys, units["subject"].probs, strict=True):
        scans = [expected[f"{subject}_{c}"] for c in range(3)]
        assert p == pytest.approx(np.mean(scans), rel=1e-13, abs=0)


# ---- The comparison. ----


def _methods(names, arrays) -> dict:
    return dict(zip(names, arrays, strict=True))


def _compare(methods_test, methods_val, test, val, settings=SETTINGS, task=BINARY, known=True):
    return scan_methods.compare_methods(test, methods_test, val, methods_val, task, settings,
                                        known, ["NC", "AD"])  # fmt: skip


def test_identical_methods_differ_by_exactly_zero():
    (test, p), (val, pv) = _cohort(24, 1), _cohort(16, 2, "v")
    names = (scan_methods.AVERAGE, "the same again")
    section = _compare(_methods(names, (p, p.copy())), _methods(names, (pv, pv.copy())),
                       test, val)  # fmt: skip
    assert section["levels"] == ["scan", "subject"]
    assert section["reference"] == scan_methods.AVERAGE
    for level in ("scan", "subject"):
        same = section["results"][level]["the same again"]
        assert same["metrics"] == section["results"][level][scan_methods.AVERAGE]["metrics"]
        assert set(same["difference"]) == set(section["metric_names"]) >= {"balanced_accuracy"}
        for d in same["difference"].values():
            assert (d["observed"], d["ci95"], d["share_positive"]) == (0.0, [0.0, 0.0], 0.0)
            assert d["resamples"] == 200
    without = _compare(_methods(names, (p, p)), _methods(names, (pv, pv)), test, val,
                       dataclasses.replace(SETTINGS, bootstrap_samples=0))  # fmt: skip
    d = without["results"]["scan"]["the same again"]["difference"]["balanced_accuracy"]
    assert (d["observed"], d["ci95"], d["resamples"]) == (0.0, None, 0)


def test_a_method_better_on_every_unit_has_a_positive_difference():
    (test, p), (val, pv) = _cohort(24, 1), _cohort(16, 2, "v")
    rng = np.random.default_rng(5)  # a noisier reference, wrong on some subjects
    p, pv = (np.clip(x + rng.normal(0, 0.3, len(x)), 0, 1) for x in (p, pv))
    # Each slice's P(AD) moved halfway to its truth: every scan and subject closer to it.
    better, better_val = (p + test["label"]) / 2, (pv + val["label"]) / 2
    names = (scan_methods.AVERAGE, scan_methods.bag_method("attention"))
    section = _compare(_methods(names, (p, better)), _methods(names, (pv, better_val)),
                       test, val)  # fmt: skip
    for level in ("scan", "subject"):
        d = section["results"][level]["bag model (attention)"]["difference"]
        for name in ("balanced_accuracy", "roc_auc"):
            assert d[name]["observed"] > 0, (level, name)
            assert d[name]["ci95"][0] > 0, (level, name)
            assert d[name]["share_positive"] > 0.9, (level, name)


def test_the_bootstrap_resamples_subjects_as_the_reports_do():
    (test, p), (val, pv) = _cohort(24, 1), _cohort(16, 2, "v")
    methods, methods_val = {scan_methods.AVERAGE: p}, {scan_methods.AVERAGE: pv}
    section = _compare(methods, methods_val, test, val)
    assert section["bootstrap"]["resampled_unit"] == "subject"
    result = section["results"]
    thresholds = {lv: result[lv][scan_methods.AVERAGE]["threshold"] for lv in result}
    units = metrics.level_units(test, p, subjects_known=True)
    report = BINARY.bootstrap_intervals(units, 200, 3, thresholds)
    for level in ("scan", "subject"):
        for name, entry in result[level][scan_methods.AVERAGE]["metrics"].items():
            assert entry["ci95"] == report[level][name], (level, name)
    # Each scan its own subject: the scans of a subject no longer move together, so the
    # scan-level intervals change.
    apart = {**test, "subject_id": test["scan_id"].copy()}
    apart_val = {**val, "subject_id": val["scan_id"].copy()}
    separate = _compare(methods, methods_val, apart, apart_val)["results"]["scan"]
    ours = result["scan"][scan_methods.AVERAGE]["metrics"]
    theirs = separate[scan_methods.AVERAGE]["metrics"]
    assert [ours[k]["value"] for k in ours] == [theirs[k]["value"] for k in ours]
    assert [ours[k]["ci95"] for k in ours] != [theirs[k]["ci95"] for k in ours]


def test_thresholds_are_chosen_on_validation():
    (test, p), (val, pv) = _cohort(24, 1), _cohort(16, 2, "v")
    methods = {scan_methods.AVERAGE: p}
    section = _compare(methods, {scan_methods.AVERAGE: pv}, test, val)
    pv_shifted = np.clip(pv + 0.15, 0, 1)
    shifted = _compare(methods, {scan_methods.AVERAGE: pv_shifted}, test, val)
    for level in ("scan", "subject"):
        entry = section["results"][level][scan_methods.AVERAGE]
        moved = shifted["results"][level][scan_methods.AVERAGE]
        for result, probs in ((entry, pv), (moved, pv_shifted)):
            u = metrics.level_units(val, probs, subjects_known=True)[level]
            chosen = metrics.choose_threshold(u.labels, u.probs, "youden")
            assert result["threshold"] == chosen["threshold"]
            assert result["threshold_details"] == chosen
        assert moved["threshold"] > entry["threshold"] + 0.05
        # The test call moves with it: more NC, fewer AD called.
        sens = (entry["metrics"]["sensitivity"]["value"], moved["metrics"]["sensitivity"]["value"])
        assert sens[1] < sens[0], level
        # The threshold-free AUC does not.
        assert entry["metrics"]["roc_auc"] == moved["metrics"]["roc_auc"]
    strict = dataclasses.replace(SETTINGS, threshold="sensitivity:0.9")
    section = _compare(methods, {scan_methods.AVERAGE: pv}, test, val, strict)
    u = metrics.level_units(val, pv, subjects_known=True)["scan"]
    chosen = metrics.choose_threshold(u.labels, u.probs, "sensitivity", 0.9)["threshold"]
    assert section["results"]["scan"][scan_methods.AVERAGE]["threshold"] == chosen
    assert section["threshold_method"] == "sensitivity:0.9"


def test_markdown_and_console_text_show_every_method():
    (test, p), (val, pv) = _cohort(24, 1), _cohort(16, 2, "v")
    names = (scan_methods.AVERAGE, scan_methods.WEIGHTED_VOTE, "bag | model (attention)")
    tests_, vals = (p, p * 0.9, (p + test["label"]) / 2), (pv, pv * 0.9, (pv + val["label"]) / 2)
    section = _compare(_methods(names, tests_), _methods(names, vals), test, val)
    md = scan_methods.methods_markdown(section)
    assert md.startswith("## Scan-level methods\n")
    assert "### Scan level" in md and "### Subject level" in md
    header = ("| method | n | threshold | balanced acc. [95% CI] | ROC AUC [95% CI] | balanced "
              "acc. - slice model + average | ROC AUC - slice model + average |")  # fmt: skip
    assert md.count(header) == 2
    for name in ("slice model + average", "slice model + weighted vote",
                 "bag \\| model (attention)"):  # fmt: skip
        rows = [line for line in md.splitlines() if line.startswith(f"| {name} | ")]
        assert len(rows) == 2, name
        assert all(len(r.split(" | ")) == 7 for r in rows), rows
    scan = section["results"]["scan"][scan_methods.WEIGHTED_VOTE]
    ba = scan["metrics"]["balanced_accuracy"]
    assert f"| {scan['threshold']:.3f} | {ba['value']:.3f} [{ba['ci95'][0]:.3f}, " in md
    lines = scan_methods.methods_text(section)
    assert len(lines) == 1 + 2 * (3 + 2)  # per level: a line per method, one per difference
    assert all(len(line) < 200 for line in lines)
    assert lines[2].startswith("  scan slice model + weighted vote: balanced acc. ")
    assert lines[3].startswith("    difference: balanced acc. ") and "P(>0)" in lines[3]


def test_k_classes_compare_at_the_argmax_with_the_macro_auc():
    test, _ = _cohort(18, 1)
    val, _ = _cohort(12, 2, "v")
    rng = np.random.default_rng(4)
    for records in (test, val):
        records["label"] = np.repeat(np.arange(len(records["label"]) // 8) % 3, 8)
    p = rng.dirichlet(np.ones(3), len(test["label"])) + 0.5 * np.eye(3)[test["label"]]
    pv = rng.dirichlet(np.ones(3), len(val["label"])) + 0.5 * np.eye(3)[val["label"]]
    p, pv = p / p.sum(1, keepdims=True), pv / pv.sum(1, keepdims=True)
    task = tasks.MulticlassTask(3)
    names = (scan_methods.AVERAGE, scan_methods.WEIGHTED_VOTE)
    section = scan_methods.compare_methods(
        test, _methods(names, (p, p)), val, _methods(names, (pv, pv)), task, SETTINGS, False,
        ["a", "b", "c"],
    )  # fmt: skip
    assert section["levels"] == ["scan"] and section["threshold_method"] is None
    assert section["auc_metric"] == "roc_auc_ovr_macro"
    assert section["bootstrap"]["resampled_unit"] == "scan"
    entry = section["results"]["scan"][scan_methods.AVERAGE]
    assert entry["threshold"] is None
    expected = metrics.level_units(test, p, False)["scan"]
    assert entry["metrics"]["accuracy"]["value"] == pytest.approx(
        np.mean(np.argmax(expected.probs, 1) == expected.labels), abs=1e-12
    )
    assert "| slice model + average | 36 | - | " in scan_methods.methods_markdown(section)


def test_compare_refuses_mismatched_methods():
    (test, p), (val, pv) = _cohort(4, 1), _cohort(4, 2, "v")
    with pytest.raises(ValueError, match="expected the same names in the same order"):
        _compare({"a": p, "b": p}, {"b": pv, "a": pv}, test, val)
    with pytest.raises(ValueError, match=r"b on validation: probabilities of shape \(5,\)"):
        _compare({"a": p, "b": p}, {"a": pv, "b": pv[:5]}, test, val)
    with pytest.raises(ValueError, match=r"a on test: probabilities of shape \(32, 2\)"):
        _compare({"a": np.stack([1 - p, p], 1)}, {"a": pv}, test, val)


# ---- The attention strip. ----


def _strip(k: int, weights=None, channels: int = 0):
    rng = np.random.default_rng(k)
    shape = (k, 48, 48) + ((channels,) if channels else ())
    images = rng.integers(0, 255, shape, np.uint8)
    weights = rng.dirichlet(np.ones(k)) if weights is None else np.asarray(weights)
    positions = list(range(100, 100 + k))
    return scan_methods.attention_strip(images, weights, positions, "scan 148646 (attention)",
                                        0.93, "AD"), weights  # fmt: skip


def _assert_whole_square_tiles(fig) -> None:
    """Every drawn row of slices shows its slices whole (no part cut off) and square."""
    rows = [ax for ax in fig.axes if ax.images]
    assert rows
    for ax in rows:
        low, high = sorted(ax.get_ylim())
        assert low <= 0 and high >= 1, ax.get_ylim()  # a tile spans y 0..1
        box = ax.get_window_extent()
        x_scale = box.width / np.ptp(ax.get_xlim())
        assert x_scale == pytest.approx(box.height / (high - low), rel=0.02)


@pytest.mark.parametrize(
    "k, kind", [(24, "attention"), (5, "attention"), (2, "attention"), (9, "mean"), (16, "2.5D")]
)
def test_attention_strip_is_readable_as_its_file_and_as_a_card(k, kind):
    weights = np.linspace(-0.8, 1.1, k) if kind == "mean" else None
    fig, weights = _strip(k, weights, channels=3 if kind == "2.5D" else 0)
    cards = figures.card_figures(fig)
    assert len(cards) == 1
    assert cards[0].canvas.get_width_height() == figures.CARD_PX
    assert _problems(cards[0]) == []
    _assert_whole_square_tiles(cards[0])
    assert figures.to_tensorboard_image(fig).shape == (1, *figures.CARD_PX[::-1], 3)
    fig.set_dpi(FILE_DPI)
    FigureCanvasAgg(fig).draw()
    assert _problems(fig) == []
    _assert_whole_square_tiles(fig)
    top = int(np.argmax(weights))
    assert (
        f"highest weight {weights[top]:.2f} at slice {100 + top}"
        in fig._suptitle.get_text().replace("\n", " ")
    )
    shown = [t.get_text() for ax in fig.axes if ax.axison for t in ax.get_xticklabels()]
    assert len(shown) == min(k, 16) and str(100 + top) in shown
    assert [int(s) for s in shown] == sorted(int(s) for s in shown)  # in position order
    numbers = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert len(numbers) == min(k, 16) and f"{weights[top]:.2f}" in numbers


def test_strip_keeps_the_highest_weights_in_position_order():
    weights = np.r_[np.linspace(0.0, 0.1, 10), [0.9], np.linspace(0.2, 0.3, 10)]
    positions = np.arange(50, 71)[::-1]  # descending positions: the order is the positions'
    chosen = scan_methods.strip_slices(positions, weights, limit=4)
    assert sorted(chosen.tolist()) == [10, 18, 19, 20]
    assert positions[chosen].tolist() == sorted(positions[chosen].tolist())
    fig, _ = _strip(20)
    assert "the 16 highest of 20 slices" in fig._suptitle.get_text().replace("\n", " ")
    with pytest.raises(ValueError, match="3 slices, 2 weights and 3 positions"):
        scan_methods.attention_strip(np.zeros((3, 8, 8), np.uint8), np.ones(2), [1, 2, 3],
                                     "scan", 0.5, "AD")  # fmt: skip
