"""Progress in long phases, and console lines under 200 characters.

Every long phase logs `what: done/total (p%), rate unit/s, ETA h:mm:ss` lines through one helper
(tfds_builders/mri_slices/progress.py): the audit reading images, the near-duplicate search, the
TFDS build, the predictions over a split and the bootstrap; a run waiting for another run's
build says whose and for how long. The tests lower the interval to 0 so that every step logs.
The near-duplicate report's lines and the model summary stay under 200 characters.
"""

import fcntl
import json
import logging
import re
import subprocess
import sys
import threading
import time

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds
from flax import nnx

from alz_jax.configs import convnext_t, demo
from alz_jax.core import sharding
from alz_jax.data import dataset, input_pipeline
from alz_jax.evaluation import bootstrap, metrics, reports
from alz_jax.host import logs
from alz_jax.models import registry
from alz_jax.run import progress as run_progress
from alz_jax.run import specs
from alz_jax.tfds_builders.mri_slices import (
    Builder,
    api,
    audit,
    config_for,
    near_duplicates,
    progress,
)

# absl's prefix ('I1205 04:03:03.543208 140358245731200 train.py:223] ') on a logged line.
ABSL_PREFIX = 52
LINE = re.compile(r"^(?P<what>.+): (?P<done>\d+)/(?P<total>\d+) \((?P<pct>\d+)%\), "
                  r"(?P<rate>[\d.e+]+M?) (?P<unit>\w+)/s, ETA \d+:\d\d:\d\d$")  # fmt: skip


@pytest.fixture
def every_step(monkeypatch):
    """Progress lines at every update."""
    monkeypatch.setattr(progress, "INTERVAL_S", 0.0)


def _lines(caplog, what: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(what + ":")]


def _assert_progress(lines: list[str], what: str, total: int, unit: str) -> None:
    """Periodic lines with count/total, share, rate and ETA, counting up, then the last line."""
    assert lines, f"no progress line for {what}"
    periodic = [LINE.match(line) for line in lines[:-1]]
    assert all(periodic), lines
    assert {m["what"] for m in periodic} == {what} and {m["unit"] for m in periodic} == {unit}
    counts = [int(m["done"]) for m in periodic]
    assert counts == sorted(counts) and counts[0] > 0 and counts[-1] < total
    assert {int(m["total"]) for m in periodic} == {total}
    last = rf"{re.escape(what)}: {total}/{total} in \d+:\d\d:\d\d, [\d.e+]+M? {unit}/s"
    assert re.fullmatch(last, lines[-1]), lines[-1]
    assert max(len(line) for line in lines) + ABSL_PREFIX <= 200


def test_progress_line_counts_rate_and_eta():
    logged, now = [], [100.0]
    counter = progress.Progress("Reading", 10, interval_s=5, log=logged.append,
                                clock=lambda: now[0])  # fmt: skip
    for _ in range(4):
        now[0] += 1.0
        counter.update()
    assert logged == []  # 4 s: under the interval
    now[0] += 1.0
    counter.update()
    assert logged == ["Reading: 5/10 (50%), 1 images/s, ETA 0:00:05"]
    for _ in range(5):
        now[0] += 0.5
        counter.update()
    counter.finish()
    assert logged[1:] == ["Reading: 10/10 in 0:00:08, 1.33 images/s"]
    quiet = progress.Progress("Short", 3, interval_s=5, log=logged.append, clock=lambda: 0.0)
    list(quiet.track(range(3)))
    assert len(logged) == 2  # a phase shorter than the interval says nothing
    big = progress.Progress("Search", 3_000_000_000, unit="pairs", log=logged.append,
                            clock=lambda: 20.0)  # fmt: skip
    big.done, big._start = 1_200_000_000, 0.0
    assert big.line() == "Search: 1200.0M/3000.0M (40%), 60.0M pairs/s, ETA 0:00:30"


