"""Metric writers: TensorBoard laid out to compare, and <workdir>/metrics.jsonl.

TensorBoard: a session folder named after the run (session_name: the workdir's folder name)
under <workdir>/tensorboard/, holding the hparams (the trial, of the same name) and the config
as a text table, and in it one run folder per series with the same tag names in each, so that
one chart overlays them (as Keras and many JAX codebases lay them out): `train/`, `validation/`
(the weights selected at each validation), `validation_raw/`, `validation_ema/`,
`validation_swa/` and `test/`. A name written as `train/loss` goes to run `train`, tag `loss`;
`validation/ema/loss` to run `validation_ema`, tag `loss`. The series lie inside the session
folder because the HParams tab finds a trial's metrics in runs below the trial's own, and a
named session folder keeps TensorBoard from calling the run "." when pointed at
<workdir>/tensorboard. Known tags carry a description (TensorBoard shows it on the chart): the
train loss is label-smoothed cross-entropy against the mixed targets, the validation and test
losses plain NLL.

metrics.jsonl keeps every scalar under its full name (`validation/ema/loss`), exactly (a float32
scalar round-trips through Python's float repr): for scripts, diffs and tests.

Apart from `logs` because TensorFlow takes ~4 s to import: a command's module stays quick to
import, which matters because Grain's worker processes import it again.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.hparams import summary_v2 as hparams_summary  # TensorFlow not needed
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar.summary_v2 import scalar_pb
from tensorboard.plugins.text.summary_v2 import text_pb
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tensorboard.util import tensor_util

try:
    import tensorflow as tf
    from tensorboard.plugins.hparams import api as hp  # imports TensorFlow too
except ImportError:  # a host without TensorFlow (docs/training.md): see create_writer
    tf = hp = None

from alz_jax.host import storage

RUNS = ("train", "validation", "validation_raw", "validation_ema", "validation_swa", "test")
WEIGHT_SETS = ("raw", "ema", "swa")

DESCRIPTIONS = {
    ("train", "loss"): "Training loss: cross-entropy with label smoothing against the "
    "Mixup/CutMix-mixed targets, mean over each logged interval. Not comparable in level with "
    "the validation loss (plain NLL): compare their trends.",
    ("validation", "loss"): "Validation loss: plain negative log-likelihood (no smoothing, no "
    "mixing) of the weights selected at that validation (see selected_weights).",
    ("test", "loss"): "Test loss: plain negative log-likelihood of the reported weights.",
    ("validation", "selected_weights"): "Which weights won this validation: 0 raw, 1 EMA, "
    "2 SWA (the text tab names them).",
    ("train", "images_per_sec"): "Training images per second (global batch / step time).",
    ("train", "compile_time_s"): "Seconds to compile the train step (the first step's time).",
}
for _w in WEIGHT_SETS:
    DESCRIPTIONS[(f"validation_{_w}", "loss")] = (
        f"Validation loss of the {_w} weights: plain negative log-likelihood."
    )


# Folder names that say nothing of the run: the session is named with the parent's name too.
GENERIC_FOLDERS = ("workdir", "work", "run", "runs", "output", "outputs", "out", "tmp")


def session_name(workdir: str | Path) -> str:
    """The run's name in TensorBoard (its session folder and HParams trial): the workdir's
    folder name, after its parent's where the folder's own name is generic ('workdir'); '.'
    is the current folder's name. Runs/convnext_t -> 'convnext_t', .demo/workdir ->
    'demo_workdir'."""
    folder = storage.path(workdir)
    if not storage.is_url(workdir):
        folder = folder.resolve()
    name = folder.name.lstrip(".") or "run"
    if name.lower() in GENERIC_FOLDERS and folder.parent.name:
        name = f"{folder.parent.name.lstrip('.')}_{name}"
    return name


def first_description(described: set, run: str, tag: str) -> str | None:
    """The series' description (DESCRIPTIONS) the first time it is written, else None; TensorBoard
    keeps the first one, so it is written once."""
    if (run, tag) in described:
        return None
    described.add((run, tag))
    return DESCRIPTIONS.get((run, tag))


def hparam_value(value):
    """A value as the HParams tab should show it: an int as a string, because the tab prints
    every number with five significant digits (64 as '64.000'; TensorBoard 2.21's
    prettyPrint, toPrecision(5)); floats, strings and bools as they are."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return str(int(value))
    return value


