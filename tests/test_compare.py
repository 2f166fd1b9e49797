"""`python -m alz_jax.compare`: the paired subject bootstrap against its definition (brute force
with scikit-learn on repeated units), the refusal of different test sets, each perturbation's
effect and determinism, and, end to end on two tiny trained runs, the report's tables, costs and
robustness curves recomputed independently from the runs' own files."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from sklearn import metrics as skm

from alz_jax.data import preprocess
from alz_jax.evaluation import compare_stats as stats
from alz_jax.evaluation import robustness, tasks
from alz_jax.host.errors import UserError

REPO = Path(__file__).resolve().parents[1]
BINS = np.linspace(0.0, 1.0, 11)


# ---- An independent recomputation: units by dictionaries, metrics by scikit-learn. ----


def units(records: dict, probs: np.ndarray, subjects_known: bool = True) -> dict:
    """{level: (labels, probs, subject of each unit)}: scans average their slices, subjects
    their scans, a unit per (key, label)."""
    labels = np.asarray(records["label"], int)
    out = {"slice": (labels, probs, np.asarray(records["subject_id"], str))}
    groups: dict = {}
    for i, key in enumerate(zip(records["scan_id"], labels, strict=True)):
        groups.setdefault(key, []).append(i)
    scan_keys = sorted(groups)
    subject_of = {
        s: str(subj) for s, subj in zip(records["scan_id"], records["subject_id"], strict=True)
    }
    scan_probs = np.array([probs[groups[k]].mean(axis=0) for k in scan_keys])
    scan_labels = np.array([k[1] for k in scan_keys])
    scan_subjects = np.array([subject_of[k[0]] for k in scan_keys])
    out["scan"] = (scan_labels, scan_probs, scan_subjects)
    if subjects_known:
        by_subject: dict = {}
        for i, key in enumerate(zip(scan_subjects, scan_labels, strict=True)):
            by_subject.setdefault(key, []).append(i)
        keys = sorted(by_subject)
        out["subject"] = (
            np.array([k[1] for k in keys]),
            np.array([scan_probs[by_subject[k]].mean(axis=0) for k in keys]),
            np.array([k[0] for k in keys]),
        )
    return out


def ece(correct: np.ndarray, confidence: np.ndarray) -> float:
    """sum over 10 bins (lo, hi] (the first from 0) of count/N |observed - predicted|."""
    total = 0.0
    for b in range(10):
        lo, hi = BINS[b], BINS[b + 1]
        inside = (confidence > lo) & (confidence <= hi) if b else confidence <= hi
        if inside.any():
            total += inside.sum() * abs(correct[inside].mean() - confidence[inside].mean())
    return total / len(confidence)


def sk_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> dict:
    """The compared metrics by scikit-learn (ECE by its formula); NaN where undefined."""
    nan = float("nan")
    if probs.ndim == 1:
        predicted = (probs >= threshold).astype(int)
        both = len(set(labels.tolist())) == 2
        return {
            "accuracy": skm.accuracy_score(labels, predicted),
            "balanced_accuracy": skm.balanced_accuracy_score(labels, predicted) if both else nan,
            "roc_auc": skm.roc_auc_score(labels, probs) if both else nan,
            "ece": ece(labels.astype(float), probs),
        }
    k = probs.shape[1]
    predicted = probs.argmax(axis=1)
    every = len(set(labels.tolist())) == k
    return {
        "accuracy": skm.accuracy_score(labels, predicted),
        "balanced_accuracy": skm.balanced_accuracy_score(labels, predicted),
        "macro_f1": skm.f1_score(labels, predicted, average="macro", zero_division=0),
        "roc_auc_ovr_macro": skm.roc_auc_score(
            labels, probs, multi_class="ovr", labels=list(range(k))
        )
        if every
        else nan,
        "quadratic_kappa": skm.cohen_kappa_score(
            labels, predicted, labels=list(range(k)), weights="quadratic"
        ),
        "linear_kappa": skm.cohen_kappa_score(
            labels, predicted, labels=list(range(k)), weights="linear"
        ),
        "mae": skm.mean_absolute_error(labels, predicted),
        "within_one": float(np.mean(np.abs(labels - predicted) <= 1)),
        "ece": ece((predicted == labels).astype(float), probs.max(axis=1)),
    }


def brute_force(models: list, thresholds: list, n: int, seed: int, known: bool = True) -> list:
    """Per model, {level: {metric: (point, values over resamples)}}: subjects drawn as the
    documented scheme draws them (sorted, default_rng(seed).integers(0, S, (n, S))), each unit
    repeated as often as its subject was drawn."""
    per_model = [units(records, probs, known) for records, probs in models]
    subjects = np.unique(per_model[0]["slice"][2])
    draws = np.random.default_rng(seed).integers(0, len(subjects), size=(n, len(subjects)))
    out = []
    for levels, t in zip(per_model, thresholds, strict=True):
        result = {}
        for level, (labels, probs, subj) in levels.items():
            index = np.searchsorted(subjects, subj)
            point = sk_metrics(labels, probs, t.get(level, 0.5))
            values = {k: [] for k in point}
            for draw in draws:
                repeat = np.bincount(draw, minlength=len(subjects))[index]
                drawn = sk_metrics(
                    np.repeat(labels, repeat), np.repeat(probs, repeat, axis=0), t.get(level, 0.5)
                )
                for key, v in drawn.items():
                    values[key].append(v)
            result[level] = {k: (point[k], np.array(values[k])) for k in point}
        out.append(result)
    return out


def percentiles(values: np.ndarray) -> list:
    return list(np.percentile(values[~np.isnan(values)], [2.5, 97.5]))


def check_model(table: dict, expected: dict) -> None:
    for level, by_metric in expected.items():
        for name, (point, values) in by_metric.items():
            got = table[level][name]
            assert got["value"] == pytest.approx(point, abs=1e-9), (level, name)
            assert got["ci95"] == pytest.approx(percentiles(values), abs=1e-9), (level, name)


def check_paired(paired: dict, a: dict, b: dict) -> None:
    for level, by_metric in a.items():
        for name, (point_a, values_a) in by_metric.items():
            point_b, values_b = b[level][name]
            diff = values_b - values_a
            diff = diff[~np.isnan(diff)]
            sign = -1 if name in ("ece", "mae") else 1  # lower is better
            got = paired[level][name]
            assert got["observed"] == pytest.approx(point_b - point_a, abs=1e-9), (level, name)
            assert got["mean"] == pytest.approx(diff.mean(), abs=1e-9)
            assert got["ci95"] == pytest.approx(list(np.percentile(diff, [2.5, 97.5])), abs=1e-9)
            # Shares count resamples: a last-bit difference may move a tie by one.
            step = 1.0 / len(diff) + 1e-12
            assert got["share_b_better"] == pytest.approx(np.mean(sign * diff > 1e-12), abs=step)
            assert got["resamples"] == len(diff)


# ---- Synthetic predictions: the statistics without training. ----


def synthetic(rng: np.random.Generator, k: int = 2) -> tuple[dict, np.ndarray, np.ndarray]:
    """Records of 14 subjects (1-2 scans of 3 slices; one subject's label changes between its
    scans) and two models' probabilities with some signal."""
    rows = []
    for s in range(14):
        label = s % k
        for scan in range(1 + s % 2):
            scan_label = (label + 1) % k if s == 3 and scan == 1 else label
            rows += [
                (f"s{s}_{scan}_{i}.jpeg", f"{s}{scan}", f"S{s:02d}", scan_label) for i in range(3)
            ]
    records = {
        name: np.array([r[i] for r in rows], object)
        for i, name in enumerate(("file_name", "scan_id", "subject_id"))
    }
    records["label"] = np.array([r[3] for r in rows])
    n = len(rows)

    def make(strength):
        if k == 2:
            signal = strength * (records["label"] - 0.5)
            return np.clip(0.5 + signal + rng.normal(0, 0.3, n), 0.01, 0.99)
        logits = rng.normal(0, 1, (n, k))
        logits[np.arange(n), records["label"]] += strength * 3
        return np.exp(logits) / np.exp(logits).sum(1, keepdims=True)

    return records, make(0.4), make(0.8)


