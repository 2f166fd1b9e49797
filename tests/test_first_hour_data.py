"""Data errors a user meets in the first hour, each one `error: ...` line (and at most a one-line
hint), from the audit and from the build that `main` runs (`dataset.prepare`): float parquet
labels, a file name that is not UTF-8, a data_dir that cannot be written, a file (a .zip) given as
the data folder, ADNI's registration text only where ADNI is meant, and the folder errors naming
the flag of the command that runs."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alz_jax.data import dataset
from alz_jax.data.data_spec import DataSpec
from alz_jax.host.errors import UserError
from alz_jax.tfds_builders.mri_slices import source
from alz_jax.tfds_builders.mri_slices.layouts import registry
from alz_jax.tfds_builders.mri_slices.layouts.base import DataFolderError, LayoutError
from alz_jax.tfds_builders.mri_slices.layouts.classes import STAGES

REPO = Path(__file__).resolve().parents[1]
LABEL_NAMES = "Mild,Moderate,Non,VeryMild"


def _png(value: int) -> bytes:
    return cv2.imencode(".png", np.full((8, 8), value, np.uint8))[1].tobytes()


def _four_classes(root: Path) -> Path:
    """root/{train,test}/<stage>/<n>.png, 3 distinct tiny images per folder."""
    for s, split in enumerate(("train", "test")):
        for c, stage in enumerate(STAGES):
            (root / split / stage).mkdir(parents=True)
            for i in range(3):
                (root / split / stage / f"{i}.png").write_bytes(_png(10 + 60 * s + 12 * c + 3 * i))
    return root


def _parquet(root: Path, label_types: dict[str, pa.DataType]) -> Path:
    """root/<split>-00000-of-00001.parquet of 8 rows, labels 0..3 stored as `label_types`."""
    root.mkdir(parents=True)
    for s, (split, label_type) in enumerate(label_types.items()):
        labels = [0, 1, 2, 3] * 2
        images = [{"bytes": _png(5 + 20 * s + 2 * i), "path": None} for i in range(len(labels))]
        table = pa.table({"image": images, "label": pa.array(labels, type=label_type)})
        pq.write_table(table, root / f"{split}-00000-of-00001.parquet")
    return root


def _audit(*flags: str) -> subprocess.CompletedProcess:
    """`python -m alz_jax.audit FLAGS`, the project importable, no accelerator."""
    env = dict(os.environ, PYTHONPATH=str(REPO), XLA_FLAGS="", JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "alz_jax.audit", *flags], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip


def _error_lines(result: subprocess.CompletedProcess) -> list[str]:
    """The lines from `error: ...` on, asserting the command exited 2 without a traceback."""
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    return result.stderr[result.stderr.index("error: ") :].strip().splitlines()


def _prepare(manual_dir: Path, data_dir: Path, **fields) -> dataset.AdniData:
    return dataset.prepare(DataSpec(manual_dir=str(manual_dir), data_dir=str(data_dir), **fields))


# ---- 1. Float parquet labels. ----


def test_float_parquet_labels_are_refused_naming_the_file(tmp_path):
    root = _parquet(tmp_path / "pq", {"train": pa.float64(), "test": pa.int64()})
    expected = (
        f"{root / 'train-00000-of-00001.parquet'}: label column is float64; expected integers or "
        "strings"
    )
    for call in (registry.parse, registry.describe):  # the audit's and the build's first step
        with pytest.raises(LayoutError) as error:
            call(root, "auto", LABEL_NAMES.split(","))
        assert str(error.value).startswith(expected)
    with pytest.raises(UserError) as error:  # main's build: the line and the hint, nothing built
        _prepare(root, tmp_path / "tfds", label_names=LABEL_NAMES)
    lines = str(error.value).splitlines()
    assert lines[0].startswith(expected) and lines[1:] == [registry.LAYOUTS_HINT]
    assert not list((tmp_path / "tfds").glob("adni-*"))
    lines = _error_lines(_audit(f"--manual_dir={root}", f"--label_names={LABEL_NAMES}"))
    assert lines[0].startswith(f"error: {expected}") and lines[1:] == [registry.LAYOUTS_HINT]


# ---- 2. A file name that is not UTF-8. ----


def test_a_file_name_that_is_not_utf8_is_refused_by_audit_and_build_alike(tmp_path):
    root = _four_classes(tmp_path / "set")
    (root / "train" / "NonDemented" / "café_ü.png").write_bytes(_png(199))  # UTF-8: read
    assert "train/NonDemented/café_ü.png" in {r.file_name for r in registry.parse(root).records}
    bad = os.fsencode(root / "train" / "NonDemented") + b"/scan\xff_01.png"
    with open(bad, "wb") as f:
        f.write(_png(200))
    expected = (
        f"{root}/train/NonDemented/scan\\xff_01.png: the file name is not valid UTF-8 (bad bytes "
        "shown as \\xNN); rename it in UTF-8"
    )
    for call in (registry.parse, source.listing):  # what the audit and the build each read
        with pytest.raises(DataFolderError) as error:
            call(root)
        assert str(error.value).startswith(expected) and "\n" not in str(error.value)
    # The build refuses it before building anything (it used to fail inside TFDS).
    with pytest.raises(UserError, match=r"scan\\xff_01\.png: the file name is not valid"):
        _prepare(root, tmp_path / "tfds")
    assert not list((tmp_path / "tfds").glob("adni-*"))
    assert _error_lines(_audit(f"--manual_dir={root}")) == [f"error: {error.value}"]
    # Two such names: counted and listed, escaped, in one line.
    with open(os.fsencode(root / "test" / "MildDemented") + b"/x\xe9.png", "wb") as f:
        f.write(_png(201))
    with pytest.raises(DataFolderError) as error:
        source.listing(root)
    assert str(error.value) == (
        f"{root}: 2 file names are not valid UTF-8 (bad bytes shown as \\xNN): "
        "test/MildDemented/x\\xe9.png, train/NonDemented/scan\\xff_01.png; rename them in UTF-8 "
        "(e.g. convmv -f latin1 -t utf8 --notest -r DIR)."
    )


# ---- 3. A data_dir that cannot be written. ----


def test_a_data_dir_under_a_file_is_one_line_naming_the_setting(tmp_path):
    root = _four_classes(tmp_path / "set")
    (tmp_path / "a_file").write_text("")
    data_dir = tmp_path / "a_file" / "tfds"
    for fields in ({}, {"synthetic_seed": 0}):  # the build, and the synthetic set's generation
        manual_dir = root if not fields else None
        with pytest.raises(UserError) as error:
            dataset.prepare(DataSpec(manual_dir=manual_dir and str(manual_dir),
                                     data_dir=str(data_dir), **fields))  # fmt: skip
        assert str(error.value).startswith(
            f"data.data_dir {data_dir} cannot be written: Not a directory"
        )
        assert str(error.value).endswith("Give a folder this run can write to: "
                                         "--config.data.data_dir=DIR.")  # fmt: skip
        assert "\n" not in str(error.value)


def _read_only(monkeypatch, data_dir: Path) -> None:
    """Creating a folder under data_dir fails as on a read-only file system (tests run as root:
    chmod would not stop it). Every write of a build starts with creating its folder."""
    makedirs = os.makedirs

    def fake_makedirs(path, *args, **kwargs):
        if os.fspath(path).startswith(os.fspath(data_dir)):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
        return makedirs(path, *args, **kwargs)

    monkeypatch.setattr(os, "makedirs", fake_makedirs)


def test_a_read_only_data_dir_is_one_line_and_a_finished_build_there_is_read(tmp_path, monkeypatch):
    root = _four_classes(tmp_path / "set")
    with monkeypatch.context() as patch:
        _read_only(patch, tmp_path / "tfds")
        with pytest.raises(UserError) as error:
            _prepare(root, tmp_path / "tfds")
    assert str(error.value).startswith(
        f"data.data_dir {tmp_path / 'tfds'} cannot be written: Read-only file system. "
    )
    assert "--config.data.data_dir=DIR" in str(error.value) and "\n" not in str(error.value)
    built = _prepare(root, tmp_path / "tfds")
    # The same data_dir made read-only: the finished build is read, no lock taken.
    _read_only(monkeypatch, tmp_path / "tfds")
    again = _prepare(root, tmp_path / "tfds")
    assert again.fingerprint() == built.fingerprint() and again.num_examples("test") == 12


# ---- 4. A file given as the data folder. ----


@pytest.mark.parametrize(
    "name, todo",
    [("ADNI.zip", "unzip it and give the folder it unpacks to"),
     ("set.tar.gz", "unpack it and give the folder it unpacks to"),
     ("notes.txt", "give the folder holding the data set, unpacked if it is an archive")],
)  # fmt: skip
def test_a_file_given_as_the_data_folder_says_so_in_one_line(tmp_path, name, todo):
    path = tmp_path / name
    path.write_bytes(b"PK\x03\x04")
    expected = f"{path} is a file, not a folder; {todo} (--config.data.manual_dir=DIR)."
    with pytest.raises(UserError) as error:
        _prepare(path, tmp_path / "tfds")
    assert str(error.value) == expected
    with pytest.raises(DataFolderError) as error:
        registry.parse(path, "adni", setting="--manual_dir")
    assert str(error.value) == expected.replace("--config.data.manual_dir", "--manual_dir")


def test_the_audit_names_its_own_flag_for_a_zip(tmp_path):
    (tmp_path / "ADNI.zip").write_bytes(b"PK\x03\x04")
    assert _error_lines(_audit(f"--manual_dir={tmp_path / 'ADNI.zip'}")) == [
        f"error: {tmp_path / 'ADNI.zip'} is a file, not a folder; unzip it and give the folder it "
        "unpacks to (--manual_dir=DIR)."
    ]


def test_the_audit_names_its_own_flag_for_a_split_folder(tmp_path):
    root = _four_classes(tmp_path / "set")
    lines = _error_lines(_audit(f"--manual_dir={root / 'train'}"))
    assert len(lines) == 1 and f"not the whole set: set --manual_dir={root} (" in lines[0]
    assert "--config.data" not in lines[0]
    # The build names the config setting, as before.
    with pytest.raises(UserError, match=f"set --config.data.manual_dir={root} "):
        _prepare(root / "train", tmp_path / "tfds")


# ---- 5. ADNI's text only where ADNI is meant. ----


def test_adni_text_comes_only_where_adni_is_meant(tmp_path):
    stages = tmp_path / "stages"
    (stages / "train").mkdir(parents=True)  # a four-stage download gone wrong: no classes
    (stages / "train" / "notes.txt").write_text("")
    adni_like = tmp_path / "download"
    (adni_like / "AD_NC" / "train" / "AD").mkdir(parents=True)  # no test/: ADNI's layout, broken
    cases = [
        (stages, "auto", registry.LAYOUTS_HINT),
        (adni_like, "auto", registry.ADNI_HINT),
        (stages, "adni", registry.ADNI_HINT),
        (stages, "folders", registry.LAYOUTS_HINT),
    ]
    for folder, layout, hint in cases:
        with pytest.raises(UserError) as error:
            _prepare(folder, tmp_path / "tfds", layout=layout)
        lines = str(error.value).splitlines()
        assert len(lines) == 2 and lines[1] == hint, (folder, layout, lines)
        assert "cannot be downloaded automatically" not in str(error.value)
    assert "adni.loni.usc.edu" in registry.ADNI_HINT
    assert "adni.loni.usc.edu" not in registry.LAYOUTS_HINT
    # The audit too (its non-ADNI hint: test_float_parquet_labels_are_refused_naming_the_file).
    assert _error_lines(_audit(f"--manual_dir={adni_like}"))[1:] == [registry.ADNI_HINT]
