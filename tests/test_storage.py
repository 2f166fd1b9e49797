"""A gs:// workdir: the Python-level file handling goes through etils epath, run here against
epath's mock with gs:// redirected to a local folder (no cloud storage is reachable here)."""

import contextlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from etils import epath
from etils.epath import testing as epath_testing
from safetensors.numpy import save_file

from alz_jax.evaluation import figures, reports, tasks
from alz_jax.host import storage, writers
from alz_jax.host.errors import UserError
from alz_jax.models import convert
from alz_jax.run import exporting, run_record, specs

BUCKET = "gs://bucket/runs/r1"


@contextlib.contextmanager
def fake_gcs(root: Path):
    """epath's gs:// paths land under `root`; local paths are left alone."""

    def local(path) -> str:
        text = os.fspath(path)
        return str(root / text.removeprefix("gs://")) if text.startswith("gs://") else text

    def back(text: str) -> str:
        return "gs://" + text.removeprefix(f"{root}/") if text.startswith(str(root)) else text

    def one(original, path, *args, **kwargs):
        return original(local(path), *args, **kwargs)

    def two(original, src, dst, *args, **kwargs):
        return original(local(src), local(dst), *args, **kwargs)

    def glob(original, pattern):
        return [back(p) for p in original(local(pattern))]

    def walk(original, top, **kwargs):
        for folder, dirs, files in original(local(top), **kwargs):
            yield back(os.fspath(folder)), dirs, files

    with epath_testing.mock_epath(
        open=one, exists=one, isdir=one, listdir=one, makedirs=one, mkdir=one, remove=one,
        rmtree=one, stat=one, rename=two, replace=two, copy=two, glob=glob, walk=walk,
    ):  # fmt: skip
        yield


@pytest.fixture
def gcs(tmp_path, monkeypatch):
    """The fake bucket's folder; the working directory is elsewhere, so a path that bypassed
    epath (pathlib would turn gs://bucket into the relative gs:/bucket) lands in the cwd."""
    root, cwd = tmp_path / "gcs", tmp_path / "cwd"
    root.mkdir()
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    # With TensorFlow installed epath sends gs:// to tf.io.gfile, past the mock.
    monkeypatch.setattr(epath.gpath, "_is_tf_installed", lambda: False)
    with fake_gcs(root):
        yield root
    assert not any(cwd.iterdir()), f"written outside epath: {list(cwd.rglob('*'))}"


def test_paths_keep_urls_and_expand_home():
    assert str(storage.path("gs://b/x/y")) == "gs://b/x/y"
    assert str(storage.path("~/runs")) == os.path.expanduser("~/runs")
    assert storage.is_url("gs://b") and not storage.is_url("/tmp/gs:/b")


def test_run_record_and_metrics_on_a_gs_workdir(gcs):
    from alz_jax.configs import demo

    config = demo.get_config()
    for resume in (False, True):  # a start, then a resume that appends to starts.jsonl
        record = run_record.prepare(BUCKET, specs.resolve(config), "fp1",
                                    pixel_stats=lambda: {"mean": 0.25, "std": 0.5},
                                    has_checkpoint=resume)  # fmt: skip
        assert record["new"] is not resume
        run_record.write(BUCKET, config, record, manifest=lambda: {"train": ["s1"]})
    run_dir = gcs / "bucket/runs/r1/run"
    assert json.loads((run_dir / "record.json").read_text())["pixel_stats"]["mean"] == 0.25
    assert len((run_dir / "starts.jsonl").read_text().splitlines()) == 2
    assert run_record.load(BUCKET) == {k: v for k, v in record.items() if k != "new"}
    assert run_record.load_config(BUCKET).model.dims == list(config.model.dims)
    config.model.dims = (8, 16, 32, 64)
    with pytest.raises(UserError, match="different model"):
        run_record.prepare(BUCKET, specs.resolve(config), "fp1", pixel_stats=dict,
                           has_checkpoint=True)  # fmt: skip
    # Without a checkpoint, the stored record binds nothing: it is replaced.
    fresh = run_record.prepare(BUCKET, specs.resolve(config), "fp1", pixel_stats=dict,
                               has_checkpoint=False)  # fmt: skip
    assert fresh["new"] and list(fresh["identity"]["model"]["dims"]) == [8, 16, 32, 64]
    storage.path(BUCKET).mkdir(parents=True, exist_ok=True)
    writer = writers.JsonlWriter(storage.path(BUCKET) / "metrics.jsonl")
    writer.write_scalars(1, {"train/loss": 0.5})
    writer.write_scalars(2, {"train/loss": 0.25})
    assert writers.read_metrics(BUCKET) == {
        1: {"step": 1, "train/loss": 0.5}, 2: {"step": 2, "train/loss": 0.25}
    }  # fmt: skip


def test_reports_predictions_and_figures_on_a_gs_workdir(gcs):
    storage.path(BUCKET).mkdir(parents=True)
    records = {"file_name": np.array(["a.jpeg", "b.jpeg"], object),
               "scan_id": np.array(["s1", "s2"], object),
               "subject_id": np.array(["p1", "p2"], object), "label": np.array([0, 1])}  # fmt: skip
    path = f"{BUCKET}/predictions_test.csv"
    tasks.BinaryTask(2).write_predictions(
        records, np.array([0.2, 0.9]), np.array([-1.4, 2.2]), (), path
    )
    read, prob = tasks.BinaryTask(2).read_predictions(path)
    assert list(read["scan_id"]) == ["s1", "s2"] and list(prob) == [0.2, 0.9]
    reports.write_report({"split": "test", "accuracy": 1.0}, BUCKET)
    assert json.loads((gcs / "bucket/runs/r1/report_test.json").read_text())["accuracy"] == 1.0
    import matplotlib.figure

    figures.save(matplotlib.figure.Figure(figsize=(1, 1)), f"{BUCKET}/roc_test.png")
    assert (gcs / "bucket/runs/r1/roc_test.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("fmt", ["safetensors", "npz"])
def test_exported_weights_and_imported_weights_on_gs(gcs, fmt):
    out = storage.path(f"{BUCKET}/export")
    out.mkdir(parents=True)
    flat = {"stem.conv.kernel": np.arange(6, dtype=np.float32).reshape(1, 1, 2, 3)}
    metadata = {"weights": {"format": fmt, "dtype": "float32"}}
    exporting.write_weights(out, flat, metadata, fmt)
    (out / exporting.METADATA_FILE).write_text(json.dumps(metadata))
    loaded, meta = exporting.load(f"{BUCKET}/export")
    np.testing.assert_array_equal(loaded["stem.conv.kernel"], flat["stem.conv.kernel"])
    assert meta == metadata
    assert (gcs / "bucket/runs/r1/export" / exporting.WEIGHT_FILES[fmt]).exists()


def test_weight_file_read_from_gs(gcs):
    (gcs / "bucket/w").mkdir(parents=True)
    save_file({"features.0.0.weight": np.ones((2, 3, 4, 4), np.float32)},
              gcs / "bucket/w/convnext.safetensors")  # fmt: skip
    state = convert.load_state_dict("gs://bucket/w/convnext.safetensors")
    assert state["features.0.0.weight"].shape == (2, 3, 4, 4)
    assert isinstance(storage.path("gs://bucket/w"), epath.Path)
