"""`python -m alz_jax.compare`: the runs' names (--names, else each run's config and model
family), the refusal of a workdir whose run is still training (it holds run.lock), and the cost
table's device peak column, shown only where some model has one. No training: the workdirs hold
only what naming reads (run/config.json, run/record.json, run/starts.jsonl).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import ml_collections
import pytest
from etils import epath

from alz_jax.evaluation import compare_stats as stats
from alz_jax.host import workdir_lock
from alz_jax.host.errors import UserError
from alz_jax.run import compare_runs
from alz_jax.run.saved_run import SavedRun
from tests import tiny_config
from tests.test_storage import fake_gcs
from tests.xla_flags import ONE_DEVICE_XLA_FLAGS

REPO = Path(__file__).resolve().parents[1]
RESNET = {"name": "resnet50", "arch": {"depths": (1, 1), "widths": (4, 8), "stem_width": 8}}


def write_run(workdir: Path, argv: list[str] | None, model: dict | None = None) -> Path:
    """A workdir holding a run's saved config, an empty record and (unless `argv` is None) the
    start's command line, as training writes them."""
    config = tiny_config.get_config()
    for key, value in (model or {}).items():
        config.model[key] = ml_collections.ConfigDict(value) if isinstance(value, dict) else value
    (workdir / "run").mkdir(parents=True)
    (workdir / "run" / "config.json").write_text(config.to_json_best_effort())
    (workdir / "run" / "record.json").write_text("{}")
    if argv is not None:
        start = {"time": "2026-12-05T00:00:00+00:00", "argv": argv, "config": {}}
        (workdir / "run" / "starts.jsonl").write_text(json.dumps(start) + "\n")
    return workdir


def names_of(*workdirs: Path) -> list[str]:
    paths = [str(w) for w in workdirs]
    return compare_runs.default_names(paths, [SavedRun.open(p) for p in paths])


def files_in(folder: Path) -> dict[str, int]:
    """Every file under `folder` with its modification time in ns."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


# ---- Names. ----


def test_default_names_are_the_config_and_model_family(tmp_path):
    demo = write_run(tmp_path / "workdir", [str(REPO / "alz_jax" / "demo.py")])
    resnet = write_run(
        tmp_path / "runs" / "r",
        [str(REPO / "alz_jax" / "main.py"), f"--config={REPO}/configs/demo_resnet.py",
         "--workdir=runs/r"],
        RESNET,
    )  # fmt: skip
    cnn = write_run(
        tmp_path / "cnn",
        ["main.py", "--config", "configs/stages_simple_cnn.py:x", "--config.seed=1"],
        {"name": "simple_cnn", "arch": {"dims": (4, 8), "depths": (1, 2)}},
    )
    from_python = write_run(tmp_path / "notebook_run", None)  # no starts.jsonl
    assert names_of(demo, resnet, cnn, from_python) == [
        "demo (ConvNeXt)",
        "demo_resnet (ResNet)",
        "stages_simple_cnn (Simple CNN)",
        "notebook_run (ConvNeXt)",
    ]


def test_runs_sharing_a_name_get_their_workdir_added(tmp_path):
    argv = ["main.py", "--config=convnext_t"]
    first = write_run(tmp_path / "a" / "fold_0", argv)
    second = write_run(tmp_path / "b" / "fold_0", argv)
    other = write_run(tmp_path / "c", argv, RESNET)
    assert names_of(first, second, other) == [
        "convnext_t (ConvNeXt) [a/fold_0]",
        "convnext_t (ConvNeXt) [b/fold_0]",
        "convnext_t (ResNet)",
    ]


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["a"], r"^--names gives 1 names for 2 --workdirs; expected one name per workdir, in "),
        (["a", "b", "c"], r"^--names gives 3 names for 2 --workdirs; expected one name per "),
        ([], r"^--names gives 0 names for 2 --workdirs"),
        (["a", " "], r"^--names: name 2 of 2 is empty; expected a name per workdir\.$"),
        (["x", "x"], r"^--names gives 'x' twice; expected a different name per run\.$"),
    ],
)
def test_names_are_one_per_workdir_distinct_and_non_empty(tmp_path, names, message):
    workdirs = [str(write_run(tmp_path / w, ["main.py"])) for w in ("a", "b")]
    before = files_in(tmp_path)
    with pytest.raises(UserError, match=message) as refused:
        compare_runs.compare(workdirs, str(tmp_path / "out"), compare_runs.CompareSettings(), names)
    assert "\n" not in str(refused.value)
    assert files_in(tmp_path) == before  # refused before anything was written


class LoadedError(Exception):
    """Raised by the test's load_run in place of loading: what compare would load."""