def _jpeg(pixels: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", pixels)
    assert ok
    return buf.tobytes()


def test_audit_logs_its_reading_of_every_image(adni_like, every_step, caplog):
    root, spec = adni_like
    caplog.set_level(logging.INFO)
    api.audit_folder(api.parse_layout(root))
    total = sum(spec.images.values())
    _assert_progress(_lines(caplog, "Audit: reading images"), "Audit: reading images", total,
                     "images")  # fmt: skip


def test_near_duplicate_search_logs_progress_and_finds_exactly_the_brute_force_pairs(
    every_step, caplog
):
    rng = np.random.default_rng(7)
    sig = rng.standard_normal((300, near_duplicates.DIMS)).astype(np.float32)
    for i, j in ((3, 250), (40, 41), (100, 299), (7, 8)):  # planted near pairs
        sig[j] = sig[i] + 0.2 * rng.standard_normal(near_duplicates.DIMS).astype(np.float32)
    sig /= np.linalg.norm(sig, axis=1, keepdims=True)
    groups = np.arange(300) // 2  # (40, 41) share a group: never paired
    caplog.set_level(logging.INFO)
    pairs = near_duplicates.pairs_above(sig, groups, 0.9, chunk=64)
    sims = sig @ sig.T
    i, j = np.nonzero(np.triu(sims >= 0.9, k=1) & (groups[:, None] != groups[None, :]))
    assert pairs.tolist() == np.stack([i, j], axis=1).tolist() == [[3, 250], [7, 8], [100, 299]]
    lines = _lines(caplog, "Near-duplicate search")
    _assert_progress(lines, "Near-duplicate search", 300 * 301 // 2, "pairs")
    # The first block of 64 rows against columns 0..299: 64 * 300 - 64 * 63 / 2 pairs.
    assert lines[0].startswith(f"Near-duplicate search: {64 * 300 - 64 * 63 // 2}/45150 (")


def test_the_filtered_pair_search_equals_brute_force_near_the_threshold():
    """The same pairs as comparing every pair (the search before the filter): on random
    signatures with planted near pairs (the filter gives way to the full comparison), and on
    signatures that lie near a few directions (as brain slices do, the filter spares most
    columns) with many pairs just above and just below the threshold."""
    rng = np.random.default_rng(3)
    sig = rng.standard_normal((3000, near_duplicates.DIMS)).astype(np.float32)
    planted = rng.choice(3000, (40, 2), replace=False)
    for (a, b), noise in zip(planted, np.linspace(0.35, 0.65, 40), strict=True):
        sig[b] = sig[a] + noise * rng.standard_normal(near_duplicates.DIMS).astype(np.float32)
    sig /= np.linalg.norm(sig, axis=1, keepdims=True)
    sims = sig @ sig.T
    i, j = np.nonzero(np.triu(sims >= 0.9, k=1))
    assert 10 < len(i) < 40  # some planted pairs reach the threshold, some don't
    assert (
        near_duplicates.pairs_above(sig, np.arange(3000)).tolist()
        == np.stack([i, j], axis=1).tolist()
    )

    basis = rng.standard_normal((12, near_duplicates.DIMS))
    prototypes = rng.standard_normal((40, 12))
    # Sorted by prototype, as file names sort the slices of a scan together.
    of = np.sort(rng.integers(0, 40, 2000))
    coefficients = prototypes[of] + 0.4 * rng.standard_normal((2000, 12))
    sig = coefficients @ basis + 0.3 * rng.standard_normal((2000, near_duplicates.DIMS))
    sig = (sig / np.linalg.norm(sig, axis=1, keepdims=True)).astype(np.float32)
    groups = np.arange(2000) // 3
    sims = sig @ sig.T
    for threshold in (0.8, 0.9):
        i, j = np.nonzero(np.triu(sims >= threshold, k=1) & (groups[:, None] != groups[None, :]))
        near = np.abs(sims[np.triu_indices(2000, 1)] - threshold) < 0.005
        assert len(i) > 1000 and near.sum() > 1000  # the boundary is well populated
        for chunk in (50, 256):
            pairs = near_duplicates.pairs_above(sig, groups, threshold, chunk=chunk)
            assert pairs.tolist() == np.stack([i, j], axis=1).tolist()


def test_the_build_logs_the_examples_written(adni_like, tmp_path, every_step, caplog):
    root, spec = adni_like
    caplog.set_level(logging.INFO)
    builder = Builder(data_dir=str(tmp_path), config=config_for(0.25, 0),
                      file_format="array_record")  # fmt: skip
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=root))
    total = sum(spec.images.values())
    _assert_progress(_lines(caplog, "Build: examples written"), "Build: examples written", total,
                     "examples")  # fmt: skip


