"""Preprocessing, augmentation and the Grain pipeline: determinism, sharding, exact eval counts."""

import dataclasses

import grain
import jax
import numpy as np
import pytest
from ml_collections import ConfigDict

from alz_jax.configs import convnext_t
from alz_jax.core import sharding
from alz_jax.data import augment, input_pipeline, preprocess
from alz_jax.run import specs
from tests.xla_flags import ONE_DEVICE_XLA_FLAGS


def test_pad_to_square_centres_with_background():
    image = np.full((240, 256), 7, np.uint8)
    square = preprocess.pad_to_square(image)
    assert square.shape == (256, 256)
    assert np.all(square[:8] == 0) and np.all(square[-8:] == 0) and np.all(square[8:248] == 7)
    out = preprocess.to_model_input(image, 64)
    assert out.shape == (64, 64, 1) and out.dtype == np.uint8


def test_decode_error_names_the_file():
    with pytest.raises(preprocess.DecodeError, match=r"scan_1\.jpeg"):
        preprocess.decode_image(b"not a jpeg", "scan_1.jpeg")
    # OpenCV raises its own error on an empty buffer: still a DecodeError naming the file.
    with pytest.raises(preprocess.DecodeError, match=r"scan_2\.jpeg: empty file"):
        preprocess.decode_image(b"", "scan_2.jpeg")


def test_random_resized_crop_box_within_bounds_and_scale():
    rng = np.random.default_rng(0)
    for _ in range(500):
        top, left, h, w = augment.random_resized_crop_box(rng, 256, 256, (0.8, 1.0), (3 / 4, 4 / 3))
        assert top >= 0 and top + h <= 256 and left >= 0 and left + w <= 256
        assert 0.75 <= h * w / 256**2 <= 1.01


def _records(n):
    """A source of n tiny encoded images whose pixel value encodes the record index."""
    import cv2

    out = []
    for i in range(n):
        _, buf = cv2.imencode(".png", np.full((24, 32), i % 251 + 1, np.uint8))
        out.append({"image": buf.tobytes(), "label": i % 2, "file_name": f"{i}.png"})
    return out


def _config(workers=0, total_steps=1):
    """The seed report's whole augmentation pipeline and Mixup/CutMix (configs/convnext_t.py) at
    32 px, mixing in groups of 4, over a run of `total_steps`."""
    reference = convnext_t.get_config()
    pipeline = specs.pipeline_spec(
        ConfigDict(
            {
                "data": {
                    "image_size": 32,
                    "num_workers": workers,
                    "eval_num_workers": workers,
                    "prefetch_buffer_size": 2,
                },
                "augment": reference.augment.to_dict(),
                "mix": dict(reference.mix.to_dict(), group_size=4),
                "optim": {"label_smoothing": 0.1},
                "model": {"num_classes": 2},
            }
        )
    )
    return dataclasses.replace(
        pipeline, mix=dataclasses.replace(pipeline.mix, total_steps=total_steps)
    )


