"""Fault injection for runs: a stale data set, two runs in one workdir, damaged checkpoints, a
full disk, and a start that fails before its first checkpoint. Each test makes the fault and
checks the outcome: the message's first line, the exit status, and what was kept.
(tests/test_faults_input.py does the same for bad input; docs/faults.md lists them all.)
"""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alz_jax.core import checkpointing, sharding
from alz_jax.data import dataset
from alz_jax.host import workdir_lock
from alz_jax.host.errors import UserError
from tests.xla_flags import ONE_DEVICE_XLA_FLAGS

REPO = Path(__file__).resolve().parents[1]


# ---- Data freshness ----


def _prepare(manual_dir, data_dir, **fields):
    return dataset.prepare(
        dataset.DataSpec(data_dir=str(data_dir), manual_dir=str(manual_dir), **fields)
    )


def test_a_changed_folder_is_built_anew_never_served_stale(adni_copy, tmp_path, caplog):
    manual_dir, spec = adni_copy
    data_dir = tmp_path / "tfds"
    first = _prepare(manual_dir, data_dir)
    assert first.builder.info.splits.total_num_examples == sum(spec.images.values())
    again = _prepare(manual_dir, data_dir)  # unchanged: the same build, nothing rebuilt
    assert again.source_fingerprint == first.source_fingerprint
    assert len(list(data_dir.glob("adni-*"))) == 1

    # A scan added (as the audit suggests after a repair): a new build with the new count,
    # a log line saying what changed, and the old build kept.
    scan_dir = manual_dir / "train" / "AD"
    for image in sorted(scan_dir.glob("*.jpeg"))[:3]:
        shutil.copy(image, scan_dir / image.name.replace(image.name.split("_")[0], "9999999"))
    caplog.set_level(logging.WARNING)
    changed = _prepare(manual_dir, data_dir)
    assert changed.source_fingerprint != first.source_fingerprint
    assert changed.builder.info.splits.total_num_examples == sum(spec.images.values()) + 3
    (line,) = [r.getMessage() for r in caplog.records if "changed since" in r.getMessage()]
    assert "added 3, removed 0, changed 0 files" in line
    assert len(list(data_dir.glob("adni-*"))) == 2
    assert changed.report_metadata()["source_fingerprint"] == changed.source_fingerprint

    # Metadata edited (a subject corrected): built anew too, and said so.
    caplog.clear()
    metadata = manual_dir / "meta_data_with_label.json"
    metadata.write_text(metadata.read_text().replace('"NC"', '"NC" '))
    edited = _prepare(manual_dir, data_dir)
    assert edited.source_fingerprint not in (first.source_fingerprint, changed.source_fingerprint)
    assert any("metadata edited" in r.getMessage() for r in caplog.records)


def test_leftovers_of_a_killed_build_are_removed_and_named(adni_copy, tmp_path, caplog):
    from alz_jax.tfds_builders.mri_slices import source

    manual_dir, _ = adni_copy
    data_dir = tmp_path / "tfds"
    fingerprint = source.fingerprint(source.listing(manual_dir))
    leftover = data_dir / f"adni-{fingerprint}" / "adni" / "default" / "incomplete.x1_1.0.0"
    leftover.mkdir(parents=True)
    (leftover / "adni-train.array_record-00000-of-00001").write_bytes(b"\0" * 1000)
    caplog.set_level(logging.WARNING)
    data = _prepare(manual_dir, data_dir)
    assert not leftover.exists() and data.source_fingerprint == fingerprint
    assert any(f"Removing {leftover} (1000 bytes)" in r.getMessage() for r in caplog.records)


def test_metadata_labels_contradicting_folders_stop_the_run_unless_folders_are_trusted(
    adni_copy, tmp_path, caplog
):
    manual_dir, spec = adni_copy
    metadata_path = manual_dir / "meta_data_with_label.json"
    metadata = json.loads(metadata_path.read_text())
    scan = sorted(s for s, label in spec.label_of_scan.items() if label == "AD")[0]
    metadata[scan]["label"] = "CN"  # ADNI's spelling of a normal control
    metadata_path.write_text(json.dumps(metadata))
    data_dir = tmp_path / "tfds"
    with pytest.raises(UserError) as refused:
        _prepare(manual_dir, data_dir)
    first_line = str(refused.value).splitlines()[0]
    assert first_line.startswith(
        f"1 of {len(metadata)} scans ({1 / len(metadata):.1%}) have a metadata label that "
        f"contradicts their class folder, e.g. scan {scan} in "
    )
    assert "is NC in the metadata" in first_line and "trust_folder_labels=true" in first_line
    caplog.set_level(logging.WARNING)
    trusted = _prepare(manual_dir, data_dir, trust_folder_labels=True)  # the same build, reused
    assert len(list(data_dir.glob("adni-*"))) == 1 and trusted.num_examples("test") > 0
    assert any("Training on the folder labels" in r.getMessage() for r in caplog.records)
    assert _prepare(manual_dir, data_dir, max_label_conflicts=0.5).num_examples("test") > 0