def split_name(name: str) -> tuple[str, str]:
    """(run, tag) of a full scalar name: 'validation/ema/loss' -> ('validation_ema', 'loss');
    names without a known prefix go to run 'train'."""
    parts = name.split("/")
    if parts[0] == "validation" and len(parts) > 2 and parts[1] in WEIGHT_SETS:
        return f"validation_{parts[1]}", "/".join(parts[2:])
    if parts[0] in ("train", "validation", "test") and len(parts) > 1:
        return parts[0], "/".join(parts[1:])
    return "train", name


class Writer:
    """TensorBoard (process 0) and metrics.jsonl, through CLU's MetricWriter methods
    (write_scalars, write_images, write_texts, write_hparams, flush, close) so the loop and the
    reports don't care; on other processes every method does nothing."""

    def __init__(self, workdir: str | Path, is_writer: bool = True):
        self._session = session_name(workdir)
        self._root = storage.path(workdir) / "tensorboard" / self._session
        self._jsonl = JsonlWriter(storage.path(workdir) / "metrics.jsonl")
        self._active = is_writer
        self._writers: dict[str, tf.summary.SummaryWriter] = {}
        self._described: set[tuple[str, str]] = set()

    def _writer(self, run: str) -> tf.summary.SummaryWriter:
        if run not in self._writers:
            folder = self._root if run == "" else self._root / run
            self._writers[run] = tf.summary.create_file_writer(os.fspath(folder))
        return self._writers[run]

    def write_scalars(self, step: int, scalars: dict) -> None:
        """Each full name to its run and tag, and all of them to metrics.jsonl."""
        if not self._active or not scalars:
            return
        self._jsonl.write_scalars(step, scalars)
        for name, value in scalars.items():
            run, tag = split_name(name)
            description = first_description(self._described, run, tag)
            with self._writer(run).as_default():
                tf.summary.scalar(tag, float(value), step=int(step), description=description)

    def write_images(self, step: int, images: dict) -> None:
        """Images (N, H, W, C) uint8 by full name, all N of each (a figure's panels)."""
        if not self._active:
            return
        for name, batch in images.items():
            run, tag = split_name(name)
            panels = np.asarray(batch)
            with self._writer(run).as_default():
                tf.summary.image(tag, panels, step=int(step), max_outputs=len(panels))

    def write_texts(self, step: int, texts: dict) -> None:
        """Markdown texts by full name ('config' alone goes to the session folder)."""
        if not self._active:
            return
        for name, text in texts.items():
            run, tag = ("", name) if "/" not in name else split_name(name)
            with self._writer(run).as_default():
                tf.summary.text(tag, text, step=int(step))

    def write_hparams(self, hparams: dict, metrics: list[tuple[str, str]] = (),
                      trial: str = "") -> None:  # fmt: skip
        """The trial's hparams (in the given order: the HParams tab's column order; ints
        written as strings, hparam_value) and the metrics it shows, as (run, tag): e.g.
        ('validation', 'loss'), ('test', 'accuracy'). The trial is named `trial`, by default
        the session's name (session_name)."""
        if not self._active:
            return
        hparams = numbered_hparams(hparams)
        with self._writer("").as_default():
            hp.hparams_config(
                hparams=[hp.HParam(k) for k in hparams],
                metrics=[hp.Metric(tag, group=run, display_name=f"{run} {tag}")
                         for run, tag in metrics],
            )  # fmt: skip
            hp.hparams(hparams, trial_id=trial or self._session)

    def flush(self) -> None:
        """Writes what is buffered."""
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        """Flushes and closes the event files."""
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


NO_TENSORFLOW = (
    "TensorFlow is not installed: TensorBoard's files are written by TensorBoard's own "
    "event writer instead (docs/training.md, Installing without TensorFlow)"
)


def numbered_hparams(hparams: dict) -> dict:
    """The hparams as written: the HParams tab sorts them by name, so numbered names keep the
    given order; values as hparam_value writes them."""
    return {f"{i:02d}_{k}": hparam_value(v) for i, (k, v) in enumerate(hparams.items(), start=1)}