class _Split:
    """A split of `n` tiny JPEG records, as the prepared data set offers it."""

    def __init__(self, n: int):
        image = _jpeg(np.full((8, 8), 50, np.uint8))
        self.records = [{"image": image, "label": i % 2, "file_name": f"{i}.jpg"} for i in range(n)]

    def num_examples(self, split: str) -> int:
        return len(self.records)

    def source(self, split: str) -> list[dict]:
        return self.records


def test_predictions_over_a_split_log_progress(every_step, caplog):
    caplog.set_level(logging.INFO)
    predictors = {"plain": (None, lambda params, images: images.mean(axis=(1, 2, 3)))}
    out = reports.predict_split_multi(_Split(20), "test", predictors,
                                      input_pipeline.PipelineSpec(image_size=32), 8,
                                      sharding.make_mesh())  # fmt: skip
    assert out["plain"].shape == (20,)
    lines = _lines(caplog, "Predictions on test")
    _assert_progress(lines, "Predictions on test", 20, "images")
    assert [LINE.match(line)["done"] for line in lines[:-1]] == ["8", "16"]


def test_the_bootstrap_logs_progress(every_step, caplog):
    rng = np.random.default_rng(0)
    units = {
        level: metrics.Units(keys=list(range(12)), labels=np.arange(12) % 2,
                             probs=rng.uniform(size=12), subjects=np.arange(12) // 2)
        for level in ("slice", "scan")
    }  # fmt: skip
    caplog.set_level(logging.INFO)

    def score(level, u, w):
        return {"mean": (w * u.probs).sum(axis=1) / w.sum(axis=1)}

    bootstrap.intervals(units, score, n_samples=50, seed=0, chunk=10)
    lines = _lines(caplog, "Bootstrap")
    _assert_progress(lines, "Bootstrap", 2 * 50, "resamples")
    assert [LINE.match(line)["done"] for line in lines[:2]] == ["10", "20"]


def test_a_run_waiting_for_another_runs_build_says_whose_and_how_long(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(progress, "INTERVAL_S", 0.05)  # a line every 50 ms of the 300 ms wait
    build_dir = tmp_path / "adni-0123"
    build_dir.mkdir()
    holder = {"pid": 4242, "host": "node7", "started": "2026-12-05T07:00:00+00:00"}
    other = open(build_dir / "build.lock", "a")  # noqa: SIM115 (held across the thread)
    fcntl.flock(other, fcntl.LOCK_EX)
    other.write(json.dumps(holder))
    other.flush()

    def release():
        time.sleep(0.3)
        other.truncate(0)
        fcntl.flock(other, fcntl.LOCK_UN)
        other.close()

    thread = threading.Thread(target=release)
    thread.start()
    caplog.set_level(logging.INFO)
    with dataset._build_lock(build_dir, tmp_path):
        lines = [r.getMessage() for r in caplog.records]
        # This run now holds the lock, and says so in the file for the next one.
        assert json.loads((build_dir / "build.lock").read_text())["pid"] > 0
    thread.join()
    who = f"PID 4242 on host node7, started {holder['started']}"
    what = f"the data set build in {build_dir} by {who}"
    assert lines[0] == f"Waiting for {what}."
    still = [line for line in lines if line.startswith("Still waiting")]
    pattern = rf"Still waiting for {re.escape(what)}; waited \d:\d\d:\d\d so far\."
    assert still and all(re.fullmatch(pattern, line) for line in still)
    assert len(still) <= 20  # one per interval, not one per poll
    assert re.fullmatch(rf"Waited 0:00:0\d for {re.escape(what)}\.", lines[-1])
    assert (build_dir / "build.lock").read_text() == ""  # emptied on release


def test_the_near_duplicate_lines_stay_under_200_characters():
    entry = {
        "method": near_duplicates.METHOD, "threshold": 0.9, "test_images": 17301,
        "test_images_with_train_match": 16044, "share": 16044 / 17301,
        "held_out_split": "test",
        "agreement_with_subject_ids": {
            "test_images": 17301, "shared_subject_images": 15980, "flagged_shared": 15511,
            "flagged_not_shared": 533, "shared_not_flagged": 469,
            "flag_rate_shared": 15511 / 15980, "flag_rate_not_shared": 533 / 1321,
        },
    }  # fmt: skip
    lines = audit.format_near_duplicates(entry)
    assert lines[0] == ("test images with a near-identical image in train: 16044 of 17301 "
                        "(92.7%; bandpass-v1, threshold 0.9)")  # fmt: skip
    assert lines[1] == (
        "  agreement with subject IDs: flagged 15511 of 15980 test images whose subject is in "
        "train (97.1%), 533 of 1321 whose subject is not (40.3%)"
    )
    assert lines[2].startswith("Warning: the test folder shares brains with train")
    assert max(len(line) for line in lines) <= 200


def test_the_model_summary_lines_stay_under_200_characters():
    for config in (convnext_t.get_config(), demo.get_config()):
        run = specs.resolve(config)
        plan = run.plan(505)
        lines = run_progress.model_lines(run, plan)
        assert lines[0] == f"Model {registry.title(run.model)}, compute {run.model.dtype}"
        assert lines[1].startswith(f"Train step {run.step.impl}, 1 microbatch(es) per step, "
                                   "weights raw")  # fmt: skip
        assert re.search(r"\d+ device\(s\) of 1 process\(es\)$", lines[1])
        params = nnx.to_pure_dict(nnx.state(registry.abstract(run.model), nnx.Param))
        lines.append(run_progress.parameter_overview(params))
        assert max(len(line) for line in lines) + ABSL_PREFIX <= 200


def test_tfds_custom_config_warning_is_dropped_from_the_console():
    """TFDS prints a custom builder config (every layout but ADNI's default) in one ~600
    character warning; logs.setup's filter drops it and keeps other TFDS warnings."""
    log_filter = logs._LibraryInfoFilter()  # what logs.setup puts on the console's handlers

    def record(message: str) -> logging.LogRecord:
        path = "/venv/site-packages/tensorflow_datasets/core/dataset_builder.py"
        return logging.LogRecord("absl", logging.WARNING, path, 1414, message, (), None)

    config = "AdniConfig(name='oasis_f4412a30_val0p1_seed0', " + "x" * 500 + ")"
    assert not log_filter.filter(record(f"Using custom data configuration: {config}"))
    assert log_filter.filter(record("Some other TFDS warning"))
    # Also at absl's logger, for processes that never run logs.setup (Grain's workers).
    absl_logger = logging.getLogger("absl")
    assert not absl_logger.filter(record(f"Using custom data configuration: {config}"))
    assert absl_logger.filter(record("Some other TFDS warning"))


def test_importing_the_log_setup_keeps_absls_own_logger():
    """logs.py filters at absl's logger: importing it first must not leave a plain Logger named
    'absl' for absl to adopt, which would name absl's wrapper as the caller of every library
    line and let Orbax's routine lines (hundreds of characters) through the library filter."""
    check = (
        "import logging\n"
        "import alz_jax.host.logs\n"
        "from absl import logging as absl_logging\n"
        "assert type(logging.getLogger('absl')) is absl_logging.ABSLLogger\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                          check=False, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"