@pytest.mark.parametrize("k", [2, 3])
def test_paired_bootstrap_and_intervals_equal_their_definition(k):
    records, p_a, p_b = synthetic(np.random.default_rng(k), k)
    thresholds = {"slice": 0.45, "scan": 0.5, "subject": 0.55} if k == 2 else {}
    # Three ordered stages (argmax): the ordinal metrics against scikit-learn's too.
    task = tasks.OrdinalTask(k) if k > 2 else None
    a = stats.Predictions(records, p_a, True, thresholds, task=task)
    b = stats.Predictions(records, p_b, True, thresholds, task=task)
    n, seed = 40, 7
    expected_a, expected_b = brute_force(
        [(records, p_a), (records, p_b)], [thresholds] * 2, n, seed
    )
    check_model(stats.model_metrics(a, n, seed), expected_a)
    check_model(stats.model_metrics(b, n, seed), expected_b)
    paired = stats.paired_differences(a, b, n, seed)
    check_paired(paired, expected_a, expected_b)
    # The same subjects for both: B against itself differs by exactly 0 in every resample.
    self_paired = stats.paired_differences(b, b, n, seed)
    assert self_paired["subject"]["accuracy"]["ci95"] == [0.0, 0.0]
    assert self_paired["subject"]["accuracy"]["share_equal"] == 1.0
    # A shuffled predictions file is aligned back to the first's image order.
    order = np.random.default_rng(0).permutation(len(p_b))
    shuffled = b.reordered(order)
    _, realigned = stats.align([a, shuffled], ["a", "b"])
    assert stats.paired_differences(a, realigned, n, seed) == paired