def test_compare_names_the_runs_by_names_or_by_default(tmp_path, monkeypatch):
    workdirs = [
        str(write_run(tmp_path / "workdir", ["alz_jax/demo.py"])),
        str(write_run(tmp_path / "r", ["main.py", "--config=configs/demo_resnet.py"], RESNET)),
    ]

    def load_run(workdir, name, split, evaluate_missing, saved=None):
        raise LoadedError(name)

    monkeypatch.setattr(compare_runs, "load_run", load_run)
    settings = compare_runs.CompareSettings()
    with pytest.raises(LoadedError, match=r"^demo \(ConvNeXt\)$"):
        compare_runs.compare(workdirs, str(tmp_path / "out"), settings)
    with pytest.raises(LoadedError, match=r"^ConvNeXt demo$"):
        compare_runs.compare(workdirs, str(tmp_path / "out"), settings, ["ConvNeXt demo", "R"])


# ---- A run that is still training. ----


@pytest.fixture
def training(tmp_path):
    """A run in `tmp_path / "training"` whose lock is held by a live process (as a training
    holds it), with no report yet; yields the workdir and the holder's PID."""
    workdir = write_run(tmp_path / "training", ["main.py", "--config=demo"])
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom alz_jax.host import workdir_lock\n"
         "with workdir_lock.hold(sys.argv[1]):\n    print('held', flush=True)\n"
         "    time.sleep(120)\n", str(workdir)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, XLA_FLAGS=ONE_DEVICE_XLA_FLAGS),
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        yield workdir, holder.pid
    finally:
        holder.kill()
        holder.wait(30)


def test_a_workdir_whose_run_is_training_is_refused_and_left_untouched(training, tmp_path):
    workdir, pid = training
    done = write_run(tmp_path / "done", ["main.py", "--config=demo"])
    before = files_in(tmp_path)
    expected = f"{workdir}: a run is training there (pid {pid}, run.lock); compare it when it ends."
    for workdirs in ([done, workdir], [workdir, done]):
        with pytest.raises(UserError) as refused:
            compare_runs.compare(
                [str(w) for w in workdirs], str(workdir / "compare"), compare_runs.CompareSettings()
            )
        assert str(refused.value) == expected
    assert files_in(tmp_path) == before  # no report, no evaluation, no --out written


def test_the_command_refuses_a_training_run_in_one_line_with_exit_2(training, tmp_path):
    workdir, pid = training
    done = write_run(tmp_path / "done", ["main.py", "--config=demo"])
    before = files_in(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "alz_jax.compare", f"--workdirs={done},{workdir}",
         "--names=A,B"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
        env=dict(os.environ, XLA_FLAGS=ONE_DEVICE_XLA_FLAGS),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {workdir}: a run is training there (pid {pid}, run.lock); compare it when it ends."
    ]
    assert "Traceback" not in result.stderr
    assert files_in(tmp_path) == before and not (tmp_path / "compare").exists()


def test_no_training_starts_in_a_workdir_while_it_is_compared(tmp_path):
    workdir = tmp_path / "run"
    with workdir_lock.hold(workdir):  # a finished run leaves its emptied lock file
        pass
    with (
        compare_runs.no_training([str(workdir)]),
        pytest.raises(UserError, match="is in use by"),
        workdir_lock.hold(workdir),
    ):
        pass
    with workdir_lock.hold(workdir):  # compared: a training may start again
        pass


def test_a_gs_workdir_is_refused_while_its_lock_file_names_a_live_holder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # With TensorFlow installed epath sends gs:// to tf.io.gfile, past the mock.
    monkeypatch.setattr(epath.gpath, "_is_tf_installed", lambda: False)
    gone = subprocess.Popen([sys.executable, "-c", ""])
    gone.wait(30)
    lock = tmp_path / "bucket" / "runs" / "r" / "run.lock"
    lock.parent.mkdir(parents=True)
    with fake_gcs(tmp_path):
        with compare_runs.no_training(["gs://bucket/runs/r"]):  # no lock file: no run there
            pass
        lock.write_text(json.dumps({"host": socket.gethostname(), "pid": gone.pid}))
        with compare_runs.no_training(["gs://bucket/runs/r"]):  # its holder is gone
            pass
        lock.write_text(json.dumps({"host": "elsewhere", "pid": 7}))
        with pytest.raises(UserError) as refused, compare_runs.no_training(["gs://bucket/runs/r"]):
            pass
    assert str(refused.value) == (
        "gs://bucket/runs/r: a run is training there (pid 7 on host elsewhere, run.lock); "
        "compare it when it ends."
    )


