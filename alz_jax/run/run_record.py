"""The record of every run in its workdir: config, code version, packages, data and splits.

<workdir>/run/ holds config.json (the resolved config of the first start), record.json (data
fingerprint, pixel statistics, what defines the model and data), split_manifest.json (which
subjects and scans are in which split) and starts.jsonl (one line per start or resume: time,
git commit, package versions, command line). A resume whose config changes the model, the data
or the split is refused with the differences listed. Nothing is written before the start is
known to be good (the checkpoint restored, or the fresh state made), and a record whose start
saved no checkpoint is replaced by the next start's.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import logging
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import ml_collections
from absl import flags
from ml_collections.config_flags.config_flags import UnparsedFlagError

from alz_jax.host import command, storage
from alz_jax.host.errors import UserError
from alz_jax.models import registry
from alz_jax.run import specs

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


def identity(run: specs.RunSpec, data_fingerprint: str) -> dict:
    """What must not change when a run resumes: the model, the data, the split, and the
    training recipe (a new batch size, seed, duration or optimizer would change the data stream
    or the schedule mid-run)."""
    model = _model_identity(run.model)
    # The compute dtype is part of the recipe: 'auto' started on CPU (float32) must not resume
    # on a GPU in bfloat16.
    compute_dtype = run.model.dtype
    family = registry.record_family(run.model)
    if family is not None:  # the default family's runs, recorded before others, keep theirs
        model = {"family": family, **model}
    optim = dataclasses.asdict(run.optim)
    _drop_defaults(optim, {"trainable": "all", "frozen_batchnorm": "running"})
    step = dataclasses.asdict(run.step)
    del step["impl"]  # jit and shard_map compute the same update
    _drop_defaults(step, {"class_weights": (), "head": "softmax"})
    mix = dataclasses.asdict(run.pipeline.mix)
    del mix["total_steps"]  # follows from the durations
    data = dataclasses.asdict(run.data)
    for key in DATA_GATES:
        del data[key]
    _drop_defaults(data, ADDED_DATA_DEFAULTS)
    return {
        "model": {**model, "init_from": run.init_from},
        "training": {
            "seed": run.seed,
            "batch_size": run.batch_size,
            "durations": {d.name: [d.steps, d.epochs] for d in (run.train, run.warmup)},
            "optim": optim,
            "step": step,
            "augment": dataclasses.asdict(run.pipeline.augment),
            "mix": mix,
            "compute_dtype": compute_dtype,
            "averages": dataclasses.asdict(run.averages),
            "swa_start_fraction": run.swa_start_fraction,
            "swa_every": dataclasses.asdict(run.swa_every) if run.swa_every else None,
            **({"class_weights": run.class_weights} if run.class_weights != "none" else {}),
            **({"balanced_sampling": True} if run.pipeline.balanced_sampling else {}),
            **({"swa_bn_batches": run.swa_bn_batches} if run.swa_bn_batches else {}),
            **_pipeline_identity(run.pipeline),
        },
        "data": {
            "fingerprint": data_fingerprint,
            **data,
            "image_size": run.pipeline.image_size,
        },
    }


# config.data fields that gate the data's use rather than name it: no part of a run's identity.
DATA_GATES = ("trust_folder_labels", "max_label_conflicts", "allow_missing_classes",
              "allow_similar_class_names")  # fmt: skip

# Fields added after runs were first recorded (the dementia stages), left out of the identity
# at these defaults, so that a run recorded before they existed still resumes.
ADDED_DATA_DEFAULTS = {"layout": "auto", "label_names": "", "synthetic_layout": "adni",
                       "synthetic_subjects": 160, "group_near_duplicates": False,
                       "synthetic_difficulty": "standard",
                       "calibration_fraction": 0.0}  # fmt: skip


def _model_identity(spec) -> dict:
    """A model spec's fields that make a run: not its compute dtype (the recipe's) nor its
    depthwise implementation (every one has the same parameters); a scan model's encoder with
    its family. Fields added later are left out at their defaults: older runs keep their
    identity."""
    model = {f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}
    del model["dtype"]
    model.pop("depthwise", None)
    model.pop("remat", None)  # a scan model's gradient checkpointing: the same run, less memory
    _drop_defaults(model, {"head_dropout": 0.0, "spatial_attention": False, "head": "softmax"})
    if "encoder" in model:
        encoder = spec.encoder
        model["encoder"] = {"family": registry.family(encoder).name,
                            **_model_identity(encoder)}  # fmt: skip
    return model


def _pipeline_identity(pipeline) -> dict:
    """The input pipeline's settings that change what a run trains on, where set: bags of a
    scan's slices (a scan model) and 2.5D neighbours."""
    out = {}
    if pipeline.bags:
        out["bags"] = {"bag_size": pipeline.bag_size, "bag_augment": pipeline.bag_augment}
    if pipeline.neighbours:
        out["neighbours"] = pipeline.neighbours
    return out