def test_runs_tested_on_other_subjects_or_images_are_refused_by_name():
    records, p_a, p_b = synthetic(np.random.default_rng(0))
    a = stats.Predictions(records, p_a, True)
    other = {k: v.copy() for k, v in records.items()}
    other["subject_id"][other["subject_id"] == "S05"] = "S99"
    with pytest.raises(UserError, match=r"a and b were not evaluated on the same test images") as e:
        stats.align([a, stats.Predictions(other, p_b, True)], ["a", "b"])
    assert "subjects only in the first: S05" in str(e.value)
    assert "subjects only in the second: S99" in str(e.value)
    fewer = {k: v[3:] for k, v in records.items()}
    with pytest.raises(UserError, match=r"3 images only in the first \(s0_0_0.jpeg, "):
        stats.align([a, stats.Predictions(fewer, p_b[3:], True)], ["a", "b"])


# ---- Perturbations: each does what it says, from a key per image. ----


def flat(value: int, shape=(64, 80)) -> np.ndarray:
    return np.full(shape, value, np.uint8)


def test_noise_scale_and_gamma_change_pixels_as_specified():
    image = flat(128)
    noisy = robustness.perturb(image, "noise", 0.05, seed=0, index=3)
    diff = noisy.astype(float) - image
    assert diff.std() == pytest.approx(0.05 * 255, rel=0.05) and abs(diff.mean()) < 0.5
    np.testing.assert_array_equal(noisy, robustness.perturb(image, "noise", 0.05, 0, 3))
    assert not np.array_equal(noisy, robustness.perturb(image, "noise", 0.05, 0, 4))
    assert not np.array_equal(noisy, robustness.perturb(image, "noise", 0.05, 1, 3))
    # One noise pattern per image, scaled by the level.
    stronger = robustness.perturb(image, "noise", 0.1, 0, 3).astype(float) - image
    assert np.corrcoef(diff.ravel(), stronger.ravel())[0, 1] > 0.99
    ramp = np.tile(np.arange(256, dtype=np.uint8), (4, 1))
    np.testing.assert_array_equal(
        robustness.perturb(ramp, "scale", 0.75, 0, 0), np.rint(ramp * 0.75).astype(np.uint8)
    )
    assert robustness.perturb(ramp, "scale", 1.5, 0, 0).max() == 255  # clipped, not wrapped
    np.testing.assert_array_equal(
        robustness.perturb(ramp, "gamma", 2.0, 0, 0),
        np.rint(255 * (ramp / 255.0) ** 2).astype(np.uint8),
    )
    for name, clean in (
        ("noise", 0.0),
        ("scale", 1.0),
        ("gamma", 1.0),
        ("bias_field", 0.0),
        ("blur", 0.0),
        ("rotation", 0.0),
        ("jpeg", None),
    ):
        assert robustness.perturb(ramp, name, clean, 0, 0) is ramp