# ---- The device peak column. ----


def costs_result(peaks: list[int | None], backend: str = "cpu") -> dict:
    """A comparison of two models with measured costs, with these device peaks."""
    models = []
    for i, peak in enumerate(peaks):
        step = {"images_per_s": 100.0 + i, "xla_bytes": 3 * 2**20}
        cost = {"params": 1000, "flops_per_image": 2e9, "image_size": 64, "batch": 16,
                "train": step, "inference": step}  # fmt: skip
        if peak is not None:
            cost["device_peak_bytes"] = peak
        models.append({"name": f"m{i}", "title": "T", "workdir": f"w{i}", "metrics": {},
                       "checkpoint_step": 1, "weights": "raw", "num_images": 10,
                       "cost": cost})  # fmt: skip
    return {
        "split": "test", "reference": "m0", "metric_names": [], "paired_differences": {},
        "machine": {"cpu": "CPU", "cores": 2, "jax": "0", "backend": backend,
                    "device_count": 1, "device_kind": backend},
        "bootstrap": {"unit": "subject", "samples": 10, "seed": 0}, "models": models,
    }  # fmt: skip


def test_the_device_peak_column_is_dropped_where_no_model_has_one():
    markdown = stats.format_markdown(costs_result([None, None]))
    cost = markdown.split("## Cost\n")[1]
    header = next(line for line in cost.splitlines() if line.startswith("| model"))
    assert header.count(" | ") == 8 and "device peak" not in cost.split("No device peak")[0]
    rows = [line for line in cost.splitlines() if line.startswith("| m") and "model" not in line]
    assert len(rows) == 2 and all(row.count("|") == 10 for row in rows)
    assert rows[0].endswith("| 3.0 | 3.0 |")
    assert "\nNo device peak column: cpu reports no device memory statistics.\n" in cost


def test_the_device_peak_column_is_shown_where_a_model_has_one():
    markdown = stats.format_markdown(costs_result([5 * 2**20, None], backend="gpu"))
    cost = markdown.split("## Cost\n")[1]
    header = next(line for line in cost.splitlines() if line.startswith("| model"))
    assert header.endswith("| device peak MiB (process, cumulative) |")
    rows = [line for line in cost.splitlines() if line.startswith("| m") and "model" not in line]
    assert rows[0].endswith("| 3.0 | 3.0 | 5.0 |") and rows[1].endswith("| 3.0 | 3.0 | - |")
    assert "Device peak: the process's peak" in cost and "No device peak" not in cost


def test_the_console_summary_keeps_every_line_short_and_every_figure():
    names = ["accuracy", "balanced_accuracy", "macro_f1", "roc_auc_ovr_macro", "quadratic_kappa"]
    result = costs_result([None, None])
    result["metric_names"] = [*names, "ece"]
    for m in result["models"]:
        m["title"] = "ResNet depths (1, 1, 2, 1), widths (16, 32, 64, 128), stem 16"
        m["metrics"] = {"subject": {k: {"value": 0.5, "ci95": [0.25, 0.75]} for k in names}}
    diff = {"observed": -0.125, "ci95": [-0.25, 0.0], "share_b_better": 0.5, "share_equal": 0.25}
    result["paired_differences"] = {"m1": {"subject": {k: diff for k in names}}}
    lines = stats.format_summary(result).splitlines()
    assert max(map(len, lines)) <= stats.SUMMARY_WIDTH < 200
    text = "\n".join(lines)
    assert text.count("0.500 [0.250, 0.750]") == 10
    assert text.count("-0.125 [-0.250, +0.000], P(better) 0.50 (ties 0.25)") == 5
    assert lines[1] == "m0: ResNet depths (1, 1, 2, 1), widths (16, 32, 64, 128), stem 16"