@pytest.mark.parametrize("n", [37, 40, 1])
def test_eval_pads_and_masks_so_every_image_counts_once(n, monkeypatch):
    records = _records(n)
    global_batch = 16  # over 8 devices
    batches = list(input_pipeline.eval_dataset(records, _config(), global_batch))
    assert len(batches) == -(-n // global_batch)
    mask = np.concatenate([b["mask"] for b in batches])
    index = np.concatenate([b["index"] for b in batches])
    assert mask.sum() == n
    assert sorted(index[mask == 1]) == list(range(n))
    assert np.all(index[mask == 0] == -1)
    # The images are the records' own, in order (record i has pixel value i + 1; padding 0).
    images = np.concatenate([b["image"] for b in batches])
    centre = images[:, 16, 16, 0]
    np.testing.assert_array_equal(centre[mask == 1], index[mask == 1] % 251 + 1)
    assert np.all(centre[mask == 0] == 0)
    # And the batches are placeable on the 8-device mesh.
    mesh = sharding.make_mesh()
    arr = jax.make_array_from_process_local_data(sharding.batch_sharded(mesh), batches[-1]["image"])
    assert arr.shape[0] == global_batch and len(arr.sharding.device_set) == 8


def _global_batches(records, processes, steps, global_batch, monkeypatch, start_step=0):
    """Global batches as `processes` hosts would each load them with `train_dataset`."""
    parts = []
    for p in range(processes):
        monkeypatch.setattr(jax, "process_index", lambda p=p: p)
        monkeypatch.setattr(jax, "process_count", lambda: processes)
        ds = input_pipeline.train_dataset(
            records, _config(total_steps=10), global_batch, seed=5, start_step=start_step
        )
        it = iter(ds)
        parts.append([next(it) for _ in range(steps)])
    monkeypatch.undo()
    return [
        {k: np.concatenate([parts[p][s][k] for p in range(processes)]) for k in parts[0][s]}
        for s in range(steps)
    ]


def test_global_batches_do_not_depend_on_process_count(monkeypatch):
    records = _records(50)
    one = _global_batches(records, 1, 6, 16, monkeypatch)
    four = _global_batches(records, 4, 6, 16, monkeypatch)
    for a, b in zip(one, four, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
        np.testing.assert_array_equal(a["targets"], b["targets"])
    # Mixed while the schedule is on (steps < 5 of 10), not after 7.5.
    assert np.any(one[0]["targets"].max(1) < 0.95 - 1e-6)
    np.testing.assert_allclose(one[0]["targets"].sum(1), 1.0, rtol=1e-6)
    # Augmentation is on (flips, crops): batches differ from step to step.
    assert not np.array_equal(one[0]["image"], one[1]["image"])
    # Resuming at step 4 gives the same batches as running through.
    resumed = _global_batches(records, 1, 2, 16, monkeypatch, start_step=4)
    for got, want in zip(resumed, one[4:], strict=True):
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["targets"], want["targets"])
    late = _global_batches(records, 1, 1, 16, monkeypatch, start_step=8)[0]
    np.testing.assert_allclose(late["targets"].max(1), 0.95, rtol=1e-6)  # unmixed, smoothed


def test_training_epochs_cover_every_record_once_and_reshuffle():
    records = _records(48)
    ds = grain.MapDataset.source(records).seed(1).shuffle().repeat().map(lambda r: r["file_name"])
    epoch0 = [ds[i] for i in range(48)]
    epoch1 = [ds[i] for i in range(48, 96)]
    assert sorted(epoch0) == sorted(epoch1) == sorted(r["file_name"] for r in records)
    assert epoch0 != epoch1


def test_train_dataset_with_worker_processes_matches_in_process():
    records = _records(40)
    in_process = input_pipeline.train_dataset(records, _config(0, 9), 8, seed=0)
    with_workers = input_pipeline.train_dataset(records, _config(2, 9), 8, seed=0)
    a_it, b_it = iter(in_process), iter(with_workers)
    try:
        for _ in range(3):
            a, b = next(a_it), next(b_it)
            np.testing.assert_array_equal(a["image"], b["image"])
            np.testing.assert_array_equal(a["label"], b["label"])
            np.testing.assert_array_equal(a["targets"], b["targets"])
    finally:
        b_it.close()


def test_pixel_stats_exact():
    import cv2

    records = []
    for value in (0, 255):
        _, buf = cv2.imencode(".png", np.full((32, 32), value, np.uint8))
        records.append({"image": buf.tobytes(), "label": 0})
    stats = input_pipeline.pixel_stats(records, 32)
    assert stats["mean"] == pytest.approx(0.5) and stats["std"] == pytest.approx(0.5)


def test_stream_resumed_in_a_fresh_process_with_other_workers_is_identical():
    """A resume opens the stream at its step: in a fresh process, with another number of Grain
    workers (per-host tuning), the batches are those the uninterrupted run saw."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]

    def run(start, count, workers):
        result = subprocess.run(
            [sys.executable, "-m", "tests.resume_stream", str(start), str(count), str(workers)],
            cwd=repo, capture_output=True, text=True,
            env=dict(os.environ, XLA_FLAGS=ONE_DEVICE_XLA_FLAGS),
            timeout=300, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout.split()

    uninterrupted = run(0, 10, 2)
    rest = run(4, 6, 1)
    assert len(uninterrupted) == 10 and len(set(uninterrupted)) == 10
    assert rest == uninterrupted[4:]
