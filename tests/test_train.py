"""End to end on 8 fake devices: train, checkpoint, report, run record, resume, refusals."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import jax
import numpy as np
import pytest
import tensorflow as tf

from alz_jax.core import checkpointing, sharding, steps
from alz_jax.evaluation import tasks
from alz_jax.host import writers
from alz_jax.host.errors import UserError
from alz_jax.run import assembly, cross_validation, prediction, specs, train
from alz_jax.run.saved_run import SavedRun
from alz_jax.tfds_builders.mri_slices.layouts import registry
from tests import interrupt
from tests import tiny_config as tiny_config_file
from tests.xla_flags import ONE_DEVICE_XLA_FLAGS

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds_train")


def tiny_config(manual_dir, data_dir, **overrides):
    config = tiny_config_file.get_config()
    config.data.manual_dir = str(manual_dir)
    config.data.data_dir = str(data_dir)
    tiny_config_file.override(config, {**tiny_config_file.TWO_STAGES, **overrides})
    return config


def final_state(workdir, config):
    run = specs.resolve(config)
    manager = checkpointing.make_manager(workdir, run.checkpoint)
    plan = run.plan(steps_per_epoch=1)
    parts = assembly.assemble(run, plan, sharding.make_mesh(), {"mean": 0.0, "std": 1.0})
    return checkpointing.restore(manager, manager.latest_step(), parts.abstract_state())


def read_events(workdir) -> dict:
    """{(run, tag): [summary values]} of every event file under the session folder in
    <workdir>/tensorboard (run '' is the session folder itself)."""
    found = {}
    root = workdir / "tensorboard" / writers.session_name(workdir)
    for events in root.rglob("events.out.tfevents*"):
        run = events.parent.relative_to(root).as_posix().replace(".", "")
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            for value in event.summary.value:
                found.setdefault((run, value.tag), []).append((event.step, value))
    return found


def check_tensorboard(workdir, config):
    """The event files as TensorBoard reads them: curves that overlay (the same tag in the
    train, validation and per-weights runs), the loss definitions, the winner of each
    validation, the config as text, and the HParams trial with its metrics."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = read_events(workdir)
    for run in ("train", "validation", "validation_raw", "validation_ema", "validation_swa"):
        assert (run, "loss") in events, (run, sorted(events))
    for key in [("train", t) for t in ("accuracy", "learning_rate", "grad_norm", "data_wait_s",
                                       "images_per_sec", "steps_per_sec", "compile_time_s",
                                       "augmented")] + [
        ("validation", t) for t in ("scan_accuracy", "scan_roc_auc", "selected_weights", "roc",
                                    "confusion_scan", "selection")] + [
        ("test", t) for t in ("roc", "confusion", "reliability", "gradcam", "accuracy",
                              "scan_accuracy", "subject_accuracy")] + [("", "config")]:  # fmt: skip
        assert key in events, (key, sorted(events))
    described = {k: v[0][1].metadata.summary_description for k, v in events.items()}
    assert "label smoothing" in described[("train", "loss")]
    assert "negative log-likelihood" in described[("validation", "loss")]
    # Each validation names its winner: 0 raw, 1 ema, 2 swa, and says so in text.
    winners = [v.tensor.float_val or tf.make_ndarray(v.tensor)
               for _, v in events[("validation", "selected_weights")]]  # fmt: skip
    assert len(winners) == config.num_train_steps // config.eval_every_steps
    text = tf.make_ndarray(events[("validation", "selection")][0][1].tensor).item().decode()
    assert text.startswith("Step 2: **") and "weights selected by loss" in text
    table = tf.make_ndarray(events[("", "config")][0][1].tensor).item().decode()
    assert "| `optim.learning_rate` | `0.002` |" in table
    # HParams: the session names the trial after the workdir, the compared fields come first,
    # and its metrics are the validation and test scalars written above.
    plugin = {}
    for (_, tag), values in events.items():
        if tag.startswith("_hparams_/"):
            plugin[tag] = plugin_data_pb2.HParamsPluginData.FromString(
                values[0][1].metadata.plugin_data.content
            )
    session = plugin["_hparams_/session_start_info"].session_start_info
    assert session.group_name == writers.session_name(workdir) == workdir.name
    experiment = plugin["_hparams_/experiment"].experiment
    names = [h.name for h in experiment.hparam_infos]
    assert sorted(names)[:6] == ["01_model", "02_image_size", "03_batch_size",
                                 "04_learning_rate", "05_epochs", "06_weight_decay"]  # fmt: skip
    for metric in experiment.metric_infos:
        assert (metric.name.group, metric.name.tag) in events, metric