# ---- One run per workdir ----


def test_a_second_run_in_a_workdir_is_refused_naming_the_holder(tmp_path):
    workdir = tmp_path / "run"
    with workdir_lock.hold(workdir) as holder:
        assert holder["pid"] == os.getpid()
        with pytest.raises(UserError) as refused, workdir_lock.hold(workdir):
            pass
        first_line = str(refused.value).splitlines()[0]
        assert first_line.startswith(f"{workdir} is in use by the run of PID {os.getpid()}")
    with workdir_lock.hold(workdir):  # released: the next run takes it
        pass
    assert [p.name for p in workdir.iterdir()] == ["run.lock"]


def test_the_lock_of_a_killed_run_is_taken_over_with_a_warning(tmp_path, caplog):
    workdir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom alz_jax.host import workdir_lock\n"
         "with workdir_lock.hold(sys.argv[1]):\n    print('held', flush=True)\n"
         "    time.sleep(120)\n", str(workdir)],
        cwd=REPO, stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, XLA_FLAGS=ONE_DEVICE_XLA_FLAGS),
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"PID {holder.pid}"), workdir_lock.hold(workdir):
            pass
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    finally:
        if holder.poll() is None:
            holder.kill()
    caplog.set_level(logging.WARNING)
    with workdir_lock.hold(workdir):
        pass
    assert any(f"PID {holder.pid}" in r.getMessage() and "which is gone" in r.getMessage()
               for r in caplog.records)  # fmt: skip


def test_main_in_a_held_workdir_exits_2_at_once_and_writes_nothing(tmp_path, adni_like):
    workdir = tmp_path / "run"
    with workdir_lock.hold(workdir):
        result = subprocess.run(
            [sys.executable, "-m", "alz_jax.main", "--config=tests/tiny_config.py",
             f"--workdir={workdir}", f"--config.data.manual_dir={adni_like[0]}",
             f"--config.data.data_dir={tmp_path / 'tfds'}"],
            cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
            env=dict(os.environ, XLA_FLAGS=ONE_DEVICE_XLA_FLAGS),
        )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors[0].startswith(f"error: {workdir} is in use by the run of PID {os.getpid()}")
    assert [p.name for p in workdir.iterdir()] == ["run.lock"]
    assert not (tmp_path / "tfds").exists()


# ---- Damaged checkpoints ----


def _state(value: float) -> dict:
    return {"w": jnp.full((4096,), value), "layers": [{"k": jnp.full((3, 3), value)}],
            "step": jnp.int32(int(value))}  # fmt: skip


def _abstract(shape=(4096,)):
    repl = sharding.replicated(sharding.make_mesh())
    tree = jax.eval_shape(lambda: _state(0.0))
    tree["w"] = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=repl), tree)


def _saved(workdir, steps=(1, 2)):
    manager = checkpointing.make_manager(
        workdir, checkpointing.CheckpointSpec(keep_latest=3), for_training=True
    )
    for step in steps:
        checkpointing.save(manager, step, _state(float(step)), {"validation/loss": 1.0 / step})
    checkpointing.finish(manager)
    return workdir / "checkpoints"


def _largest(folder: Path) -> Path:
    return max((p for p in folder.rglob("*") if p.is_file() and p.name != "checksums.json"),
               key=lambda p: p.stat().st_size)  # fmt: skip


def _truncate(step_dir):
    path = _largest(step_dir / "state")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip(step_dir):
    path = _largest(step_dir / "state")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _unchecked(damage):
    """The damage on a step without checksums (killed before they were written): Orbax's own
    reading must catch it."""

    def apply(step_dir):
        (step_dir / "checksums.json").unlink()
        damage(step_dir)

    return apply


DAMAGE = {
    "truncated array file": (_truncate, "bytes, "),
    "flipped byte": (_flip, "fails its checksum"),
    "missing tree metadata": (lambda d: (d / "state" / "_METADATA").unlink(), "is missing"),
    "missing checkpoint metadata": (
        lambda d: (d / "_CHECKPOINT_METADATA").unlink(),
        "_CHECKPOINT_METADATA is missing",
    ),
    "missing state folder": (lambda d: shutil.rmtree(d / "state"), "is missing"),
    "unchecked, missing tree metadata": (
        _unchecked(lambda d: (d / "state" / "_METADATA").unlink()),
        "_METADATA",
    ),
    "unchecked, corrupt tree metadata": (
        _unchecked(lambda d: (d / "state" / "_METADATA").write_text("{not json")),
        "Error",
    ),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_latest_checkpoint_falls_back_to_the_previous(kind, tmp_path, caplog):
    damage, reason = DAMAGE[kind]
    directory = _saved(tmp_path)
    damage(directory / "2")
    caplog.set_level(logging.WARNING)
    manager = checkpointing.make_manager(tmp_path, checkpointing.CheckpointSpec(keep_latest=3),
                                         for_training=True)  # fmt: skip
    state, step = checkpointing.restore_latest(manager, _abstract())
    assert step == 1 and np.all(np.asarray(state["w"]) == 1.0)
    (line,) = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]
    assert line.startswith(f"Checkpoint 2 in {directory} is damaged (") and reason in line
    (aside,) = (tmp_path / "checkpoints_damaged").iterdir()  # moved aside, not deleted
    assert aside.name.startswith("2-") and reason in (aside / "why.txt").read_text()
    assert manager.all_steps() == [1] and sorted(p.name for p in directory.iterdir()) == ["1"]


