"""A host installed without TensorFlow (docs/training.md): in a subprocess where `import
tensorflow` fails as if it were not installed, the metric writer falls back to TensorBoard's own
event writer with one warning and writes the run folders, tags, values, images, texts and HParams
trial that the TensorFlow writer writes; and `alz_jax.main` builds a tiny data set with the TFDS
builder, trains from it and writes its test report (slow).
"""

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from tensorboard.util import tensor_util

from alz_jax.host import writers
from tests import tiny_config
from tests.xla_flags import ONE_DEVICE_XLA_FLAGS

REPO = Path(__file__).resolve().parents[1]
# Imported by Python at start-up from the first folder of PYTHONPATH: the path finder no longer
# finds tensorflow, so that `import tensorflow` fails and `importlib.util.find_spec` returns None
# as on a host without it (etils asks find_spec; TFDS tests sys.modules).
SITECUSTOMIZE = """
import importlib.machinery
import sys


class _PathFinderWithoutTensorFlow(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] == "tensorflow":
            return None
        return super().find_spec(name, path, target)


sys.meta_path[sys.meta_path.index(importlib.machinery.PathFinder)] = _PathFinderWithoutTensorFlow
"""
IMAGES = np.arange(2 * 6 * 8 * 3, dtype=np.uint8).reshape(2, 6, 8, 3)
# The same calls in both writers: a scalar of each run kind, images, a text, hparams.
CALLS = """
writer.write_scalars(3, {"train/loss": 0.5, "validation/loss": 0.75,
                         "validation/ema/loss": 0.25, "test/accuracy": 0.875})
writer.write_images(3, {"test/roc": IMAGES})
writer.write_texts(0, {"config": "| a | b |"})
writer.write_hparams({"model": "convnext"}, [("validation", "loss")], trial="t1")
writer.close()
"""


def _without_tensorflow(tmp_path: Path, args: list[str]) -> subprocess.CompletedProcess:
    """Runs `python ARGS` in the repository with `import tensorflow` failing."""
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    pythonpath = os.pathsep.join([str(tmp_path), str(REPO), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=pythonpath, XLA_FLAGS=ONE_DEVICE_XLA_FLAGS)
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, check=False, timeout=300)  # fmt: skip


def _events(folder: Path) -> dict[str, EventAccumulator]:
    """Each run folder's events (the session folder itself as '.')."""
    runs = {}
    for run in [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]:
        accumulator = EventAccumulator(str(run), size_guidance={"tensors": 0})
        accumulator.Reload()
        runs["." if run == folder else run.name] = accumulator
    return runs


def _value(accumulator: EventAccumulator, tag: str):
    (event,) = accumulator.Tensors(tag)
    return event.step, tensor_util.make_ndarray(event.tensor_proto)


