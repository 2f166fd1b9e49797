"""Bags of slices (data/bags.py) and 2.5D input (data/neighbours.py): scan grouping, training
and evaluation bags, resumable draws, per-bag augmentation and mixing, neighbours as channels."""

import dataclasses

import cv2
import jax
import numpy as np
import pytest

from alz_jax.core import sharding
from alz_jax.data import augment, bags, input_pipeline, mixing, preprocess
from alz_jax.data.pipeline_spec import PipelineSpec
from alz_jax.host.errors import UserError

# Scans in order of first appearance, with slices listed out of slice order on purpose.
SCANS = {  # scan: (subject, label, slice count); first appearance in this order, not sorted
    "m": ("p0", 0, 5),
    "c": ("p0", 0, 2),
    "x": ("p1", 1, 7),
    "a": ("p2", 1, 3),
    "k": ("p3", 0, 1),
}


def _value(scan: int, slice_index: int) -> int:
    """The pixel value of one slice: scan and slice recoverable from the image."""
    return 10 + 30 * scan + 3 * slice_index


def _png(value: int, pattern: bool = False) -> bytes:
    image = np.full((16, 16), value, np.uint8)
    if pattern:  # an asymmetric mark, so flips and warps show
        image[2:6, 1:4] = 255
    return cv2.imencode(".png", image)[1].tobytes()


def _split(pattern=False, same=False):
    """(source, records) of a tiny split: record order interleaves scans, slices reversed;
    with `same`, every slice has the same pixels."""
    rows = [
        (s, scan, j)
        for s, (scan, (_, _, n)) in enumerate(SCANS.items())
        for j in reversed(range(n))
    ]
    rows = rows[::2] + rows[1::2]
    source, records = [], {k: [] for k in ("file_name", "scan_id", "subject_id", "label",
                                             "slice_index")}  # fmt: skip
    for s, scan, j in rows:
        subject, label, _ = SCANS[scan]
        name = f"{subject}_{scan}_{j:03d}.png"
        value = 100 if same else _value(s, j)
        source.append({"image": _png(value, pattern), "label": label, "file_name": name})
        for key, value in zip(records, (name, scan, subject, label, j), strict=True):
            records[key].append(value)
    records = {k: np.asarray(v, np.int64 if k in ("label", "slice_index") else object)
               for k, v in records.items()}  # fmt: skip
    return source, records


def _pipeline(**kwargs) -> PipelineSpec:
    return PipelineSpec(image_size=32, **kwargs)


def _strong() -> augment.AugmentSpec:
    return augment.AugmentSpec(
        crop_scale=(0.5, 1.0), hflip_prob=0.5, rotate_prob=1.0, rotate_deg=30.0
    )


def test_scan_index_groups_scans_in_slice_order():
    source, records = _split()
    scans = bags.ScanIndex.from_records(records, "train")
    assert list(scans.scan_ids) == ["m", "c", "x", "a", "k"]  # first appearance
    assert list(scans.subjects) == ["p0", "p0", "p1", "p2", "p3"]
    assert list(scans.labels) == [0, 0, 1, 1, 0]
    assert list(scans.counts) == [5, 2, 7, 3, 1] and scans.max_slices == 7
    for s, members in enumerate(scans.members):
        assert list(records["scan_id"][members]) == [scans.scan_ids[s]] * len(members)
        assert list(records["slice_index"][members]) == list(range(len(members)))
        assert list(scans.positions[members]) == list(range(len(members)))
    assert sorted(np.concatenate(scans.members)) == list(range(len(source)))


def test_scan_index_ties_broken_by_file_name():
    records = {
        "file_name": np.asarray(["b.png", "c.png", "a.png"], object),
        "scan_id": np.asarray(["x", "x", "x"], object),
        "subject_id": np.asarray(["p", "p", "p"], object),
        "label": np.asarray([1, 1, 1]),
        "slice_index": np.asarray([0, 0, 0]),
    }
    scans = bags.ScanIndex.from_records(records, "test")
    assert list(scans.members[0]) == [2, 0, 1]
    assert list(scans.positions) == [1, 2, 0]


