"""Readable logs: our INFO lines and the metrics, without the libraries' routine chatter."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import tensorflow_datasets as tfds
from clu import metric_writers

from alz_jax.host import storage

# Libraries whose INFO lines describe their own routine work (checkpoint I/O, data set files).
_QUIET = ("/orbax/", "/tensorflow_datasets/", "/grain/", "/jax/_src/", "/etils/")


class _LibraryInfoFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        return not any(part in record.pathname for part in _QUIET)


def setup() -> None:
    """INFO logging for alz_jax and CLU's metric lines; library INFO chatter is dropped."""

    tfds.disable_progress_bar()
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in root.handlers or [logging.StreamHandler()]:
        if not any(isinstance(f, _LibraryInfoFilter) for f in handler.filters):
            handler.addFilter(_LibraryInfoFilter())
        if handler not in root.handlers:
            root.addHandler(handler)


class JsonlWriter(metric_writers.MetricWriter):
    """CLU writer appending each `write_scalars` call to a JSON-lines file, exactly (a float32
    scalar round-trips through Python's float repr): for scripts, diffs and tests."""

    def __init__(self, path: str | Path):
        self._path = storage.path(path)

    def write_scalars(self, step: int, scalars) -> None:
        line = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        storage.append_text(self._path, json.dumps(line) + "\n")

    def write_summaries(self, step, values, metadata=None):
        pass

    def write_images(self, step, images):
        pass

    def write_videos(self, step, videos):
        pass

    def write_audios(self, step, audios, *, sample_rate):
        pass

    def write_texts(self, step, texts):
        pass

    def write_histograms(self, step, arrays, num_buckets=None):
        pass

    def write_hparams(self, hparams):
        pass

    def flush(self):
        pass

    def close(self):
        pass


def create_writer(workdir: str | Path, is_writer: bool) -> metric_writers.MetricWriter:
    """Process 0: TensorBoard, the log and <workdir>/metrics.jsonl; other processes: the log."""
    if not is_writer:
        return metric_writers.create_default_writer(just_logging=True)
    return metric_writers.MultiWriter(
        [
            metric_writers.create_default_writer(os.fspath(workdir)),
            JsonlWriter(storage.path(workdir) / "metrics.jsonl"),
        ]
    )


def read_metrics(workdir: str | Path) -> dict[int, dict]:
    """<workdir>/metrics.jsonl by step (a step logged again after a resume: the last entry)."""
    by_step: dict[int, dict] = {}
    path = storage.path(workdir) / "metrics.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            by_step.setdefault(entry["step"], {}).update(entry)
    return by_step
