"""Mixup/CutMix: timm semantics, lam statistics, box geometry, targets, schedule, groups."""

import jax
import numpy as np
import pytest

from alz_jax.core import steps
from alz_jax.data import mixing

SMOOTH = 0.1


def _spec(**kwargs):
    return mixing.MixSpec(**{"label_smoothing": SMOOTH, "num_classes": 2, **kwargs})


def _group(n=8, size=16, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 1), dtype=np.uint8)
    labels = rng.integers(0, 2, n).astype(np.int32)
    return images, labels


def test_three_phase_schedule():
    spec = _spec(prob=0.8, total_steps=1000, explore_end=0.5, transition_end=0.75)
    values = [mixing.probability_at(s, spec) for s in (0, 499, 500, 625, 700, 750, 999)]
    np.testing.assert_allclose(values, [0.8, 0.8, 0.8, 0.4, 0.8 * 50 / 250, 0.0, 0.0])


def test_unmixed_targets_are_smoothed_once():
    images, labels = _group()
    out, targets, lam = mixing.mix_group(np.random.default_rng(0), images, labels, _spec(), 0.0)
    np.testing.assert_array_equal(out, images)
    assert np.all(lam == 1.0)
    expected = np.where(np.eye(2)[labels] == 1, 1 - SMOOTH + SMOOTH / 2, SMOOTH / 2)
    np.testing.assert_allclose(targets, expected, rtol=1e-6)
    # The soft-target loss on these equals the label-smoothed loss the unmixed path uses.
    logits = np.random.default_rng(1).normal(size=(8, 2)).astype(np.float32)
    import optax

    np.testing.assert_allclose(
        optax.softmax_cross_entropy(logits, targets),
        steps.cross_entropy(jax.numpy.asarray(logits), labels, SMOOTH),
        rtol=1e-5,
    )


def test_mixup_lam_statistics_and_blend():
    alpha = 0.8
    spec = _spec(mixup_alpha=alpha, cutmix_alpha=0.0, mode="elem")
    rng = np.random.default_rng(0)
    lams = []
    for _ in range(300):
        images, labels = _group(seed=int(rng.integers(1 << 30)))
        out, targets, lam = mixing.mix_group(rng, images, labels, spec, 1.0)
        partner = images[::-1].astype(np.float64)
        expected = lam[:, None, None, None] * images + (1 - lam[:, None, None, None]) * partner
        assert np.abs(out - expected).max() <= 0.5 + 1e-3  # rounded to uint8 (float32 blend)
        np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-6)
        lams.append(lam)
    lams = np.concatenate(lams)
    assert abs(lams.mean() - 0.5) < 0.02
    assert abs(lams.var() - 1 / (4 * (2 * alpha + 1))) < 0.01


def test_cutmix_box_geometry_and_lam_correction():
    h, w = 40, 50
    rng = np.random.default_rng(0)
    for _ in range(500):
        lam = rng.uniform(0.01, 0.99)
        y0, y1, x0, x1 = mixing.cutmix_box(rng, h, w, lam)
        assert 0 <= y0 <= y1 <= h and 0 <= x0 <= x1 <= w
        cut_h, cut_w = int(h * np.sqrt(1 - lam)), int(w * np.sqrt(1 - lam))
        assert y1 - y0 <= 2 * (cut_h // 2) and x1 - x0 <= 2 * (cut_w // 2)
        if y0 > 0 and y1 < h:  # unclipped: exactly 2 * (cut_h // 2) tall
            assert y1 - y0 == 2 * (cut_h // 2)
    spec = _spec(mixup_alpha=0.0, cutmix_alpha=1.0)
    images, labels = _group(n=6, size=32)
    for seed in range(50):
        out, targets, lam = mixing.mix_group(np.random.default_rng(seed), images, labels, spec, 1.0)
        from_partner = np.all(out == images[::-1], axis=-1) & np.any(images != images[::-1], -1)
        # Each image: box pixels from the partner, the rest its own; lam = uncovered fraction.
        for i in range(6):
            own = np.all(out[i] == images[i], axis=-1)
            assert np.all(own | from_partner[i])
        assert np.all(lam == lam[0])  # batch mode: one lam
        # Replay the draws: lam is corrected to the uncovered fraction of the drawn box.
        replay = np.random.default_rng(seed)
        replay.random()
        drawn = replay.beta(1.0, 1.0)
        y0, y1, x0, x1 = mixing.cutmix_box(replay, 32, 32, drawn)
        assert lam[0] == pytest.approx(1 - (y1 - y0) * (x1 - x0) / 32**2)
        np.testing.assert_array_equal(out[:, y0:y1, x0:x1], images[::-1, y0:y1, x0:x1])
        onehot = mixing.smooth_one_hot(labels, 2, SMOOTH)
        np.testing.assert_allclose(
            targets, lam[:, None] * onehot + (1 - lam[:, None]) * onehot[::-1], rtol=1e-6
        )


def test_pair_mode_shares_lam_within_pairs_and_elem_does_not():
    images, labels = _group(n=8)
    _, _, lam = mixing.mix_group(
        np.random.default_rng(3), images, labels, _spec(cutmix_alpha=0.0, mode="pair"), 1.0
    )
    np.testing.assert_array_equal(lam, lam[::-1])
    assert len(set(lam[:4])) == 4
    _, _, lam = mixing.mix_group(
        np.random.default_rng(3), images, labels, _spec(cutmix_alpha=0.0, mode="elem"), 1.0
    )
    assert len(set(lam)) == 8


@pytest.mark.parametrize("mode", mixing.MODES)
def test_global_batch_mixed_the_same_whatever_the_process_count(mode):
    spec = _spec(group_size=4, mode=mode, total_steps=100)
    global_batch = 16
    images, labels = _group(n=global_batch, size=8, seed=9)
    step = 7

    def mixed(processes):
        b = global_batch // processes
        parts = []
        for p in range(processes):
            mixer = mixing.BatchMixer(spec, seed=5, process_index=p, process_count=processes,
                                      per_process_batch=b)  # fmt: skip
            part = slice(p * b, (p + 1) * b)
            parts.append(mixer(step, {"image": images[part], "label": labels[part]}))
        return {k: np.concatenate([q[k] for q in parts]) for k in ("image", "targets")}

    one, four = mixed(1), mixed(4)
    np.testing.assert_array_equal(one["image"], four["image"])
    np.testing.assert_array_equal(one["targets"], four["targets"])
    assert not np.array_equal(one["image"], images)