def test_scan_index_refuses_slices_of_one_scan_with_two_labels():
    _, records = _split()
    records["label"][np.flatnonzero(records["scan_id"] == "x")[0]] = 0
    with pytest.raises(
        UserError,
        match=r"1 scan\(s\) of train have slices of more than one "
        r"label: scan x \(p1_x_\d+\.png, \.\.\.\) has labels \[0, 1\]",
    ):
        bags.ScanIndex.from_records(records, "train")
    _, records = _split()
    records["subject_id"][np.flatnonzero(records["scan_id"] == "a")[1]] = "p9"
    with pytest.raises(UserError, match=r"scan a \(p2_a_\d+\.png, \.\.\.\) has subjects "
                       r"\['p2', 'p9'\]"):  # fmt: skip
        bags.ScanIndex.from_records(records, "train")


def test_scan_index_refuses_a_layout_without_scans():
    _, records = _split()
    records["scan_id"] = records["file_name"].copy()
    with pytest.raises(
        UserError,
        match=r"every scan of validation has one slice \(18 images.*"
        r"does not know which slices form a scan\. Scan models \(model\.aggregator\) and 2\.5D "
        r"input \(data\.neighbours > 0\) need scans .* use a slice model "
        r"\(model\.aggregator=none, data\.neighbours=0\)",
    ):
        bags.ScanIndex.from_records(records, "validation")


def test_neighbour_index_is_clamped_at_the_scan_ends():
    _, records = _split()
    scans = bags.ScanIndex.from_records(records, "train")
    index = scans.neighbour_index(2)
    assert index.shape == (18, 5)
    m = scans.members[0]  # m, five slices
    np.testing.assert_array_equal(index[m[0]], m[[0, 0, 0, 1, 2]])
    np.testing.assert_array_equal(index[m[3]], m[[1, 2, 3, 4, 4]])
    np.testing.assert_array_equal(index[scans.members[4][0]], [scans.members[4][0]] * 5)


def _train(source, scans, pipeline, global_batch=4, steps=4, start_step=0, seed=3):
    it = iter(bags.train_bag_dataset(source, scans, pipeline, global_batch, seed=seed,
                                     start_step=start_step))  # fmt: skip
    return [next(it) for _ in range(steps)]


def _identify(image: np.ndarray) -> tuple[int, int]:
    """(scan, slice) of an unaugmented 32 px slice from its pixel value."""
    value = int(image[16, 16, 0]) - 10
    return value // 30, (value % 30) // 3


def test_training_bags_shapes_labels_and_draws():
    source, records = _split()
    scans = bags.ScanIndex.from_records(records, "train")
    pipeline = _pipeline(bags=True, bag_size=3, augment=augment.AugmentSpec(crop_scale=(1, 1)))
    batches = _train(source, scans, pipeline, global_batch=8, steps=5)
    for batch in batches:
        assert batch["image"].shape == (8, 3, 32, 32, 1) and batch["image"].dtype == np.uint8
        assert batch["label"].dtype == np.int32 and batch["label"].shape == (8,)
        np.testing.assert_array_equal(batch["slice_mask"], np.ones((8, 3), np.int32))
        for image, label, positions in zip(batch["image"], batch["label"], batch["positions"],
                                           strict=True):  # fmt: skip
            found = [_identify(x) for x in image]
            scan = found[0][0]
            assert {s for s, _ in found} == {scan} and label == scans.labels[scan]
            assert [j for _, j in found] == list(positions) == sorted(positions)
            if scans.counts[scan] >= 3:  # drawn without replacement
                assert len(set(positions)) == 3
            else:  # every slice, then repeats
                assert set(positions) == set(range(scans.counts[scan]))
    # Every scan is seen within an epoch's worth of bags (5 scans, 40 bags drawn).
    seen = {_identify(b)[0] for batch in batches for b in batch["image"][:, 0]}
    assert seen == set(range(5))
    # On the 8-device mesh every device holds whole bags: sharded along the bag axis only.
    placed = jax.make_array_from_process_local_data(
        sharding.batch_sharded(sharding.make_mesh()), batches[0]["image"]
    )
    assert {s.data.shape for s in placed.addressable_shards} == {(1, 3, 32, 32, 1)}