def test_bias_field_is_a_smooth_multiplicative_field_of_the_given_amplitude():
    image = flat(100, (96, 128))
    out = robustness.perturb(image, "bias_field", 0.3, seed=0, index=5)
    log_gain = np.log(out.astype(float) / image)
    # Rounding to uint8 moves a gain by at most 0.5/100 at this intensity.
    assert np.abs(log_gain).max() == pytest.approx(0.3, abs=0.01)
    assert abs(log_gain.mean()) < 0.01 + 0.3 * 0.1
    # Smooth: a cubic in x and y explains it (up to the rounding).
    y, x = np.meshgrid(np.linspace(-1, 1, 96), np.linspace(-1, 1, 128), indexing="ij")
    basis = np.stack([x**i * y**j for i in range(4) for j in range(4 - i)], -1).reshape(-1, 10)
    fit = np.linalg.lstsq(basis, log_gain.ravel(), rcond=None)[0]
    residual = log_gain.ravel() - basis @ fit
    assert residual.std() < 0.004 and log_gain.std() > 0.03
    np.testing.assert_array_equal(out, robustness.perturb(image, "bias_field", 0.3, 0, 5))
    other = np.log(robustness.perturb(image, "bias_field", 0.3, 0, 6).astype(float) / image)
    assert np.abs(other - log_gain).max() > 0.05  # another image, another field
    field = robustness.bias_field((96, 128), 0.15, robustness.image_rng(0, "bias_field", 5))
    assert np.log(field) == pytest.approx(log_gain / 2, abs=0.01)  # same shape, half strength


def test_blur_spreads_an_edge_by_sigma_and_jpeg_recompresses_at_the_quality():
    edge = np.zeros((40, 120), np.uint8)
    edge[:, 60:] = 200
    for sigma in (1.0, 2.0, 3.0):
        row = robustness.perturb(edge, "blur", sigma, 0, 0)[20].astype(float)
        step = np.diff(row)
        x = np.arange(len(step))
        mean = (step * x).sum() / step.sum()
        assert np.sqrt((step * (x - mean) ** 2).sum() / step.sum()) == pytest.approx(sigma, rel=0.1)
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 255, (64, 64), np.uint8), (0, 0), 2)
    errors, sizes = [], []
    for quality in (90, 50, 10):
        data = robustness.perturbed_bytes(image, "jpeg", quality, 0, 0)
        assert data[:2] == b"\xff\xd8"  # a JPEG file, as a re-compressed slice would be
        assert data == robustness.jpeg_bytes(image, quality)  # deterministic
        decoded = preprocess.decode_image(data)
        np.testing.assert_array_equal(decoded, robustness.perturb(image, "jpeg", quality, 0, 0))
        errors.append(np.abs(decoded.astype(float) - image).mean())
        sizes.append(len(data))
    assert errors[0] > 0 and errors[0] < errors[1] < errors[2]
    assert sizes[0] > sizes[1] > sizes[2]


def test_rotation_turns_a_marker_by_the_angle_either_way():
    image = np.zeros((65, 65), np.uint8)
    image[31:34, 51:54] = 255  # a marker 20 px right of the centre (32, 32)
    signs = set()
    for index in range(12):
        out = robustness.perturb(image, "rotation", 10.0, seed=0, index=index)
        ys, xs = np.nonzero(out > 60)
        weights = out[ys, xs].astype(float)
        cy, cx = (ys * weights).sum() / weights.sum(), (xs * weights).sum() / weights.sum()
        angle = np.degrees(np.arctan2(-(cy - 32), cx - 32))  # counter-clockwise positive
        assert abs(angle) == pytest.approx(10.0, abs=1.0)
        signs.add(np.sign(angle))
        np.testing.assert_array_equal(out, robustness.perturb(image, "rotation", 10.0, 0, index))
    assert signs == {-1.0, 1.0}


def test_perturbed_source_keys_images_by_position_and_passes_clean_records():
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (30, 40), np.uint8) for _ in range(5)]
    source = [
        {"image": cv2.imencode(".png", im)[1].tobytes(), "label": i % 2, "file_name": f"f{i}.png"}
        for i, im in enumerate(images)
    ]
    clean = robustness.PerturbedSource(source, "noise", 0.0, 0)
    assert clean[2] is source[2]
    noisy = robustness.PerturbedSource(source, "noise", 0.1, 0)
    forwards = [preprocess.decode_image(noisy[i]["image"]) for i in range(5)]
    backwards = [preprocess.decode_image(noisy[i]["image"]) for i in reversed(range(5))][::-1]
    for i in range(5):
        np.testing.assert_array_equal(forwards[i], backwards[i])
        np.testing.assert_array_equal(
            forwards[i], robustness.perturb(images[i], "noise", 0.1, 0, i)
        )
        assert noisy[i]["label"] == i % 2 and noisy[i]["file_name"] == f"f{i}.png"