def create_writer(workdir: str | Path, is_writer: bool) -> Writer | TensorFlowFreeWriter:
    """Process 0: TensorBoard under <workdir>/tensorboard and <workdir>/metrics.jsonl; other
    processes: nothing. Without TensorFlow (a GPU host installed without it), the same files
    through TensorBoard's own event writer, less the hparams, with one warning."""
    if tf is not None:
        return Writer(workdir, is_writer)
    if is_writer:
        logging.warning(NO_TENSORFLOW)
    return TensorFlowFreeWriter(workdir, is_writer)


class JsonlWriter:
    """Appends each `write_scalars` call to a JSON-lines file (what `Writer` writes beside
    TensorBoard)."""

    def __init__(self, path: str | Path):
        self._path = storage.path(path)

    def write_scalars(self, step: int, scalars) -> None:
        """One line: {"step": N, name: value, ...}."""
        line = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        storage.append_text(self._path, json.dumps(line) + "\n")


def read_metrics(workdir: str | Path) -> dict[int, dict]:
    """<workdir>/metrics.jsonl by step (a step logged again after a resume: the last entry)."""
    by_step: dict[int, dict] = {}
    path = storage.path(workdir) / "metrics.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            by_step.setdefault(entry["step"], {}).update(entry)
    return by_step


class TensorFlowFreeWriter:
    """`Writer`'s methods and files without TensorFlow: event files written by TensorBoard's own
    (pure Python) writer, in the same session and run folders, with the same tags."""

    def __init__(self, workdir: str | Path, is_writer: bool = True):
        self._session = session_name(workdir)
        self._root = storage.path(workdir) / "tensorboard" / self._session
        self._jsonl = JsonlWriter(storage.path(workdir) / "metrics.jsonl")
        self._active = is_writer
        self._writers: dict[str, EventFileWriter] = {}
        self._described: set[tuple[str, str]] = set()

    def _write(self, run: str, step: int, summary: summary_pb2.Summary) -> None:
        if run not in self._writers:
            folder = self._root if run == "" else self._root / run
            self._writers[run] = EventFileWriter(os.fspath(folder))
        event = event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary)
        self._writers[run].add_event(event)

    def write_scalars(self, step: int, scalars: dict) -> None:
        """As `Writer.write_scalars`."""
        if not self._active or not scalars:
            return
        self._jsonl.write_scalars(step, scalars)
        for name, value in scalars.items():
            run, tag = split_name(name)
            description = first_description(self._described, run, tag)
            self._write(run, step, scalar_pb(tag, float(value), description=description))

    def write_images(self, step: int, images: dict) -> None:
        """As `Writer.write_images`: (N, H, W, C) uint8, all N of each, as PNG."""
        if not self._active:
            return
        for name, values in images.items():
            run, tag = split_name(name)
            batch = np.asarray(values)
            pngs = []
            for image in batch:
                buffer = io.BytesIO()
                Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(
                    buffer, format="PNG"
                )
                pngs.append(buffer.getvalue())
            width, height = str(batch.shape[2]).encode(), str(batch.shape[1]).encode()
            tensor = tensor_util.make_tensor_proto(np.array([width, height, *pngs], dtype=object))
            metadata = image_metadata.create_summary_metadata(display_name=tag, description="")
            summary = summary_pb2.Summary(
                value=[summary_pb2.Summary.Value(tag=tag, metadata=metadata, tensor=tensor)]
            )
            self._write(run, step, summary)

    def write_texts(self, step: int, texts: dict) -> None:
        """As `Writer.write_texts`."""
        if not self._active:
            return
        for name, text in texts.items():
            run, tag = ("", name) if "/" not in name else split_name(name)
            self._write(run, step, text_pb(tag, text))

    def write_hparams(self, hparams: dict, metrics: list[tuple[str, str]] = (),
                      trial: str = "") -> None:  # fmt: skip
        """As `Writer.write_hparams`, through TensorBoard's own summary protos."""
        if not self._active:
            return
        hparams = numbered_hparams(hparams)
        config = hparams_summary.hparams_config_pb(
            hparams=[hparams_summary.HParam(k) for k in hparams],
            metrics=[hparams_summary.Metric(tag, group=run, display_name=f"{run} {tag}")
                     for run, tag in metrics],
        )  # fmt: skip
        self._write("", 0, config)
        self._write("", 0, hparams_summary.hparams_pb(hparams, trial_id=trial or self._session))

    def flush(self) -> None:
        """Writes what is buffered."""
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        """Flushes and closes the event files."""
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()