def test_training_bags_are_deterministic_and_resume_exactly(monkeypatch):
    source, records = _split()
    scans = bags.ScanIndex.from_records(records, "train")
    pipeline = _pipeline(bags=True, bag_size=4, augment=_strong())
    run = _train(source, scans, pipeline, steps=6)
    again = _train(source, scans, pipeline, steps=6)
    resumed = _train(source, scans, pipeline, steps=2, start_step=4)
    for got, want in zip(again + resumed, run + run[4:], strict=True):
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    assert not np.array_equal(run[0]["image"], run[1]["image"])
    other_seed = _train(source, scans, pipeline, steps=1, seed=4)[0]
    assert not np.array_equal(other_seed["image"], run[0]["image"])
    # Two processes each load half of every global batch: together the one-process batches.
    halves = []
    for p in range(2):
        monkeypatch.setattr(jax, "process_index", lambda p=p: p)
        monkeypatch.setattr(jax, "process_count", lambda: 2)
        halves.append(_train(source, scans, pipeline, steps=3))
    monkeypatch.undo()
    for s in range(3):
        np.testing.assert_array_equal(
            np.concatenate([halves[0][s]["image"], halves[1][s]["image"]]), run[s]["image"]
        )


def test_bag_size_zero_takes_the_longest_scan_and_balanced_draws_both_classes():
    source, records = _split()
    scans = bags.ScanIndex.from_records(records, "train")
    pipeline = _pipeline(bags=True, bag_size=0, balanced_sampling=True)
    batch = _train(source, scans, pipeline, global_batch=8, steps=1)[0]
    assert batch["image"].shape == (8, 7, 32, 32, 1)
    assert bags.bag_slices(pipeline, scans) == 7
    assert set(batch["label"]) == {0, 1}


@pytest.mark.parametrize("mode", ["bag", "slice"])
def test_bag_augmentation_shares_one_draw_per_bag(mode):
    source, records = _split(pattern=True, same=True)  # every slice the same picture
    scans = bags.ScanIndex.from_records(records, "train")
    pipeline = _pipeline(bags=True, bag_size=6, bag_augment=mode, augment=_strong())
    images = np.concatenate([b["image"] for b in _train(source, scans, pipeline, steps=3)])
    alike = [all(np.array_equal(bag[0], x) for x in bag[1:]) for bag in images]
    assert alike == [mode == "bag"] * 12


def test_repeated_slices_of_a_bag_get_identical_transforms_only_per_bag():
    source, records = _split(pattern=True)
    scans = bags.ScanIndex.from_records(records, "train")
    for mode, identical in (("bag", True), ("slice", False)):
        pipeline = _pipeline(bags=True, bag_size=6, bag_augment=mode, augment=_strong())
        pairs = 0
        for batch in _train(source, scans, pipeline, steps=4):
            for image, positions in zip(batch["image"], batch["positions"], strict=True):
                for j in np.flatnonzero(positions[1:] == positions[:-1]):
                    pairs += 1
                    assert np.array_equal(image[j], image[j + 1]) == identical, mode
        assert pairs > 0


