"""Cross-split near-duplicate check (tfds_builders/mri_slices/near_duplicates.py) on phantom
slices of known subjects: an image split is flagged, a subject split is not, the flags agree with
subject IDs, and the matrix searches equal brute force."""

import json

import cv2
import numpy as np
import pytest

from alz_jax.tfds_builders.mri_slices import near_duplicates as nd
from alz_jax.tfds_builders.mri_slices import synthetic

# Independent of the calibration's sets (calibrate(seed) renders from seeds seed, seed + 1000 and
# seed + 2000, with seed 0..2 in docs/leakage.md).
SEED = 2026


@pytest.fixture(scope="module")
def phantoms():
    """40 subjects x 1 scan x 20 contiguous slices, severities 0.1..0.9, JPEG round-tripped, half
    of them resized to Kaggle's 176x208; with their signatures."""
    data = nd.phantom_set(SEED, subjects=40, slices=20, resize_share=0.5)
    return data, nd.signatures(data.images)


def _each_image_own_group(n: int) -> np.ndarray:
    # A collection without subject or scan IDs: every image is its own group.
    return np.array([f"img{i}" for i in range(n)])


def test_phantom_set_is_what_the_checks_assume(phantoms):
    data, sig = phantoms
    shapes = {image.shape for image in data.images}
    assert shapes == {(synthetic.HEIGHT, synthetic.WIDTH), (208, 176)}
    assert len(data.images) == 800 and len(np.unique(data.subject)) == 40
    assert sig.shape == (800, nd.DIMS) and sig.dtype == np.float32 and nd.DIMS <= 1024


def test_split_by_image_is_flagged(phantoms):
    _, sig = phantoms
    train, test = nd.split_by_image(len(sig), np.random.default_rng(1))
    pairs = nd.pairs_above(sig, _each_image_own_group(len(sig)), nd.DEFAULT_THRESHOLD)
    summary = nd.cross_split_summary(test, train, pairs, nd.DEFAULT_THRESHOLD)
    assert summary["test_images"] == len(test) == 120
    assert summary["share"] >= 0.9, summary
    # The same answer from best_matches.
    best, _ = nd.best_matches(sig[test], sig[train])
    assert np.mean(best >= nd.DEFAULT_THRESHOLD) == pytest.approx(summary["share"])


def test_split_by_subject_is_not_flagged(phantoms):
    data, sig = phantoms
    train, test = nd.split_by_subject(data.subject, np.random.default_rng(2))
    assert not set(data.subject[train]) & set(data.subject[test])
    pairs = nd.pairs_above(sig, _each_image_own_group(len(sig)), nd.DEFAULT_THRESHOLD)
    summary = nd.cross_split_summary(test, train, pairs, nd.DEFAULT_THRESHOLD)
    assert summary["test_images"] == len(test) > 0
    assert summary["share"] <= 0.1, summary


def test_flags_agree_with_subject_ids(phantoms):
    data, sig = phantoms
    rng = np.random.default_rng(3)
    subjects = rng.permutation(np.unique(data.subject))
    train_only, test_only, shared = subjects[:20], subjects[20:30], subjects[30:]
    # Shared subjects: each slice goes to train or test at random (other slices in train).
    coin = rng.random(len(sig)) < 0.5
    in_shared = np.isin(data.subject, shared)
    train = np.flatnonzero(np.isin(data.subject, train_only) | (in_shared & coin))
    test = np.flatnonzero(np.isin(data.subject, test_only) | (in_shared & ~coin))
    pairs = nd.pairs_above(sig, _each_image_own_group(len(sig)), nd.DEFAULT_THRESHOLD)
    flagged = nd.matched_test(test, train, pairs)
    agreement = nd.subject_agreement(data.subject[test], flagged, set(data.subject[train]))
    shared_images = int(np.isin(data.subject[test], shared).sum())
    assert agreement["shared_subject_images"] == shared_images > 50
    assert agreement["flagged_shared"] + agreement["shared_not_flagged"] == shared_images
    assert agreement["flag_rate_shared"] >= 0.9, agreement
    assert agreement["flag_rate_not_shared"] <= 0.1, agreement
    json.dumps(agreement)  # stored in reports as it is