def test_no_restorable_checkpoint_is_a_user_error_keeping_everything(tmp_path):
    directory = _saved(tmp_path)
    _flip(directory / "1")
    _truncate(directory / "2")
    manager = checkpointing.make_manager(
        tmp_path, checkpointing.CheckpointSpec(), for_training=True
    )
    with pytest.raises(UserError) as error:
        checkpointing.restore_latest(manager, _abstract())
    assert str(error.value).startswith(f"No checkpoint in {directory} can be restored: step 2: ")
    assert len(list((tmp_path / "checkpoints_damaged").iterdir())) == 2


def test_another_models_checkpoint_is_refused_not_moved_aside(tmp_path):
    directory = _saved(tmp_path)
    manager = checkpointing.make_manager(
        tmp_path, checkpointing.CheckpointSpec(), for_training=True
    )
    with pytest.raises(UserError, match=r"holds another model .* w: saved \(4096,\), model \(8,\)"):
        checkpointing.restore_latest(manager, _abstract(shape=(8,)))
    assert sorted(p.name for p in directory.iterdir()) == ["1", "2"]
    assert not (tmp_path / "checkpoints_damaged").exists()


def test_evaluating_a_damaged_checkpoint_is_refused_naming_the_damage(tmp_path):
    directory = _saved(tmp_path)
    _flip(directory / "2")
    manager = checkpointing.make_manager(tmp_path, checkpointing.CheckpointSpec())
    weights = {"w": _abstract()["w"]}
    with pytest.raises(UserError, match=r"^Checkpoint 2 in .* is damaged \(.*fails its checksum"):
        checkpointing.restore_weights(manager, 2, weights)
    assert float(checkpointing.restore_weights(manager, 1, weights)["w"][0]) == 1.0
    assert sorted(p.name for p in directory.iterdir()) == ["1", "2"]  # evaluation moves nothing


def test_an_empty_workdir_starts_fresh(tmp_path):
    manager = checkpointing.make_manager(
        tmp_path, checkpointing.CheckpointSpec(), for_training=True
    )
    assert checkpointing.restore_latest(manager, _abstract()) == (None, 0)


# ---- A full disk ----


@pytest.fixture
def small_disk(tmp_path):
    """A 300 KB tmpfs (root only: skipped elsewhere; CI runs as root)."""
    mount = tmp_path / "small"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount)],
                            capture_output=True, text=True, check=False)  # fmt: skip
    if result.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {result.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


# Orbax's failed writes leave an asyncio callback that runs after its loop closed: noise, not
# the behaviour under test.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_disk_full_while_saving_names_the_folder_and_the_last_intact_checkpoint(small_disk):
    manager = checkpointing.make_manager(small_disk, checkpointing.CheckpointSpec(keep_latest=9),
                                         for_training=True)  # fmt: skip
    checkpointing.save(manager, 1, _state(1.0), {"validation/loss": 1.0})
    checkpointing.finish(manager)
    noise = jax.random.normal(jax.random.key(0), (200_000,))  # incompressible: 800 KB
    big = {"w": noise, "layers": [{"k": jnp.ones((3, 3))}], "step": jnp.int32(2)}
    with pytest.raises(UserError) as error:
        checkpointing.save(manager, 2, big, {"validation/loss": 0.5})
        checkpointing.finish(manager, 2)
    message = str(error.value)
    assert len(message.splitlines()) == 1
    assert message.startswith(
        f"Disk full while saving checkpoint 2 in {small_disk / 'checkpoints'}"
    )
    assert "bytes free of" in message and "the last intact checkpoint is step 1" in message
    reread = checkpointing.make_manager(small_disk, checkpointing.CheckpointSpec(),
                                        for_training=True)  # fmt: skip
    state, step = checkpointing.restore_latest(reread, _abstract())
    assert step == 1 and float(state["w"][0]) == 1.0


def test_checksums_are_written_once_a_save_is_finished(tmp_path):
    directory = _saved(tmp_path, steps=(1,))
    sums = json.loads((directory / "1" / "checksums.json").read_text())
    assert "state/_METADATA" in sums and checkpointing.verify(directory / "1") is None
