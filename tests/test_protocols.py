"""Protocols: no subject in two splits, class balance, k-fold coverage, the slice window."""

import numpy as np
import pytest
from ml_collections import ConfigDict

from alz_jax.data import dataset, input_pipeline, protocols


def _pooled(n_subjects=60, seed=0):
    """Per-record arrays of a fake pooled data set: 1-4 scans per subject, 5 slices per scan."""
    rng = np.random.default_rng(seed)
    rows = {k: [] for k in ("subject_id", "scan_id", "label", "slice_index", "builder_split")}
    scan = 0
    for s in range(n_subjects):
        label = int(rng.random() < 0.4)
        for visit in range(int(rng.integers(1, 5))):
            scan += 1
            # Subject 0 changes diagnosis between visits.
            visit_label = 1 - label if (s == 0 and visit == 1) else label
            start = int(rng.integers(60, 80)) + (10 * visit_label)
            for k in range(5):
                rows["subject_id"].append(f"{s:03d}_S_{s:04d}")
                rows["scan_id"].append(str(scan))
                rows["label"].append(visit_label)
                rows["slice_index"].append(start + k)
                rows["builder_split"].append("train" if s % 4 else "test")
    return {k: np.asarray(v, dtype=object if k in ("subject_id", "scan_id", "builder_split")
                           else np.int64) for k, v in rows.items()}  # fmt: skip


def _config(**kwargs):
    base = {"protocol": "resplit", "split_seed": 3, "resplit_fractions": (0.6, 0.2, 0.2),
            "num_folds": 4, "fold": 0, "validation_fraction": 0.25, "slice_range": ""}  # fmt: skip
    return ConfigDict({**base, **kwargs})


def _subjects(pooled, positions):
    return {split: set(pooled["subject_id"][pos]) for split, pos in positions.items()}


@pytest.mark.parametrize("protocol", ["resplit", "kfold"])
def test_no_subject_in_two_splits_and_every_record_used(protocol):
    pooled = _pooled()
    positions = protocols.assign(pooled, _config(protocol=protocol))
    subjects = _subjects(pooled, positions)
    assert not subjects["train"] & subjects["validation"]
    assert not subjects["train"] & subjects["test"]
    assert not subjects["validation"] & subjects["test"]
    used = np.sort(np.concatenate(list(positions.values())))
    np.testing.assert_array_equal(used, np.arange(len(pooled["label"])))


def test_resplit_class_balance_within_one_subject_per_class():
    pooled = _pooled(n_subjects=97)
    strata = protocols.subject_strata(pooled["subject_id"], pooled["scan_id"], pooled["label"])
    fractions = {"train": 0.6, "validation": 0.2, "test": 0.2}
    split_of = protocols.split_by_subject(strata, fractions, seed=1)
    for label in (0, 1):
        members = [s for s, c in strata.items() if c == label]
        for split, fraction in fractions.items():
            count = sum(split_of[s] == split for s in members)
            assert abs(count - fraction * len(members)) <= 1, (label, split)
    assert split_of == protocols.split_by_subject(strata, fractions, seed=1)  # deterministic
    assert split_of != protocols.split_by_subject(strata, fractions, seed=2)


def test_kfold_each_subject_tested_exactly_once_and_folds_balanced():
    pooled = _pooled()
    tested = []
    for fold in range(4):
        positions = protocols.assign(pooled, _config(protocol="kfold", fold=fold))
        tested.append(_subjects(pooled, positions)["test"])
    all_subjects = set(pooled["subject_id"])
    assert set().union(*tested) == all_subjects
    assert sum(len(t) for t in tested) == len(all_subjects)
    strata = protocols.subject_strata(pooled["subject_id"], pooled["scan_id"], pooled["label"])
    for label in (0, 1):
        per_fold = [sum(strata[s] == label for s in t) for t in tested]
        assert max(per_fold) - min(per_fold) <= 1


def test_label_changing_subject_stays_whole_with_majority_stratum():
    pooled = _pooled()
    subject = "000_S_0000"
    positions = protocols.assign(pooled, _config())
    where = {split for split, pos in positions.items() if subject in set(pooled["subject_id"][pos])}
    assert len(where) == 1
    labels = pooled["label"][pooled["subject_id"] == subject]
    assert len(set(labels)) == 2


def test_slice_range_auto_keeps_the_common_window():
    pooled = _pooled()
    lo, hi = protocols.common_slice_window(pooled["slice_index"], pooled["label"])
    assert lo == pooled["slice_index"][pooled["label"] == 1].min()
    assert hi == pooled["slice_index"][pooled["label"] == 0].max()
    positions = protocols.assign(pooled, _config(slice_range="auto"))
    kept = np.concatenate(list(positions.values()))
    assert np.all((pooled["slice_index"][kept] >= lo) & (pooled["slice_index"][kept] <= hi))
    outside = (pooled["slice_index"] < lo) | (pooled["slice_index"] > hi)
    assert len(kept) == int((~outside).sum()) and outside.any()
    positions = protocols.assign(pooled, _config(slice_range="70,72"))
    kept = np.concatenate(list(positions.values()))
    assert set(pooled["slice_index"][kept]) == {70, 71, 72}


def test_official_protocol_keeps_the_builder_splits():
    pooled = _pooled()
    positions = protocols.assign(pooled, _config(protocol="official"))
    for split in ("train", "test"):
        assert np.all(pooled["builder_split"][positions[split]] == split)


def test_resplit_on_a_built_data_set_pools_both_folders(tiny_synthetic, tmp_path):
    root, _ = tiny_synthetic
    config = ConfigDict({
        "manual_dir": str(root), "data_dir": str(tmp_path), "synthetic_seed": None,
        "validation_fraction": 0.1, "split_seed": 0, "protocol": "resplit",
        "resplit_fractions": (0.6, 0.2, 0.2), "num_folds": 5, "fold": 0, "slice_range": "",
        "image_size": 32,
    })  # fmt: skip
    data = dataset.prepare(config)
    manifest = data.manifest()
    splits = ("train", "validation", "test")
    for a in splits:
        for b in splits:
            if a < b:
                assert not set(manifest[a]["subjects"]) & set(manifest[b]["subjects"])
    assert sum(data.num_examples(s) for s in splits) == len(data.pooled["label"])
    train_from = {name.split("/")[0] for name in data.records("train")["file_name"]}
    assert train_from == {"train", "test"}  # both folders pooled
    assert data.report_metadata()["test_subjects_also_in_train"] == 0
    # Records line up with the source and normalisation follows this training set.
    source = data.source("train")
    assert source[3]["file_name"].decode() == data.records("train")["file_name"][3]
    stats = input_pipeline.pixel_stats(source, 32)
    official = dataset.prepare(ConfigDict(dict(config.to_dict(), protocol="official")))
    assert stats != input_pipeline.pixel_stats(official.source("train"), 32)
