"""Metric writers: TensorBoard and the log through CLU, and <workdir>/metrics.jsonl.

Apart from `logs` because CLU's writers import TensorFlow (~4 s): a command's module stays quick
to import, which matters because Grain's worker processes import it again.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from clu import metric_writers

from alz_jax.host import storage


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