def check_predict(workdir, manual_dir, report, folder):
    """`predict` on a folder of test images, a colour PNG of another size and a corrupt file:
    the same probabilities as the test report's, with the calibration stored at validation."""
    folder.mkdir()
    test_images = sorted(Path(manual_dir).rglob("test/*/*.jpeg"))[:6]
    for path in test_images:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "corrupt.jpeg").write_bytes(b"\xff\xd8 not a jpeg")
    (folder / "empty.png").write_bytes(b"")
    colour = np.random.default_rng(0).integers(0, 255, (50, 70, 3), np.uint8)
    cv2.imwrite(str(folder / "colour.png"), colour)
    result = prediction.run(str(workdir), [str(folder)])
    assert [e["file"] for e in result["errors"]] == [
        str(folder / n) for n in ("corrupt.jpeg", "empty.png")
    ]
    assert len(result["images"]) == 7
    # Stored with the checkpoint at validation, the same as the report computed again.
    stored = checkpointing.restore_selection(
        checkpointing.make_manager(workdir, specs.resolve(train_config(workdir)).checkpoint),
        report["checkpoint_step"],
    )["calibration"][report["weights"]]
    assert result["calibration"]["thresholds"] == pytest.approx(report["calibration"]["thresholds"])
    assert stored["thresholds"] == pytest.approx(report["calibration"]["thresholds"])
    assert stored["temperature"] == pytest.approx(report["calibration"]["temperature"])
    records, prob = tasks.BinaryTask(2).read_predictions(workdir / "predictions_test.csv")
    expected = {Path(f).name: p for f, p in zip(records["file_name"], prob, strict=True)}
    for row in result["images"]:
        if row["file"].endswith(".jpeg"):
            assert row["prob_ad"] == pytest.approx(expected[Path(row["file"]).name], abs=1e-5)
    scans = {r["scan_id"] for r in result["images"] if r["scan_id"]}
    assert {s["scan_id"] for s in result["scans"]} == scans
    # The command: every readable image printed, the corrupt one named, exit status 1.
    run = subprocess.run(
        [sys.executable, "-m", "alz_jax.predict", f"--workdir={workdir}", str(folder),
         f"--output={folder.parent / 'predicted.csv'}"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr[-2000:]
    assert "UNREADABLE" in run.stdout and "corrupt.jpeg" in run.stdout
    assert "7 images predicted, 2 unreadable" in run.stdout and "empty file" in run.stdout
    lines = (folder.parent / "predicted.csv").read_text().splitlines()
    assert len(lines) == 8 and lines[0].startswith("file,scan_id")


def train_config(workdir):
    from alz_jax.run import run_record

    return run_record.load_config(workdir)


def test_end_to_end_report_record_and_exact_resume(tiny_synthetic, data_dir, tmp_path, monkeypatch):
    manual_dir, _ = tiny_synthetic
    config = tiny_config(manual_dir, data_dir, **{"eval.tta": "hflip", "eval.gradcam_scans": 2})

    # Run A: straight through 6 steps.
    report = train.train_and_evaluate(config, str(tmp_path / "a"))
    workdir = tmp_path / "a"
    saved = json.loads((workdir / "report_test.json").read_text())
    for level in ("slice", "scan", "subject"):
        assert saved[level]["n"] > 0
        counts = np.array(saved[level]["confusion_matrix"]["counts"])
        assert counts.sum() == saved[level]["n"]
    assert saved["slice"]["n"] == report["num_images"]
    assert saved["subject_source"] == "meta_data_with_label.json"
    assert saved["tta"]["views"] == ["plain", "hflip"] and saved["gradcam_scans"]
    for name in ("config.json", "record.json", "split_manifest.json", "starts.jsonl"):
        assert (workdir / "run" / name).is_file(), name
    manifest = json.loads((workdir / "run" / "split_manifest.json").read_text())
    assert not set(manifest["train"]["subjects"]) & set(manifest["validation"]["subjects"])
    start = json.loads((workdir / "run" / "starts.jsonl").read_text().splitlines()[0])
    assert start["versions"]["jax"] == jax.__version__ and start["git_commit"]
    check_tensorboard(workdir, config)
    for name in ("report_test.md", "predictions_test.csv", "roc_test.png", "confusion_test.png",
                 "reliability_test.png", "gradcam_test.png"):  # fmt: skip
        assert (workdir / name).is_file(), name
    check_predict(workdir, manual_dir, saved, tmp_path / "to_predict")
    # The best (by validation loss) and the latest 2 survive.
    manager = checkpointing.make_manager(workdir, specs.resolve(config).checkpoint)
    assert {4, 6} <= set(manager.all_steps()) and manager.best_step() in manager.all_steps()

    # Run B: interrupted after the step-4 checkpoint, then restarted with the same command.
    interrupt.train_until(monkeypatch, config, str(tmp_path / "b"), 5)
    manager_b = checkpointing.make_manager(tmp_path / "b", specs.resolve(config).checkpoint)
    assert manager_b.latest_step() == 4
    # The restart finds step 4 damaged (a byte flipped on disk): it falls back to step 2, and
    # it reads its batches with a Grain worker where run A had none (per-host tuning).
    files = [p for p in (tmp_path / "b" / "checkpoints" / "4" / "state").rglob("*") if p.is_file()]
    largest = max(files, key=lambda p: p.stat().st_size)
    damaged = bytearray(largest.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    largest.write_bytes(bytes(damaged))
    restart = tiny_config(manual_dir, data_dir, **{"eval.tta": "hflip", "eval.gradcam_scans": 2,
                                                   "data.num_workers": 1})  # fmt: skip
    train.train_and_evaluate(restart, str(tmp_path / "b"))
    assert len((tmp_path / "b" / "run" / "starts.jsonl").read_text().splitlines()) == 2
    (aside,) = (tmp_path / "b" / "checkpoints_damaged").iterdir()
    assert aside.name.startswith("4-") and "fails its checksum" in (aside / "why.txt").read_text()

    a, b = final_state(tmp_path / "a", config), final_state(tmp_path / "b", config)
    assert int(a["step"]) == int(b["step"]) == 6
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))

    # Evaluating a saved checkpoint from the workdir uses the same path.
    val = SavedRun.open(str(workdir)).evaluate("validation", "latest")
    assert val["checkpoint_step"] == 6 and (workdir / "report_validation.json").is_file()

    # A resume that changes the model, the split or the recipe is refused, naming what changed.
    for key, value, named in (
        ("model.dims", (8, 12), r"model\.dims"),
        ("data.validation_fraction", 0.3, r"data\.validation_fraction"),
        ("batch_size", 32, r"training\.batch_size"),
    ):
        changed = tiny_config(manual_dir, data_dir, **{key: value})
        with pytest.raises(UserError, match=named):
            train.train_and_evaluate(changed, str(workdir))

    # With run/ deleted, the checkpoint's shapes are checked before anything is written.
    shutil.rmtree(workdir / "run")
    with pytest.raises(UserError, match=r"^Checkpoint 6 in .* holds another model"):
        train.train_and_evaluate(tiny_config(manual_dir, data_dir, **{"model.dims": (8, 12)}),
                                 str(workdir))  # fmt: skip
    assert not (workdir / "run").exists() and not (workdir / "checkpoints_damaged").exists()


def test_a_start_that_saved_no_checkpoint_does_not_bind_the_workdir(
    tiny_synthetic, data_dir, tmp_path, monkeypatch
):
    """A start that dies before its first checkpoint leaves a run record; the corrected command
    (here: another model) is not refused as "a different model", and replaces the record."""
    manual_dir, _ = tiny_synthetic
    real_factory = steps.make_train_step

    def failing_factory(*args, **kwargs):
        def fail(state, batch):
            raise interrupt.PreemptedError

        real_factory(*args, **kwargs)
        return fail

    monkeypatch.setattr(steps, "make_train_step", failing_factory)
    workdir = tmp_path / "w"
    for dims in ((8, 16), (8, 12)):
        with pytest.raises(interrupt.PreemptedError):
            train.train_and_evaluate(tiny_config(manual_dir, data_dir, **{"model.dims": dims}),
                                     str(workdir))  # fmt: skip
        record = json.loads((workdir / "run" / "record.json").read_text())
        assert tuple(record["identity"]["model"]["dims"]) == dims
        assert not checkpointing.has_checkpoint(workdir)


def test_adni_layout_folder_end_to_end_reports_subjects(adni_like, tmp_path):
    root, spec = adni_like
    config = tiny_config(
        root, tmp_path / "tfds", **{"num_train_steps": 2, "data.validation_fraction": 0.25}
    )
    report = train.train_and_evaluate(config, str(tmp_path / "w"))
    test_scans = [s for s, folder in spec.folder_of_scan.items() if folder == "test"]
    test_subjects = {subj for subj, scans in spec.scans_of_subject.items()
                     if set(scans) & set(test_scans)}  # fmt: skip
    assert report["slice"]["n"] == spec.images["test"]
    assert report["scan"]["n"] == len(test_scans)
    assert report["subject"]["n"] == len(test_subjects) == 3
    assert report["test_subjects_also_in_train"] == 1
    assert report["subject"]["per_class"]["AD"]["support"] == 2


def test_cross_validation_runs_every_fold_once_and_aggregates(tiny_synthetic, tmp_path):
    root, summary = tiny_synthetic
    config = tiny_config(root, tmp_path / "tfds", num_train_steps=2, **{"data.num_folds": 2})
    report = cross_validation.run_folds(config, tmp_path / "cv")
    images = sum(c["images"] for split in ("train", "test") for c in summary[split].values())
    pooled = report["pooled_out_of_fold"]
    assert pooled["num_images"] == pooled["slice"]["n"] == images  # every image tested once
    binary = tasks.BinaryTask(2)
    folds = [binary.read_predictions(tmp_path / "cv" / f"fold_{i}" / "predictions_test.csv")
             for i in range(2)]  # fmt: skip
    subjects = [set(f[0]["subject_id"]) for f in folds]
    assert not subjects[0] & subjects[1]
    accuracy = report["across_folds"]["scan"]["accuracy"]
    assert len(accuracy["per_fold"]) == 2
    assert accuracy["mean"] == pytest.approx(np.mean(accuracy["per_fold"]))
    assert accuracy["std"] == pytest.approx(np.std(accuracy["per_fold"], ddof=1))
    # Resumable fold by fold: a finished fold is not trained again.
    stamp = (tmp_path / "cv" / "fold_0" / "report_test.json").stat().st_mtime_ns
    cross_validation.run_folds(config, tmp_path / "cv")
    assert (tmp_path / "cv" / "fold_0" / "report_test.json").stat().st_mtime_ns == stamp
    assert (tmp_path / "cv" / "report_cv.json").is_file()


def test_bad_data_folder_and_batch_are_user_errors(tmp_path, tiny_synthetic):
    (tmp_path / "empty").mkdir()
    config = tiny_config(tmp_path / "empty", tmp_path / "tfds")
    with pytest.raises(UserError, match="has no layout alz_jax reads") as error:
        train.train_and_evaluate(config, str(tmp_path / "w"))
    # Its line and a one-line hint; ADNI's registration only where ADNI is meant (it isn't).
    assert str(error.value).splitlines()[1:] == [registry.LAYOUTS_HINT]
    assert "adni.loni.usc.edu" not in str(error.value)
    config = tiny_config(tiny_synthetic[0], tmp_path / "tfds2", batch_size=12)
    with pytest.raises(UserError, match="divisible by the 8 devices"):
        train.train_and_evaluate(config, str(tmp_path / "w2"))


def test_preview_writes_the_first_batch_grid(tiny_synthetic, tmp_path):
    out = tmp_path / "grid.png"
    result = subprocess.run(
        [sys.executable, "-m", "alz_jax.preview", "--config=configs/demo.py", f"--out={out}",
         f"--config.data.manual_dir={tiny_synthetic[0]}", f"--config.data.data_dir={tmp_path}",
         "--config.data.image_size=32", "--config.batch_size=16", "--config.mix.prob=1.0",
         "--config.mix.group_size=8", "--config.data.num_workers=0"],
        cwd=REPO, capture_output=True, text=True,
        env=dict(os.environ, XLA_FLAGS=ONE_DEVICE_XLA_FLAGS),
        timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    grid = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    # Each cell as wide as its caption ('AD 0.73', 44 px, wider than the 32 px image), 2 px
    # either side, and a 4 px gap.
    assert grid.shape == (2 * (32 + 12), 8 * (44 + 4 + 4))
    assert "16 images" in result.stdout


def test_reference_config_without_adni_says_where_to_put_it(tmp_path):
    env = dict(os.environ, XLA_FLAGS=ONE_DEVICE_XLA_FLAGS)
    result = subprocess.run(
        [sys.executable, "-m", "alz_jax.main", "--config=configs/convnext_t.py",
         f"--workdir={tmp_path / 'w'}", f"--config.data.data_dir={tmp_path / 'tfds'}"],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "manual_dir" in result.stderr and "AD_NC" in result.stderr
    assert "Traceback" not in result.stderr


def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    tiny_synthetic, data_dir, tmp_path, monkeypatch
):
    config = tiny_config(tiny_synthetic[0], data_dir, log_every_steps=1)
    real_factory = steps.make_train_step

    def diverging_factory(*args, **kwargs):
        step_fn = real_factory(*args, **kwargs)

        def wrapped(state, batch):
            state, metrics = step_fn(state, batch)
            if int(state["step"]) >= 3:  # step 3 on: NaN weights and loss
                state = dict(state, params=jax.tree.map(lambda p: p * np.nan, state["params"]))
                metrics = dict(metrics, loss=metrics["loss"] * np.nan)
            return state, metrics

        return wrapped

    monkeypatch.setattr(steps, "make_train_step", diverging_factory)
    with pytest.raises(train.TrainingDivergedError, match=r"diverged at step 3: loss nan") as e:
        train.train_and_evaluate(config, str(tmp_path / "w"))
    assert "last good checkpoint, step 2" in str(e.value)
    manager = checkpointing.make_manager(tmp_path / "w", specs.resolve(config).checkpoint)
    assert manager.all_steps() == [2]
    state = final_state(tmp_path / "w", config)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"batch_size": 12}, "divisible by the 8 devices"),
        ({"grad_accum_steps": 4}, "2 per device, which config.grad_accum_steps = 4 must divide"),
        ({"mix.group_size": 6}, "group_size = 6 must divide the per-process batch 16"),
        ({"warmup_steps": 7}, r"warmup \(7 steps\) is longer than training \(6 steps\)"),
        ({"model.size": "huge"}, "not a ConvNeXt size"),
        ({"dtype": "float16"}, "config.dtype = 'float16': expected auto|float32|bfloat16"),
        ({"step_impl": "pmap"}, "config.step_impl = 'pmap'"),
        ({"ema.dtype": "float16"}, "config.ema.dtype"),
        ({"swa.start_fraction": 1.0}, r"config.swa.start_fraction = 1.0: expected in \[0, 1\)"),
        ({"checkpoint.best_metric": "val_loss"}, "config.checkpoint.best_metric = 'val_loss'"),
        ({"checkpoint.best_mode": "max"}, "best_mode = 'max': expected min for validation/loss"),
        ({"model.param_dtype": "bfloat16"}, "config.model.param_dtype = 'bfloat16'"),
        ({"swa.every_steps": 0}, "config.swa.every_steps = 0: expected >= 1"),
    ],
)
def test_bad_config_values_are_refused_before_any_compile(
    tiny_synthetic, data_dir, tmp_path, monkeypatch, overrides, message
):
    def no_compile(*args, **kwargs):
        raise AssertionError("a step was built before the config was checked")

    monkeypatch.setattr(steps, "make_train_step", no_compile)
    monkeypatch.setattr(steps, "create_train_state", no_compile)
    config = tiny_config(tiny_synthetic[0], data_dir, **overrides)
    with pytest.raises(UserError, match=message):
        train.train_and_evaluate(config, str(tmp_path / "w"))
