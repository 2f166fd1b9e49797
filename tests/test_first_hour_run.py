"""What a user meets in the first hour at the command line (issue 25): a missing flag or a bad
one is one `error:` line and exit status 2, every --help exits 0 and --helpshort is shorter;
all-zero class weights are named as such; a workdir that can't be written is one line naming
it; a failed start leaves no workdir and no lock behind; `predict` refuses, by name, an image
too large to decode (from its header) and a blank one; the launch scripts the docs call
directly are executable.
"""

import errno
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from absl import app, flags
from PIL import Image

from alz_jax.data import preprocess
from alz_jax.host import command, workdir_lock
from alz_jax.host.errors import UserError, exit_on_user_error
from alz_jax.run import prediction, specs, train
from alz_jax.tfds_builders.mri_slices import audit
from alz_jax.tfds_builders.mri_slices.layouts.base import LayoutError
from tests import tiny_config

REPO = Path(__file__).resolve().parents[1]
POINTER = "--help lists this command's flags; new here? Try `make demo` first, see README.md."


def run_command(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m alz_jax.<args>` as a user runs it (one CPU device, no huge-page restart)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), XLA_FLAGS="", ALZ_JAX_HUGE_PAGES="off")
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, check=False)  # fmt: skip


# ---- Flags and help ----


def test_main_without_flags_is_one_error_line_with_exit_2_and_help_exits_0(tmp_path):
    bare = run_command("alz_jax.main", cwd=tmp_path)
    assert bare.returncode == 2, bare.stderr[-2000:]
    assert bare.stderr.strip().splitlines() == [f"error: --config is required. {POINTER}"]
    assert "FATAL" not in bare.stderr and bare.stdout == ""
    full = run_command("alz_jax.main", "--help", cwd=tmp_path)
    short = run_command("alz_jax.main", "--helpshort", cwd=tmp_path)
    assert (full.returncode, short.returncode) == (0, 0), full.stderr[-2000:]
    for text in (full.stdout, short.stdout):
        assert text.startswith("Command: train and evaluate.") and "--config:" in text
        assert "--workdir:" in text
    # --help: every flag (absl's logging ones too); --helpshort: the command's own only.
    assert "--verbosity:" in full.stdout and "--verbosity:" not in short.stdout
    assert len(short.stdout) < len(full.stdout) / 2
    assert full.stdout.rstrip().endswith("--helpshort: this command's flags only.")
    assert list(tmp_path.iterdir()) == []  # no runs/ folder


def test_audit_without_flags_exits_2_naming_the_flag(tmp_path):
    bare = run_command("alz_jax.audit", cwd=tmp_path)
    assert bare.returncode == 2, bare.stderr[-2000:]
    assert bare.stderr.strip().splitlines() == [f"error: --manual_dir is required. {POINTER}"]


COMMANDS = {
    "audit", "bench/__main__", "compare", "cross_validate", "demo", "evaluate", "export",
    "leakage_calibration", "main", "predict", "preview", "stages_figures", "synthetic",
    "volumes_figures",
}  # fmt: skip
# Measuring scripts with argparse, whose exits already are the promised ones (2, help 0).
ARGPARSE_SCRIPTS = {"bench/audit_scale", "bench/volume_scale"}


def test_every_command_starts_through_command_run():
    """Each `python -m alz_jax.X` gets the flag handling above: through command.run, never
    absl's app.run directly (which exits 1 on --help and on a missing flag)."""
    package = REPO / "alz_jax"
    entry_points = {
        str(p.relative_to(package).with_suffix(""))
        for p in package.rglob("*.py")
        # reference/: scripts for the PyTorch environment, with argparse (exit 2, help 0)
        if 'if __name__ == "__main__":' in p.read_text() and p.parent.name != "reference"
    }
    assert entry_points == COMMANDS | ARGPARSE_SCRIPTS
    for name in ARGPARSE_SCRIPTS:
        assert "argparse.ArgumentParser(" in (package / f"{name}.py").read_text(), name
    for name in COMMANDS:
        source = (package / f"{name}.py").read_text()
        assert re.search(r"^    command\.run\(main\b", source, re.M), name
    direct = [str(p) for p in package.rglob("*.py")
              if "app.run(" in p.read_text() and p.name != "command.py"]  # fmt: skip
    assert direct == []


def _flag_values() -> flags.FlagValues:
    values = flags.FlagValues()
    flags.DEFINE_string("data", None, "", flag_values=values, required=True)
    flags.DEFINE_string("out", None, "", flag_values=values, required=True)
    flags.DEFINE_enum("split", "test", ["train", "test"], "", flag_values=values)
    return values


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["prog"], f"error: --data and --out are required. {POINTER}"),
        (["prog", "--data=x"], f"error: --out is required. {POINTER}"),
        (["prog", "--data=x", "--out=y", "--splt=train"],
         f"error: Unknown command line flag 'splt'. Did you mean: split? {POINTER}"),
        (["prog", "--data=x", "--out=y", "--split=val"],
         f"error: flag --split=val: value should be one of <train|test>. {POINTER}"),
    ],
)  # fmt: skip
def test_flag_errors_are_one_line_and_exit_2(argv, line, capsys):
    with pytest.raises(SystemExit) as exited:
        command.parse_flags(argv, _flag_values())
    assert exited.value.code == 2
    assert capsys.readouterr().err.splitlines() == [line]


def test_a_usage_error_in_a_command_is_one_line_and_exit_2(capsys):
    # `python -m alz_jax.bench` without a benchmark raises absl's UsageError (absl: exit 1 and
    # the whole usage text).
    with pytest.raises(SystemExit) as exited, exit_on_user_error():
        raise app.UsageError("Give one benchmark first: step | compare.")
    assert exited.value.code == 2
    assert capsys.readouterr().err == "error: Give one benchmark first: step | compare.\n"


# ---- Class weights ----


def test_all_zero_class_weights_say_one_must_be_positive():
    with pytest.raises(UserError) as zero:
        specs.parse_class_weights("0,0,0,0", 4)
    assert str(zero.value) == (
        "config.optim.class_weights = '0,0,0,0': every weight is 0; at least one must be "
        "positive (a class of weight 0 adds nothing to the loss)."
    )
    with pytest.raises(UserError, match=r"4 comma-separated weights >= 0 .* at least one of them"):
        specs.parse_class_weights("1,-1,1,1", 4)
    assert specs.parse_class_weights("0,0,1,0", 4) == "0,0,1,0"


# ---- The workdir: unwritable, and a failed start ----


def test_a_workdir_under_a_file_is_one_line_naming_it(tmp_path):
    (tmp_path / "file").write_text("x")
    workdir = tmp_path / "file" / "run"
    with pytest.raises(UserError) as error, workdir_lock.hold(workdir):
        pass
    assert str(error.value) == (
        f"workdir {workdir}: can't create the folder (Not a directory). Give a folder you can "
        "write to with --workdir."
    )
    with (
        pytest.raises(UserError, match=r"is a file, not a folder"),
        workdir_lock.hold(tmp_path / "file"),
    ):
        pass


def test_a_read_only_workdir_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    # Tests run as root, whom chmod doesn't stop: the file system's answer is simulated.
    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    workdir = tmp_path / "runs" / "demo"
    monkeypatch.setattr(workdir_lock.os, "open", read_only)
    with pytest.raises(UserError) as error, workdir_lock.hold(workdir):
        pass
    assert str(error.value) == (
        f"workdir {workdir}: can't write its lock file run.lock (Read-only file system). Give a "
        "folder you can write to with --workdir."
    )
    assert list(tmp_path.iterdir()) == []  # the folders it made are gone again
    monkeypatch.undo()

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(workdir_lock.os, "fsync", disk_full)
    full = r"lock file run.lock \(No space left on device\)"
    with pytest.raises(UserError, match=full), workdir_lock.hold(workdir):
        pass
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(Path, "mkdir", read_only)
    unwritable = r"can't create the folder \(Read-only file system\)"
    with pytest.raises(UserError, match=unwritable), workdir_lock.hold(workdir):
        pass


def test_a_failed_start_removes_what_it_created_and_nothing_else(tmp_path):
    workdir = tmp_path / "runs" / "demo"
    with pytest.raises(UserError), workdir_lock.hold(workdir):
        assert (workdir / "run.lock").is_file()
        raise UserError("the data folder does not exist")
    assert list(tmp_path.iterdir()) == []
    # A workdir that was there: kept, only this start's lock file goes.
    workdir.mkdir(parents=True)
    with pytest.raises(UserError), workdir_lock.hold(workdir):
        raise UserError("bad")
    assert workdir.is_dir() and list(workdir.iterdir()) == []
    # A lock file that was there (an earlier run's, emptied): kept.
    (workdir / "run.lock").write_text("")
    with pytest.raises(UserError), workdir_lock.hold(workdir):
        raise UserError("bad")
    assert [p.name for p in workdir.iterdir()] == ["run.lock"]
    # A run that wrote something before failing: its lock is emptied as on any end, not deleted.
    other = tmp_path / "other"
    with pytest.raises(RuntimeError), workdir_lock.hold(other):
        (other / "config.json").write_text("{}")
        raise RuntimeError("diverged")
    assert sorted(p.name for p in other.iterdir()) == ["config.json", "run.lock"]
    assert (other / "run.lock").read_text() == ""


def test_a_deleted_lock_file_is_not_held(tmp_path):
    path = tmp_path / "run.lock"
    path.write_text("")
    fd = os.open(path, os.O_RDWR)
    try:
        assert workdir_lock._still_at_path(fd, path)
        path.unlink()
        assert not workdir_lock._still_at_path(fd, path)
        path.write_text("")  # a new file at the path: another one than the descriptor's
        assert not workdir_lock._still_at_path(fd, path)
    finally:
        os.close(fd)


@pytest.mark.parametrize("fault", ["missing data folder", "missing init_from file"])
def test_a_run_that_fails_to_start_leaves_no_runs_folder(fault, tmp_path, monkeypatch):
    """Faults met after the workdir lock was taken (a config value's file, the data folder)."""
    here = tmp_path / "here"  # the folder the user runs `main` from
    here.mkdir()
    monkeypatch.chdir(here)
    config = tiny_config.get_config()
    config.data.manual_dir = str(tmp_path / "no_such_folder")
    config.data.data_dir = str(tmp_path / "tfds")
    if fault == "missing init_from file":
        config.model.init_from = f"torchvision:{tmp_path / 'none.safetensors'}"
    with pytest.raises((UserError, LayoutError)) as error:
        train.train_and_evaluate(config, "runs/tiny")
    assert ("init_from" in str(error.value)) == (fault == "missing init_from file")
    assert list(here.iterdir()) == []


# ---- predict: images too large to decode, and blank ones ----


def _png_header(width: int, height: int) -> bytes:
    """A PNG whose header gives `width` x `height` (its pixel data is not: never decoded)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))  # fmt: skip


def test_predict_refuses_huge_and_blank_images_by_name(tmp_path, monkeypatch):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(folder / "brain.png"), rng.integers(0, 255, (40, 30), np.uint8))
    cv2.imwrite(str(folder / "black.png"), np.full((40, 30), 2, np.uint8))
    cv2.imwrite(str(folder / "white.jpg"), np.full((40, 30), 255, np.uint8))
    (folder / "huge.png").write_bytes(_png_header(20000, 20000))  # 99 bytes on disk
    (folder / "corrupt.png").write_bytes(b"\x89PNG not really")
    decoded = []
    decode = preprocess.decode_image

    def recording_decode(data, name):
        decoded.append(Path(name).name)
        return decode(data, name)

    monkeypatch.setattr(preprocess, "decode_image", recording_decode)
    files, missing = prediction.find_inputs([str(folder)])
    errors, refused = [], []
    read = list(prediction.read_inputs(files, 32, errors, refused))
    assert missing == [] and [p.name for p, _ in read] == ["brain.png"]
    assert read[0][1].shape == (32, 32, 1)
    assert "huge.png" not in decoded  # refused from its header
    assert [Path(e["file"]).name for e in errors] == ["corrupt.png"]
    reasons = {Path(e["file"]).name: e["error"] for e in refused}
    assert list(reasons) == ["black.png", "huge.png", "white.jpg"]
    assert reasons["black.png"] == (
        "blank: mean intensity 2.0 of 255, under the data audit's near-black limit 3; no "
        "anatomy to diagnose."
    )
    assert reasons["huge.png"] == (
        "too large to decode: 400,000,000 pixels, over its limit of 178,956,970 (the data "
        "audit's, Pillow's decompression limit)."
    )
    assert reasons["white.jpg"] == "blank: every pixel is 255; no anatomy to diagnose."
    # The limit is the audit's: lowered, the audit and predict refuse the same ordinary image.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)
    checked = audit.check_bytes((folder / "brain.png").read_bytes(), None)
    assert checked.problem == "unreadable"
    assert checked.detail.startswith("DecompressionBombError")
    with pytest.raises(prediction.RefusedImageError, match="too large to decode"):
        prediction.check_pixel_count(folder / "brain.png")


def test_refused_images_are_printed_and_written_beside_the_predictions(tmp_path):
    result = {
        "checkpoint_step": 3, "weights": "raw",
        "calibration": {"temperature": 1.0, "thresholds": {"slice": 0.5, "scan": 0.5},
                        "threshold_method": "youden"},
        "task": "binary", "class_names": ["NC", "AD"], "images": [], "scans": [],
        "errors": [{"file": "a/corrupt.png", "error": "not a decodable JPEG/PNG image"}],
        "refused": [{"file": "a/black.png", "error": "blank: every pixel is 0; no anatomy."}],
    }  # fmt: skip
    lines = prediction.format_result(result).splitlines()
    assert "REFUSED  a/black.png: blank: every pixel is 0; no anatomy." in lines
    assert lines[-1] == "0 images predicted, 1 unreadable, 1 refused (too large or blank)."
    written = prediction.write_output(tmp_path / "out.csv", result)
    assert [p.name for p in written] == ["out.csv", "out_errors.csv", "out_refused.csv"]
    assert "a/black.png" in (tmp_path / "out_refused.csv").read_text()


# ---- Launch scripts ----


def test_launch_scripts_the_docs_call_directly_are_executable_in_git():
    texts = [(REPO / "README.md").read_text()] + [p.read_text() for p in REPO.glob("docs/*.md")]
    # `launch/x.sh ...` at the start of a command, not `bash launch/x.sh` or `sbatch ...`.
    called = {
        m[1] for text in texts
        for m in re.finditer(r"(?:^|[`\n]|    )(launch/[\w.-]+\.(?:sh|sbatch))\b", text)
    }  # fmt: skip
    assert "launch/gpu_check.sh" in called and "launch/local.sh" in called
    listed = subprocess.run(["git", "ls-files", "-s", "launch"], cwd=REPO, capture_output=True,
                            text=True, check=False)  # fmt: skip
    if listed.returncode:
        pytest.skip("not a git checkout")
    modes = {line.split()[3]: line.split()[0] for line in listed.stdout.splitlines()}
    assert {script: modes.get(script) for script in called} == dict.fromkeys(called, "100755")
    for script in called:
        assert os.access(REPO / script, os.X_OK), script