def test_eval_bags_hold_every_record_once_padded_to_the_longest_scan(monkeypatch):
    source, records = _split()
    scans = bags.ScanIndex.from_records(records, "test")
    batches = list(bags.eval_bag_dataset(source, scans, _pipeline(bags=True), 4))
    assert len(batches) == 2  # 5 scans in global batches of 4
    cat = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    assert cat["image"].shape == (8, 7, 32, 32, 1)
    np.testing.assert_array_equal(cat["mask"], [1, 1, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(cat["index"], [0, 1, 2, 3, 4, -1, -1, -1])
    np.testing.assert_array_equal(cat["label"][:5], scans.labels)
    np.testing.assert_array_equal(cat["slice_mask"].sum(1), [5, 2, 7, 3, 1, 0, 0, 0])
    real = cat["records"][cat["records"] >= 0]
    assert sorted(real) == list(range(len(source)))
    np.testing.assert_array_equal(cat["records"] >= 0, cat["slice_mask"] == 1)
    # Each slice is its record's image; padding slices are zero.
    for image, recs in zip(cat["image"], cat["records"], strict=True):
        for slice_image, r in zip(image, recs, strict=True):
            want = 0 if r < 0 else _decoded(source[r])[0, 0]
            assert np.all(slice_image == want)
    # With a pinned K_max the shapes follow it; one below the longest scan is refused.
    pinned = next(iter(bags.eval_bag_dataset(source, scans, _pipeline(), 4, k_max=9)))
    assert pinned["image"].shape == (4, 9, 32, 32, 1)
    with pytest.raises(ValueError, match="k_max 6 < the 7 slices"):
        bags.eval_bag_dataset(source, scans, _pipeline(), 4, k_max=6)


def _decoded(record) -> np.ndarray:
    return preprocess.decode_image(record["image"])


def test_two_and_a_half_d_channels_are_the_neighbour_slices():
    source, records = _split()
    scans = bags.ScanIndex.from_records(records, "test")
    pipeline = _pipeline(neighbours=1)
    index = scans.neighbour_index(1)
    batches = list(input_pipeline.eval_dataset(source, pipeline, 8, neighbour_index=index))
    images = np.concatenate([b["image"] for b in batches])
    rows = np.concatenate([b["index"] for b in batches])
    assert images.shape[-1] == 3
    for image, r in zip(images, rows, strict=True):
        if r < 0:
            continue
        for c in range(3):
            want = preprocess.to_model_input(_decoded(source[index[r, c]]), 32)[..., 0]
            np.testing.assert_array_equal(image[..., c], want)
    # Clamped at the ends: the first slice of m repeats itself below, its neighbour above.
    first = int(np.flatnonzero(rows == scans.members[0][0])[0])
    assert list(images[first, 16, 16]) == [_value(0, 0), _value(0, 0), _value(0, 1)]
    # Bags get the same channels.
    bag = next(iter(bags.eval_bag_dataset(source, scans, pipeline, 8)))
    assert bag["image"].shape == (8, 7, 32, 32, 3)
    assert list(bag["image"][2, 6, 16, 16]) == [_value(2, 5), _value(2, 6), _value(2, 6)]
    # Without the neighbour index, 2.5D is refused with what it needs.
    with pytest.raises(
        ValueError,
        match=r"data.neighbours = 1 needs the scan structure.*"
        r"ScanIndex.neighbour_index\(1\)",
    ):
        input_pipeline.eval_dataset(source, pipeline, 8)


def test_two_and_a_half_d_training_augments_every_channel_alike():
    source, records = _split(pattern=True)
    scans = bags.ScanIndex.from_records(records, "train")
    spec = _strong()
    index = scans.neighbour_index(2)
    transform = input_pipeline.TrainTransform(32, spec)
    record = input_pipeline.with_neighbours(source, _pipeline(neighbours=2), index)[4]
    image = transform(record, np.random.default_rng(11))["image"]
    assert image.shape == (32, 32, 5)
    for c in range(5):
        alone = augment.augment(
            np.random.default_rng(11), preprocess.pad_to_square(_decoded(source[index[4, c]])),
            32, spec,
        )  # fmt: skip
        np.testing.assert_array_equal(image[..., c], alone[..., 0])
    # And a training stream of 2.5D slices and of 2.5D bags has 5 channels.
    pipeline = _pipeline(neighbours=2, augment=spec)
    slices = next(iter(input_pipeline.train_dataset(source, pipeline, 8, seed=0,
                                                    neighbour_index=index)))  # fmt: skip
    assert slices["image"].shape == (8, 32, 32, 5)
    bag = _train(source, scans, dataclasses.replace(pipeline, bags=True, bag_size=2), steps=1)[0]
    assert bag["image"].shape == (4, 2, 32, 32, 5)


def test_slice_pipeline_without_neighbours_is_unchanged():
    """The images today's code produced for these records, recomputed by hand."""
    source, _ = _split(pattern=True)
    batches = list(input_pipeline.eval_dataset(source, _pipeline(), 8))
    images = np.concatenate([b["image"] for b in batches])[:18]
    for image, record in zip(images, source, strict=True):
        np.testing.assert_array_equal(image, preprocess.to_model_input(_decoded(record), 32))
    spec = _strong()
    record = source[3]
    got = input_pipeline.TrainTransform(32, spec)(record, np.random.default_rng(5))["image"]
    want = augment.augment(
        np.random.default_rng(5), preprocess.pad_to_square(_decoded(record)), 32, spec
    )
    np.testing.assert_array_equal(got, want)


def test_mixing_mixes_whole_bags():
    source, records = _split()
    scans = bags.ScanIndex.from_records(records, "train")
    mix = mixing.MixSpec(prob=1.0, mode="elem", group_size=4, num_classes=2, total_steps=100)
    plain = _pipeline(bags=True, bag_size=3, augment=augment.AugmentSpec(crop_scale=(1, 1)))
    a = _train(source, scans, plain, steps=4)
    b = _train(source, scans, dataclasses.replace(plain, mix=mix), steps=4)
    kinds = []
    for x, y in zip(a, b, strict=True):
        assert y["targets"].shape == (4, 2)
        np.testing.assert_allclose(y["targets"].sum(1), 1.0, rtol=1e-6)
        for i in range(4):
            kinds.append(_mix_kind(y["image"][i], x["image"][i], x["image"][3 - i]))
    assert "cutmix" in kinds and "mixup" in kinds


def _mix_kind(mixed: np.ndarray, own: np.ndarray, partner: np.ndarray) -> str:
    """'cutmix' (one box from the partner bag, the same on every slice), 'mixup' (one lam for
    every slice of the bag) or 'none'; fails on anything else."""
    diff = np.any(mixed != own, axis=(0, 3))
    if not diff.any():
        return "none"
    rows, cols = np.flatnonzero(diff.any(1)), np.flatnonzero(diff.any(0))
    box = np.zeros_like(diff)
    box[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1] = True
    if np.array_equal(mixed[:, box], partner[:, box]) and np.array_equal(
        mixed[:, ~box], own[:, ~box]
    ):
        return "cutmix"
    # Flat slices: lam from each slice whose own and partner values differ enough.
    o, p, m = (v[:, 16, 16, 0].astype(float) for v in (own, partner, mixed))
    far = np.abs(o - p) >= 20
    lam = (m[far] - p[far]) / (o[far] - p[far])
    assert far.any() and np.ptp(lam) < 0.05, (o, p, m)
    return "mixup"


def test_memory_is_stated_up_front():
    assert bags.bag_batch_bytes(32, 16, 224, 1) == 32 * 16 * 224 * 224 + 4 * 32 * 33
    _, records = _split()
    scans = bags.ScanIndex.from_records(records, "train")
    line = bags.describe_bags(_pipeline(bags=True, bag_size=4), 8, scans)
    assert line.startswith("bags: 8/step x 4 slices of 32x32x1 = 32 images, 0.0 MB per host ")
    assert line.endswith("; 5 train scans of 1-7 slices, 3 under 4")
    assert len(line) + 52 < 200  # with absl's prefix ("I1205 14:32:11.535195 ... train.py:212] ")


def test_pipeline_spec_checks_the_bag_settings():
    with pytest.raises(UserError, match=r"config.data.bag_augment = 'scan': expected slice\|bag"):
        _pipeline(bag_augment="scan")
    with pytest.raises(UserError, match=r"config.data.bag_size = -1: expected an integer >= 0"):
        _pipeline(bag_size=-1)
    with pytest.raises(UserError, match=r"config.data.neighbours = 1.5: expected an integer"):
        _pipeline(neighbours=1.5)
    assert _pipeline(neighbours=2).channels == 5


def test_training_bags_with_worker_processes_match_in_process():
    source, records = _split()
    scans = bags.ScanIndex.from_records(records, "train")
    pipeline = _pipeline(bags=True, bag_size=3, augment=_strong())
    want = _train(source, scans, pipeline, steps=2)
    it = iter(bags.train_bag_dataset(source, scans, dataclasses.replace(pipeline, num_workers=2),
                                     4, seed=3))  # fmt: skip
    try:
        for batch in want:
            got = next(it)
            for key in batch:
                np.testing.assert_array_equal(got[key], batch[key])
    finally:
        it.close()


def test_an_empty_split_has_no_scans_and_no_eval_bags():
    _, records = _split()
    empty = {k: v[:0] for k, v in records.items()}
    scans = bags.ScanIndex.from_records(empty, "validation")
    assert len(scans) == 0 and scans.max_slices == 0 and scans.neighbour_index(1).shape == (0, 3)
    assert list(bags.eval_bag_dataset([], scans, _pipeline(), 4)) == []
    with pytest.raises(ValueError, match="the source has 18 records, the ScanIndex of validation"):
        bags.eval_bag_dataset(_split()[0], scans, _pipeline(), 4)