def test_levels_and_perturbations_flags_are_checked():
    assert robustness.parse_levels("noise=0.05,0.1; jpeg=50") == {
        "noise": (0.05, 0.1),
        "jpeg": (50.0,),
    }
    assert robustness.curve_levels("jpeg", (10, 90)) == [None, 90, 10]
    assert robustness.curve_levels("scale", (1.5, 0.5)) == [0.5, 1.0, 1.5]
    for text, message in (
        ("nois=0.1", "NAME one of noise"),
        ("jpeg=0", "integer quality"),
        ("noise=2", r"sigma in \[0, 1\]"),
        ("blur=", "one or more"),
    ):
        with pytest.raises(UserError, match=message):
            robustness.parse_levels(text)
    assert robustness.parse_perturbations("none") == []
    assert robustness.parse_perturbations("jpeg,noise") == ["jpeg", "noise"]
    with pytest.raises(UserError, match="unknown fog"):
        robustness.parse_perturbations("noise,fog")


# ---- End to end: two tiny runs. ----

LEVELS = {
    "noise": (0.2,),
    "scale": (0.5,),
    "gamma": (2.0,),
    "bias_field": (0.5,),
    "blur": (2.0,),
    "jpeg": (10.0,),
    "rotation": (15.0,),
}
RESAMPLES = 60


@pytest.fixture(scope="module")
def two_runs(tiny_synthetic, tmp_path_factory):
    """Two tiny runs on one data set that differ in their host augmentation (rotations and
    erasing in a, none in b): different models from the same compiled train step (a different
    seed or size would compile everything twice, the larger part of this file's time). B's
    report is removed, so that compare evaluates it."""
    from alz_jax.run import train
    from tests import tiny_config

    root = tmp_path_factory.mktemp("compare")
    workdirs = []
    for name, augment in (("a", 0.5), ("b", 0.0)):
        config = tiny_config.get_config()
        config.data.manual_dir = str(tiny_synthetic[0])
        config.data.data_dir = str(root / "tfds")
        config.model.depths = tiny_config.TWO_STAGES["model.depths"]
        config.model.dims = tiny_config.TWO_STAGES["model.dims"]
        config.augment.rotate_prob = config.augment.erase_prob = augment
        config.num_train_steps = 2
        config.eval.bootstrap_samples = RESAMPLES
        train.train_and_evaluate(config, str(root / name))
        workdirs.append(root / name)
    (workdirs[1] / "report_test.json").unlink()
    return root, workdirs


def read_run(workdir: Path) -> tuple[dict, np.ndarray, dict]:
    with open(workdir / "predictions_test.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    records = {
        k: np.array([r[k] for r in rows], object) for k in ("file_name", "scan_id", "subject_id")
    }
    records["label"] = np.array([int(r["label"]) for r in rows])
    report = json.loads((workdir / "report_test.json").read_text())
    return records, np.array([float(r["prob_ad"]) for r in rows]), report


@pytest.mark.slow
def test_compare_two_runs_end_to_end(two_runs):
    from alz_jax.models import registry
    from alz_jax.run import compare_runs, run_record, specs

    root, (a, b) = two_runs
    settings = compare_runs.CompareSettings(
        resamples=RESAMPLES, seed=0, timed_steps=1, warmup_steps=1, levels=LEVELS
    )
    result = compare_runs.compare([str(a), str(b)], str(root / "out"), settings, ["a", "b"])
    out = root / "out"
    saved = json.loads((out / "compare.json").read_text())
    markdown = (out / "compare.md").read_text()
    assert saved["reference"] == "a" and [m["name"] for m in saved["models"]] == ["a", "b"]
    assert "| a | ConvNeXt depths (1, 1), dims (8, 16) |" in markdown and "cores" in markdown
    assert (b / "report_test.json").is_file()  # evaluated, as the report was missing
    for name in result["figures"].values():
        assert (out / name).is_file()
    assert set(LEVELS) <= {n.removeprefix("robustness_") for n in result["figures"]}
    for name in LEVELS:
        assert f"### {name}: " in markdown

    # Each model's table and the paired differences, from the runs' own files.
    (rec_a, p_a, rep_a), (rec_b, p_b, rep_b) = read_run(a), read_run(b)
    assert np.abs(p_a - p_b).max() > 1e-3  # two different models
    thresholds = [
        {lv: r[lv]["threshold"] for lv in ("slice", "scan", "subject")} for r in (rep_a, rep_b)
    ]
    expected = brute_force([(rec_a, p_a), (rec_b, p_b)], thresholds, RESAMPLES, 0)
    for model, want in zip(saved["models"], expected, strict=True):
        check_model(model["metrics"], want)
    check_paired(saved["paired_differences"]["b"], *expected)
    # With the report's seed and resample count, the intervals are the report's own.
    for level in ("slice", "scan", "subject"):
        for name in ("accuracy", "balanced_accuracy", "roc_auc"):
            got = saved["models"][0]["metrics"][level][name]["ci95"]
            assert got == pytest.approx(rep_a[level]["ci95"][name], abs=1e-9), (level, name)

    # Costs: the registry's counts, and measured rates and memory.
    for model, workdir in zip(saved["models"], (a, b), strict=True):
        spec = specs.resolve(run_record.load_config(workdir)).model
        cost = model["cost"]
        assert cost["params"] == registry.count_params(spec)
        assert cost["flops_per_image"] == registry.forward_flops_per_image(spec, 32)
        assert cost["batch"] == 16
        for step in ("train", "inference"):
            assert cost[step]["images_per_s"] > 0 and cost[step]["xla_bytes"] > 0

    # Robustness: every perturbation, clean level first in the data, equal to the clean metrics.
    rob = saved["robustness"]
    assert rob["clean_max_abs_diff"]["a"] < 1e-5
    for name, levels in LEVELS.items():
        entry = rob["perturbations"][name]
        assert len(entry["levels"]) == 2 and levels[0] in entry["levels"]
        clean = entry["clean_index"]
        for model in saved["models"]:
            curve = entry["curves"][model["name"]]
            for level in ("slice", "subject"):
                for metric in ("accuracy", "roc_auc", "ece"):
                    assert curve[level][metric][clean] == pytest.approx(
                        model["metrics"][level][metric]["value"], abs=1e-5
                    ), (name, metric)
            assert len(curve["slice"]["accuracy"]) == 2
        # The perturbed images reached the models: their calibration moved.
        moved = [entry["curves"][m]["slice"]["ece"] for m in ("a", "b")]
        assert any(e[1 - clean] != pytest.approx(e[clean], abs=1e-6) for e in moved), name


