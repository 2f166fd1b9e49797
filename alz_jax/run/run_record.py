"""The record of every run in its workdir: config, code version, packages, data and splits.

<workdir>/run/ holds config.json (the resolved config of the first start), record.json (data
fingerprint, pixel statistics, what defines the model and data), split_manifest.json (which
subjects and scans are in which split) and starts.jsonl (one line per start or resume: time,
git commit, package versions, command line). A resume whose config changes the model, the data
or the split is refused with the differences listed.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import ml_collections

from alz_jax.host import storage
from alz_jax.host.errors import UserError
from alz_jax.run import config_lib

PACKAGES = (
    "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "tensorflow-datasets",
    "array-record", "clu", "ml-collections", "numpy", "opencv-python-headless",
)  # fmt: skip


def git_commit() -> str:
    """The commit of the code being run (with '-dirty' for uncommitted changes), or 'unknown'."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages that decide a run's numbers."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def identity(config: ml_collections.ConfigDict, data_fingerprint: str) -> dict:
    """What must not change when a run resumes: the model, the data, the split, and the
    training recipe (a new batch size, seed, duration or optimizer would change the data stream
    or the schedule mid-run)."""
    return {
        # The depthwise implementation is not part of a run: every one has the same parameters.
        "model": {k: v for k, v in config.model.to_dict().items() if k != "depthwise"},
        "training": {
            "seed": config.seed,
            "batch_size": config.batch_size,
            "num_epochs": config.num_epochs,
            "num_train_steps": config.num_train_steps,
            "warmup_epochs": config.warmup_epochs,
            "warmup_steps": config.warmup_steps,
            "optim": config.optim.to_dict(),
            "augment": config.augment.to_dict(),
            "mix": config.mix.to_dict() if "mix" in config else None,
            # Resolved: 'auto' started on CPU (float32) must not resume on a GPU in bfloat16.
            "compute_dtype": config_lib.compute_dtype(config),
            "grad_accum_steps": config.get("grad_accum_steps", 1),
            "ema": config.ema.to_dict() if "ema" in config else None,
            "swa": config.swa.to_dict() if "swa" in config else None,
        },
        "data": {
            "fingerprint": data_fingerprint,
            "manual_dir": config.data.manual_dir,
            "synthetic_seed": config.data.synthetic_seed,
            "validation_fraction": config.data.validation_fraction,
            "split_seed": config.data.split_seed,
            "protocol": config.data.get("protocol", "official"),
            "resplit_fractions": config.data.get("resplit_fractions"),
            "num_folds": config.data.get("num_folds"),
            "fold": config.data.get("fold"),
            "slice_range": config.data.get("slice_range", ""),
            "image_size": config.data.image_size,
        },
    }


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif json.dumps(a) != json.dumps(b):
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def _write_json(path, value) -> None:
    storage.write_text_atomic(path, json.dumps(value, indent=1, sort_keys=True, default=str))


def start(
    workdir: str | Path,
    config: ml_collections.ConfigDict,
    data_fingerprint: str,
    manifest: Callable[[], dict],
    pixel_stats: Callable[[], dict],
    is_writer: bool = True,
) -> dict:
    """Records a start or resume; returns the run record (with pixel statistics).

    A first start computes and stores the pixel statistics and the split manifest; a resume
    checks the model and data identity against the stored one and reuses the statistics.
    """
    run_dir = storage.path(workdir) / "run"
    record_path = run_dir / "record.json"
    current = identity(config, data_fingerprint)
    if record_path.exists():
        record = json.loads(record_path.read_text())
        diffs = _differences(record["identity"], current)
        if diffs:
            raise UserError(
                f"{workdir} holds a run with a different model, data, split or training recipe; "
                "resuming would mix two runs. Use a new --workdir, or restore the original "
                "settings. Differences (stored -> requested):\n  " + "\n  ".join(diffs)
            )
    else:
        record = {
            "identity": current,
            "pixel_stats": pixel_stats(),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        if is_writer:
            run_dir.mkdir(parents=True, exist_ok=True)
            _write_json(run_dir / "config.json", json.loads(config.to_json_best_effort()))
            _write_json(run_dir / "split_manifest.json", manifest())
            _write_json(record_path, record)
    if is_writer:
        entry = {
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "git_commit": git_commit(),
            "versions": package_versions(),
            "argv": sys.argv,
            "config": json.loads(config.to_json_best_effort()),
        }
        storage.append_text(run_dir / "starts.jsonl", json.dumps(entry, default=str) + "\n")
    return record


def load_config(workdir: str | Path) -> ml_collections.ConfigDict:
    """The resolved config a run in `workdir` was started with."""
    path = storage.path(workdir) / "run" / "config.json"
    if not path.exists():
        raise UserError(f"{workdir} holds no run (expected {path}).")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def load(workdir: str | Path) -> dict:
    """The run record (identity, pixel statistics) of a run in `workdir`."""
    path = storage.path(workdir) / "run" / "record.json"
    if not path.exists():
        raise UserError(f"{workdir} holds no run record (expected {path}).")
    return json.loads(path.read_text())