def test_pairs_above_equals_brute_force_and_skips_own_group(phantoms):
    data, sig = phantoms
    pick = np.flatnonzero(np.isin(data.subject, np.arange(8)))  # 160 images of 8 scans
    small = np.concatenate([sig[pick], sig[pick[:1]]])  # plus a copy under a new scan ID
    groups = np.concatenate([data.scan[pick].astype(str), ["copy"]])
    sims = small.astype(np.float64) @ small.T.astype(np.float64)
    for wanted in (0.5, nd.DEFAULT_THRESHOLD):
        # Nudged until no similarity is so close to it that float32 rounding could decide it.
        threshold = next(
            t for t in wanted + 1e-5 * np.arange(100) if not np.any(np.abs(sims - t) < 1e-5)
        )
        i, j = np.nonzero(np.triu(sims >= threshold, k=1))
        keep = groups[i] != groups[j]
        expected = np.stack([i[keep], j[keep]], axis=1)
        for chunk in (7, 64, 1024):
            pairs = nd.pairs_above(small, groups, threshold, chunk=chunk)
            assert pairs.dtype == np.int64 and pairs.shape[1] == 2
            np.testing.assert_array_equal(pairs, expected)
            assert np.all(pairs[:, 0] < pairs[:, 1])
            assert np.all(groups[pairs[:, 0]] != groups[pairs[:, 1]])
    # Slices of one scan are alike but never paired; the copy is paired with its original.
    assert [0, len(small) - 1] in nd.pairs_above(small, groups).tolist()
    assert nd.pairs_above(small[:20], groups[:20], 0.0).shape == (0, 2)  # one scan: nothing
    assert nd.pairs_above(np.zeros((0, nd.DIMS)), np.array([], str)).shape == (0, 2)


def test_best_matches_equals_brute_force(phantoms):
    _, sig = phantoms
    rng = np.random.default_rng(4)
    order = rng.permutation(len(sig))
    query, reference = sig[order[:37]], sig[order[37:400]]
    sims = query.astype(np.float64) @ reference.T.astype(np.float64)
    for chunk in (5, 1024):
        best, index = nd.best_matches(query, reference, chunk=chunk)
        assert best.dtype == np.float32 and index.dtype == np.int64
        np.testing.assert_array_equal(index, np.argmax(sims, axis=1))
        np.testing.assert_allclose(best, sims.max(axis=1), atol=1e-5)
    best, index = nd.best_matches(query[:0], reference)
    assert best.shape == index.shape == (0,)
    with pytest.raises(ValueError, match="reference"):
        nd.best_matches(query, reference[:0])


def test_signature_of_any_size_and_intensity(phantoms):
    data, _ = phantoms
    image = next(im for im in data.images if im.shape == (synthetic.HEIGHT, synthetic.WIDTH))
    base = nd.signature(image)
    assert base.shape == (nd.DIMS,) and base.dtype == np.float32
    assert np.linalg.norm(base) == pytest.approx(1.0, abs=1e-5) and abs(base.mean()) < 1e-6
    for size in ((176, 208), (128, 128), (512, 480)):
        resized = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        assert float(base @ nd.signature(resized)) > 0.97, size
    brighter = np.clip(image.astype(np.float32) * 1.2, 0, 255).astype(np.uint8)
    assert float(base @ nd.signature(brighter)) > 0.98
    assert float(base @ nd.signature(image[:, :, None])) == pytest.approx(1.0, abs=1e-6)
    assert not np.any(nd.signature(np.full((240, 256), 37, np.uint8)))  # blank: matches nothing
    with pytest.raises(ValueError, match="HxW"):
        nd.signature(np.zeros((4, 4, 3), np.uint8))


def test_summaries_count_what_they_say():
    # Positions 0..5: train 0, 1, 2; test 3, 4, 5. Pairs: 3-0 (cross), 1-4 (cross, reversed),
    # 2-1 (train-train), 5-? none.
    pairs = np.array([[0, 3], [1, 4], [1, 2]])
    summary = nd.cross_split_summary(np.array([3, 4, 5]), np.array([0, 1, 2]), pairs, 0.9)
    assert summary == {
        "method": nd.METHOD,
        "threshold": 0.9,
        "test_images": 3,
        "test_images_with_train_match": 2,
        "share": pytest.approx(2 / 3),
    }
    empty = nd.cross_split_summary(np.array([], int), np.array([0]), pairs, 0.9)
    assert empty["test_images"] == 0 and empty["share"] == 0.0
    agreement = nd.subject_agreement(
        np.array(["a", "a", "b", "c"]), np.array([True, False, True, False]), {"a"}
    )
    assert agreement == {
        "test_images": 4,
        "shared_subject_images": 2,
        "flagged_shared": 1,
        "flagged_not_shared": 1,
        "shared_not_flagged": 1,
        "flag_rate_shared": 0.5,
        "flag_rate_not_shared": 0.5,
    }
    assert (
        nd.subject_agreement(np.array(["b"]), np.array([False]), set())["flag_rate_shared"] is None
    )


def test_calibrate_small():
    report = nd.calibrate(seed=5, subjects=10, slices=8, splits=2)
    assert report["method"] == nd.METHOD and report["images"] == 80
    positives, negatives = report["positives_by_image_split"], report["negatives_by_subject_split"]
    assert positives["min"] > negatives["max"]  # separated, even on this small set
    assert negatives["max"] < report["threshold"] < positives["min"]
    assert report["flag_rate_by_image"] == 1.0 and report["flag_rate_by_subject"] == 0.0
    assert set(report["robustness_at_default"]) == {
        "intensity",
        "misregistration",
        "second_visit",
        "aligned",
    }
    assert "DEFAULT_THRESHOLD" in nd.format_table(report)
    json.dumps(report)