def _drop_defaults(fields: dict, defaults: dict) -> None:
    for key, default in defaults.items():
        if fields.get(key) == default:
            del fields[key]


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


def prepare(
    workdir: str | Path,
    run: specs.RunSpec,
    data_fingerprint: str,
    pixel_stats: Callable[[], dict],
    has_checkpoint: bool,
) -> dict:
    """The run record of a start or resume, checked but not written (`write` does that once
    the start is known to be good: after the restore, or the fresh state).

    A resume (`has_checkpoint`) checks the model and data identity against the stored record and
    reuses its pixel statistics. A record left by a start that never saved a checkpoint is
    replaced: that start trained nothing, so its settings bind nothing.
    """
    record_path = storage.path(workdir) / "run" / "record.json"
    current = identity(run, data_fingerprint)
    if record_path.exists() and has_checkpoint:
        record = json.loads(record_path.read_text())
        diffs = _differences(record["identity"], current)
        if diffs:
            raise UserError(
                f"{workdir} holds a run with a different model, data, split or training recipe; "
                "resuming would mix two runs. Use a new --workdir, or restore the original "
                "settings. Differences (stored -> requested):\n  " + "\n  ".join(diffs)
            )
        return dict(record, new=False)
    if record_path.exists():
        logging.warning(
            "%s holds the record of a start that saved no checkpoint: replaced by this one.",
            record_path,
        )
    return {
        "identity": current,
        # The task resolved for the data set's classes (RunSpec.with_classes), for commands
        # that reopen the run without its data (predict, export, compare).
        "task": {
            "kind": run.task.kind,
            "num_classes": run.task.num_classes,
            "options": run.task.options(),
        },
        "pixel_stats": pixel_stats(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "new": True,
    }


def write(
    workdir: str | Path,
    config: ml_collections.ConfigDict,
    record: dict,
    manifest: Callable[[], dict],
    is_writer: bool = True,
) -> None:
    """Writes a new record (config, record, split manifest) and appends this start to
    starts.jsonl (time, commit, package versions, command line, config); process 0 only."""
    if not is_writer:
        return
    run_dir = storage.path(workdir) / "run"
    if record["new"]:
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_json(run_dir / "config.json", json.loads(config.to_json_best_effort()))
        _write_json(run_dir / "split_manifest.json", manifest())
        _write_json(run_dir / "record.json", {k: v for k, v in record.items() if k != "new"})
    entry = {
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "versions": package_versions(),
        "argv": sys.argv,
        "config_file": config_file(),
        "config": json.loads(config.to_json_best_effort()),
    }
    storage.append_text(run_dir / "starts.jsonl", json.dumps(entry, default=str) + "\n")


def config_file() -> str | None:
    """The file name of the --config this process was started with (`make demo`'s default
    included), for the reports to name; None in a process without one (a run from Python)."""
    if "config" not in flags.FLAGS or not flags.FLAGS.is_parsed():
        return None
    try:
        return command.config_file().name
    except UnparsedFlagError:  # defined by an imported command, never given
        return None


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