def test_writer_without_tensorflow_writes_what_the_tensorflow_writer_writes(tmp_path):
    setup = textwrap.dedent("""
        import json, sys
        import numpy as np
        from alz_jax.host import writers
        IMAGES = np.arange(2 * 6 * 8 * 3, dtype=np.uint8).reshape(2, 6, 8, 3)
        writers.create_writer(sys.argv[2], False).write_scalars(1, {"train/loss": 1.0})
        writer = writers.create_writer(sys.argv[1], True)
    """)
    report = 'print(json.dumps([type(writer).__name__, "tensorflow" in sys.modules]))\n'
    (tmp_path / "child.py").write_text(setup + CALLS + report)
    for folder in ("no_tf", "tf"):
        (tmp_path / folder).mkdir()  # a run's workdir exists before its writer
    done = _without_tensorflow(tmp_path, [str(tmp_path / "child.py"), str(tmp_path / "no_tf"),
                                          str(tmp_path / "not_writer")])  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.splitlines()[-1]) == ["TensorFlowFreeWriter", False]
    assert done.stderr.count(writers.NO_TENSORFLOW) == 1  # process 0 only
    assert not (tmp_path / "not_writer").exists()

    # The TensorFlow writer, here, with the same calls.
    writer = writers.create_writer(tmp_path / "tf", True)
    assert type(writer) is writers.Writer
    exec(CALLS, {"writer": writer, "IMAGES": IMAGES})
    assert (tmp_path / "no_tf" / "metrics.jsonl").read_text() == (
        tmp_path / "tf" / "metrics.jsonl"
    ).read_text()
    no_tf = _events(tmp_path / "no_tf" / "tensorboard" / "no_tf")  # the session folder
    tf = _events(tmp_path / "tf" / "tensorboard" / "tf")
    assert sorted(no_tf) == sorted(tf) == [".", "test", "train", "validation", "validation_ema"]
    for runs in (no_tf, tf):
        assert sorted(runs["."].Tags()["tensors"]) == [
            "_hparams_/experiment", "_hparams_/session_start_info", "config"
        ]  # fmt: skip
    for tag in ("_hparams_/experiment", "_hparams_/session_start_info"):
        mine, theirs = (
            plugin_data_pb2.HParamsPluginData.FromString(
                runs["."].SummaryMetadata(tag).plugin_data.content
            )
            for runs in (no_tf, tf)
        )
        for message in (mine, theirs):  # written at different times
            message.session_start_info.start_time_secs = 0
            message.experiment.time_created_secs = 0
        assert mine == theirs
    trial = plugin_data_pb2.HParamsPluginData.FromString(
        no_tf["."].SummaryMetadata("_hparams_/session_start_info").plugin_data.content
    ).session_start_info
    assert trial.hparams["01_model"].string_value == "convnext"
    for run in ("train", "validation", "validation_ema", "test"):
        assert no_tf[run].Tags()["tensors"] == tf[run].Tags()["tensors"]
        for tag in no_tf[run].Tags()["tensors"]:
            mine, theirs = no_tf[run].SummaryMetadata(tag), tf[run].SummaryMetadata(tag)
            assert mine.plugin_data.plugin_name == theirs.plugin_data.plugin_name
            assert mine.summary_description == theirs.summary_description
    assert _value(no_tf["train"], "loss") == (3, 0.5)
    assert _value(no_tf["validation_ema"], "loss") == (3, 0.25)
    assert no_tf["train"].SummaryMetadata("loss").summary_description.startswith("Training loss")
    assert _value(no_tf["."], "config")[1].item() == b"| a | b |"
    for runs in (no_tf, tf):
        step, tensor = _value(runs["test"], "roc")
        assert step == 3 and list(tensor[:2]) == [b"8", b"6"]
        decoded = [np.asarray(Image.open(io.BytesIO(png))) for png in tensor[2:]]
        np.testing.assert_array_equal(np.stack(decoded), IMAGES)


@pytest.mark.slow
def test_main_without_tensorflow_builds_trains_and_reports(tiny_synthetic, tmp_path):
    workdir = tmp_path / "run"
    overrides = {**tiny_config.TWO_STAGES, "num_train_steps": 2, "eval_every_steps": 2,
                 "data.manual_dir": tiny_synthetic[0],
                 "data.data_dir": tmp_path / "tfds"}  # fmt: skip
    flags = [f"--config.{k}={v}".replace(" ", "") for k, v in overrides.items()]
    done = _without_tensorflow(tmp_path, ["-m", "alz_jax.main", "--config=tests/tiny_config.py",
                                          f"--workdir={workdir}", *flags])  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count(writers.NO_TENSORFLOW) == 1
    assert "Built the adni data set" in done.stderr
    logged = writers.read_metrics(workdir)
    assert "train/loss" in logged[2] and "test/accuracy" in logged[2]
    assert json.loads((workdir / "report_test.json").read_text())["checkpoint_step"] == 2
    runs = _events(workdir / "tensorboard" / writers.session_name(workdir))
    assert {"loss", "augmented"} <= set(runs["train"].Tags()["tensors"])
    assert "accuracy" in runs["test"].Tags()["tensors"]