@pytest.mark.slow
def test_compare_refuses_runs_tested_on_other_subjects(two_runs, tmp_path):
    """A run whose test subjects differ (a copy of run a with one subject renamed) is refused
    by the command (exit 2), naming them."""
    _, (a, _) = two_runs
    other = tmp_path / "other"
    other.mkdir()
    shutil.copytree(a / "run", other / "run")
    shutil.copy(a / "report_test.json", other)
    text = (a / "predictions_test.csv").read_text()
    subject = text.splitlines()[1].split(",")[2]
    (other / "predictions_test.csv").write_text(text.replace(subject, "999_S_0001"))
    env = dict(os.environ, PYTHONPATH=str(REPO), XLA_FLAGS="", ALZ_JAX_HUGE_PAGES="off")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "alz_jax.compare",
            f"--workdirs={a},{other}",
            f"--out={tmp_path / 'out'}",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 2, run.stderr[-2000:]
    assert "not evaluated on the same test images" in run.stderr
    assert f"subjects only in the first: {subject}" in run.stderr
    assert "subjects only in the second: 999_S_0001" in run.stderr
    assert "Traceback" not in run.stderr and not (tmp_path / "out").exists()
    # A run without a report on the split, with evaluation not allowed: refused, saying what
    # to run.
    from alz_jax.run import compare_runs

    (other / "report_test.json").unlink()
    with pytest.raises(UserError, match=r"has no report_test.json .*\(python -m alz_jax.evaluate"):
        compare_runs.load_run(str(other), "other", "test", evaluate_missing=False)


def test_run_names_are_the_workdirs_last_folders_made_distinct():
    from alz_jax.run import compare_runs

    assert compare_runs.run_names(["runs/vit", "runs/convnext/"]) == ["vit", "convnext"]
    assert compare_runs.run_names(["x/fold_0", "y/fold_0"]) == ["x/fold_0", "y/fold_0"]
    with pytest.raises(UserError, match="names one workdir twice"):
        compare_runs.run_names(["runs/a", "runs/a"])


def test_settings_name_the_flag_that_is_wrong():
    from alz_jax.run import compare_runs

    with pytest.raises(UserError, match=r"^--resamples=0: expected >= 1\.$"):
        compare_runs.CompareSettings(resamples=0)
    with pytest.raises(UserError, match="Unknown perturbations"):
        compare_runs.CompareSettings(perturbations=("fog",))
    settings = compare_runs.CompareSettings(levels={"jpeg": (50.0,)})
    assert settings.curve_levels("jpeg") == [None, 50.0]
    assert settings.curve_levels("noise") == [0.0, 0.01, 0.02, 0.05, 0.1, 0.2]
