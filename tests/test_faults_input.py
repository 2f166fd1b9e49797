"""Faults in what a user gives the project, each produced and its outcome checked: malformed or
wrongly shaped metadata, labels that contradict the class folders, long lists in messages,
spreadsheet formulas in CSV cells, non-finite imported weights, a bad predict --output, a config
typo on the command line, and numeric config fields out of range."""

import csv
import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from alz_jax.evaluation import tasks
from alz_jax.host import tables
from alz_jax.host.errors import UserError
from alz_jax.tfds_builders.mri_slices import audit
from alz_jax.tfds_builders.mri_slices.layouts import adni as layout

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "tests" / "fixtures" / "convnext_tiny_torchvision.safetensors"
DEPTHS, DIMS = (1, 1, 1, 1), (8, 12, 16, 24)  # the weight fixture's model


def _metadata(root: Path) -> dict:
    return json.loads((root / layout.METADATA_JSON).read_text())


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0]


# ---- 1. Malformed metadata: not UTF-8, not JSON. ----


def test_metadata_not_utf8_names_line_column_and_byte(adni_copy):
    root, _ = adni_copy
    (root / layout.METADATA_JSON).write_bytes(b'{\n  "2000001": {"source": "caf\xe9"}}')
    with pytest.raises(layout.LayoutError) as info:
        layout.parse(root)
    assert _first_line(info.value) == (
        f"{root / layout.METADATA_JSON}: not UTF-8 at line 2, column 29 (byte 0xe9); the file "
        "must be UTF-8 JSON. Save it as UTF-8 (e.g. iconv -f latin1 -t utf-8), or remove it."
    )


def test_metadata_not_json_names_line_and_column(adni_copy):
    root, _ = adni_copy
    (root / layout.METADATA_JSON).write_text('{\n  "2000001": {"source": "x"},\n}')
    with pytest.raises(layout.LayoutError, match=r"not valid JSON at line 3, column 1 \(") as e:
        layout.parse(root)
    assert str(e.value).startswith(str(root / layout.METADATA_JSON))
    assert "remove it (or give subjects.csv" in str(e.value)


def test_subjects_csv_not_utf8_names_line_and_column(adni_copy):
    root, _ = adni_copy
    (root / layout.METADATA_JSON).unlink()
    (root / layout.SUBJECTS_CSV).write_bytes(b"scan_id,subject_id\n2000001,011_S_\xff002\n")
    with pytest.raises(layout.LayoutError) as info:
        layout.parse(root)
    assert _first_line(info.value).startswith(
        f"{root / layout.SUBJECTS_CSV}: not UTF-8 at line 2, column 15 (byte 0xff); the file "
        "must be UTF-8 CSV"
    )


# ---- 2. Wrong schema. ----


def test_metadata_that_is_not_an_object_says_what_was_found(adni_copy):
    root, _ = adni_copy
    (root / layout.METADATA_JSON).write_text('[{"scan": "2000001"}, {"scan": "2000002"}]')
    with pytest.raises(layout.LayoutError, match="expected a JSON object keyed by scan ID") as e:
        layout.parse(root)
    assert "found an array of 2 items" in str(e.value)


def test_metadata_without_any_subject_id_is_refused_showing_an_entry(adni_copy):
    root, _ = adni_copy
    entries = {scan: {"label": e["label"], "file": f"S{scan}.nii"}
               for scan, e in _metadata(root).items()}  # fmt: skip
    (root / layout.METADATA_JSON).write_text(json.dumps(entries))
    first = next(iter(entries))
    with pytest.raises(layout.LayoutError) as info:
        layout.parse(root)
    message = str(info.value)
    assert message.startswith(
        f"{root / layout.METADATA_JSON}: none of its {len(entries)} entries carries a subject "
        f'ID (NNN_S_NNNN, e.g. in a source path); one entry: "{first}": '
        f"{json.dumps(entries[first])}."
    )
    assert message.endswith("(or give subjects.csv with scan_id,subject_id).")
    assert "names none of the scan IDs" not in message


def test_metadata_with_some_entries_lacking_a_subject_warns_and_goes_on(adni_copy, caplog):
    root, _ = adni_copy
    entries = _metadata(root)
    lacking = sorted(entries)[:3]
    for scan in lacking:
        entries[scan] = {"label": entries[scan]["label"], "note": "no path"}
    (root / layout.METADATA_JSON).write_text(json.dumps(entries))
    with caplog.at_level(logging.WARNING):
        parsed = layout.parse(root)
    assert parsed.subject_source == layout.METADATA_JSON
    assert f"3 of its {len(entries)} entries carry no subject ID" in caplog.text
    assert f'"{lacking[0]}": {json.dumps(entries[lacking[0]])}' in caplog.text
    assert all(parsed.subject_of_scan[s] == s for s in lacking)  # they stand in for themselves
    kept = sorted(entries)[3]
    assert parsed.subject_of_scan[kept] != kept and "_S_" in parsed.subject_of_scan[kept]


def test_well_formed_metadata_naming_no_scan_is_ignored_with_a_warning(adni_copy, caplog):
    root, _ = adni_copy
    (root / layout.METADATA_JSON).write_text('{"I1": {"path": "ADNI/011_S_0002/x"}}')
    with caplog.at_level(logging.WARNING):
        parsed = layout.parse(root)
    assert "names none of the" in caplog.text and parsed.subject_source == "scan_id"


# ---- 3. Metadata labels that contradict the class folders. ----


def _relabel(root: Path, spec, labels_for_ad: str, extra: dict | None = None) -> list[str]:
    """Writes metadata where every scan in an AD folder is labelled `labels_for_ad` and NC scans
    say 'CN' (ADNI's spelling); `extra` overrides single scans. Returns the AD scans, sorted."""
    entries = _metadata(root)
    for scan, entry in entries.items():
        entry["label"] = labels_for_ad if spec.label_of_scan[scan] == "AD" else "CN"
    for scan, label in (extra or {}).items():
        entries[scan]["label"] = label
    (root / layout.METADATA_JSON).write_text(json.dumps(entries))
    return sorted(s for s, label in spec.label_of_scan.items() if label == "AD")


def test_label_aliases_are_recognised_case_insensitively():
    for text in ("NC", "cn", "Normal", "CONTROL", "NonDemented", "Non-Demented", "healthy"):
        assert layout.canonical_label(text) == "NC", text
    for text in ("AD", "ad", "Alzheimer", "Alzheimer's Disease", "Dementia", "demented"):
        assert layout.canonical_label(text) == "AD", text
    for value in ("MCI", "EMCI", "MildDemented", "", 1, None):
        assert layout.canonical_label(value) is None, value


def test_label_conflicts_are_listed_by_scan_and_counted_in_the_audit(adni_copy):
    root, spec = adni_copy
    ad_scans = _relabel(root, spec, "Alzheimer")
    nc_scan = sorted(s for s, label in spec.label_of_scan.items() if label == "NC")[0]
    conflicting, unknown = ad_scans[0], ad_scans[1]
    _relabel(root, spec, "AD", {conflicting: "Normal", unknown: "MCI", nc_scan: "dementia"})
    parsed = layout.parse(root)
    assert parsed.metadata_label_of_scan[ad_scans[2]] == "AD"
    assert parsed.metadata_label_of_scan[nc_scan] == "AD"
    assert parsed.unrecognised_labels == {unknown: "MCI"}
    conflicts = layout.label_conflicts(parsed)
    assert [c["scan_id"] for c in conflicts] == sorted([conflicting, nc_scan])
    entry = next(c for c in conflicts if c["scan_id"] == conflicting)
    folder_split = spec.folder_of_scan[conflicting]
    assert entry["folder"] == f"{folder_split}/AD" and entry["metadata_label"] == "NC"
    assert entry["example_file"].startswith(f"{folder_split}/AD/{conflicting}_")
    report, _ = audit.run(parsed)
    assert report["label_conflicts"] == {
        "count": 2,
        "scans_with_metadata_label": len(spec.label_of_scan) - 1,
        "unrecognised_labels": 1,
        "scans": conflicts,
    }
    table = audit.format_table(report)
    assert "metadata label contradicts their class folder: 2" in table
    assert f"{conflicting} (in {folder_split}/AD, metadata says NC)" in table


def test_many_label_conflicts_show_ten_in_the_table_and_all_in_the_report(adni_copy):
    root, spec = adni_copy
    ad_scans = _relabel(root, spec, "NC")  # every AD-folder scan contradicts
    report, _ = audit.run(layout.parse(root))
    entry = report["label_conflicts"]
    assert entry["count"] == len(ad_scans) > 10
    assert [c["scan_id"] for c in entry["scans"]] == ad_scans
    line = next(t for t in audit.format_table(report).splitlines() if "contradicts" in t)
    assert line.count("metadata says NC") == 10
    assert f"... and {len(ad_scans) - 10} more; all in the audit JSON" in line


def test_builder_warns_once_about_label_conflicts_and_stores_them_all(adni_copy, tmp_path, caplog):
    import tensorflow_datasets as tfds

    from alz_jax.tfds_builders.mri_slices import Builder

    root, spec = adni_copy
    ad_scans = _relabel(root, spec, "NC")
    builder = Builder(data_dir=str(tmp_path / "tfds"), file_format="array_record")
    with caplog.at_level(logging.WARNING):
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(root))
        )
    warnings = [r.getMessage() for r in caplog.records if "contradicts" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].startswith(f"{len(ad_scans)} of {len(spec.label_of_scan)} scans")
    assert warnings[0].count("metadata says NC") == 10
    stored = builder.info.metadata["audit"]["label_conflicts"]
    assert [c["scan_id"] for c in stored["scans"]] == ad_scans


# ---- 4. Long lists in error messages. ----


def test_thousands_of_images_in_a_split_folder_are_counted_not_all_listed(adni_copy):
    root, _ = adni_copy
    names = [f"{3_000_000 + i}_60.jpeg" for i in range(30)]
    for name in names:
        (root / "train" / name).write_bytes(b"x")
    with pytest.raises(layout.LayoutError) as info:
        layout.parse(root)
    message = str(info.value)
    assert message.startswith(f"{root / 'train'} must hold exactly the class folders")
    assert sum(name in message for name in names) == 10
    assert "... and 20 more" in message


def test_brief_list_counts_what_it_leaves_out():
    assert layout.brief_list(list("abc")) == "a, b, c"
    items = [str(i) for i in range(123)]
    text = layout.brief_list(items, rest="; all in the audit JSON")
    assert text == "0, 1, 2, 3, 4, 5, 6, 7, 8, 9 ... and 113 more; all in the audit JSON"


# ---- 5. CSV cells a spreadsheet would run as formulas. ----

HOSTILE = ["=HYPERLINK(\"http://x\")", "+1+1", "-2+3+cmd|' /C calc'!A0", "@SUM(A1)", "\tx",
           "\rx", "'=already quoted", "''=twice"]  # fmt: skip


def test_safe_cell_quotes_formulas_and_round_trips():
    for text in HOSTILE:
        cell = tables.safe_cell(text)
        assert cell == "'" + text, text
        assert tables.read_cell(cell) == text
    for value in (-1.5, 3, np.float32(-0.25), np.int64(-7), None):
        assert tables.safe_cell(value) is value  # numbers are left alone
    for text in ("-0.123456", "+3", "1e-07", "plain", "'note", ""):
        assert tables.safe_cell(text) == text and tables.read_cell(text) == text


def test_predictions_csv_is_safe_and_reads_back_unchanged(tmp_path):

    records = {
        "file_name": np.asarray(["=cmd|' /C calc'!A0", "test/AD/1_60.jpeg"], dtype=object),
        "scan_id": np.asarray(["@1", "1"], dtype=object),
        "subject_id": np.asarray(["-011_S_0002", "011_S_0002"], dtype=object),
        "label": np.asarray([1, 0]),
    }
    path = tmp_path / "predictions_test.csv"
    tasks.BinaryTask(2).write_predictions(
        records, np.array([0.25, 0.75]), np.array([-1.5, 1.25]), (), path
    )
    rows = list(csv.reader(io.StringIO(path.read_text())))
    assert rows[1][:3] == ["'=cmd|' /C calc'!A0", "'@1", "'-011_S_0002"]
    assert rows[1][5] == "-1.500000"  # a negative number is not quoted
    read, prob = tasks.BinaryTask(2).read_predictions(path)
    for key in ("file_name", "scan_id", "subject_id"):
        assert list(read[key]) == list(records[key])
    np.testing.assert_allclose(prob, [0.25, 0.75])


def test_predict_csv_output_is_safe(tmp_path):
    from alz_jax.run import prediction

    result = {
        "images": [{"file": "=evil.png", "scan_id": "", "slice": None, "logit_ad": -0.5,
                    "prob_ad": 0.4, "predicted": "NC"}],
        "scans": [{"scan_id": "+SUM(A1)", "slices": 2, "prob_ad": 0.4, "predicted": "NC"}],
        "errors": [{"file": "@x.png", "error": "not an image"}],
    }  # fmt: skip
    written = prediction.write_output(tmp_path / "out.csv", result)
    assert [p.name for p in written] == ["out.csv", "out_scans.csv", "out_errors.csv"]
    texts = [p.read_text() for p in written]
    assert "'=evil.png" in texts[0] and ",-0.5," in texts[0]
    assert "'+SUM(A1)" in texts[1] and "'@x.png" in texts[2]


# ---- 6. Non-finite imported weights. ----


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_weights_with_nan_or_inf_are_refused_at_import(tmp_path, bad):
    from alz_jax.models import convert, convnext

    state = convert.load_state_dict(str(WEIGHTS))
    key = "features.0.0.weight"
    poisoned = dict(state)
    poisoned[key] = state[key].copy()
    poisoned[key].reshape(-1)[:3] = bad
    path = tmp_path / "poisoned.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in poisoned.items()}, str(path))
    with pytest.raises(UserError) as info:
        convert.load_state_dict(str(path))
    assert _first_line(info.value).startswith(
        f"Weight file {path} holds NaN or Inf in 1 tensor(s): {key} (3 of {state[key].size} "
        "values)."
    )
    spec = convnext.ConvNeXtSpec(DEPTHS, DIMS, in_chans=3, num_classes=10)
    with pytest.raises(UserError, match=f"{key} \\(3 of"):
        convert.init_variables_from(f"torchvision:{path}", spec, seed=0)
    with pytest.raises(UserError, match="torchvision state dict holds NaN or Inf"):
        convert.from_torchvision(poisoned, spec)  # a state dict in memory is checked too


# ---- 7. predict: the output checked before the model is loaded. ----


@pytest.mark.parametrize(
    ("output", "phrase"),
    [("x.txt", "expected a file name ending in .csv or .json, found '.txt'"),
     ("missing/x.csv", "the folder missing does not exist. Create it first")],
)  # fmt: skip
def test_predict_refuses_a_bad_output_before_loading_anything(tmp_path, monkeypatch, output,
                                                              phrase):  # fmt: skip
    from absl.testing import flagsaver

    from alz_jax import predict
    from alz_jax.run import prediction

    def must_not_run(*args, **kwargs):
        raise AssertionError("the model was loaded before --output was checked")

    monkeypatch.setattr(prediction, "run", must_not_run)
    monkeypatch.setattr(prediction, "load_model", must_not_run)
    monkeypatch.chdir(tmp_path)
    saved = flagsaver.flagsaver(output=output, workdir=str(tmp_path / "no_run"))
    with saved, pytest.raises(UserError) as info:
        predict.main(["predict", str(tmp_path / "image.png")])
    assert _first_line(info.value).startswith(f"--output={output}: ")
    assert phrase in str(info.value)
    assert sorted(os.listdir(tmp_path)) == []  # nothing written


# ---- 8. A config typo on the command line. ----


def test_config_typo_is_one_error_line_with_the_suggestion(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO), XLA_FLAGS="", ALZ_JAX_HUGE_PAGES="off")
    result = subprocess.run(
        [sys.executable, "-m", "alz_jax.main", "--config=configs/demo.py",
         "--config.optim.learning_rat=1", f"--workdir={tmp_path / 'run'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: --config.optim.learning_rat: config.optim has no field 'learning_rat'; did you "
        'mean "learning_rate"? The fields are those of the --config file (overrides can\'t add '
        "new ones)."
    ]
    assert not (tmp_path / "run").exists()


def test_only_override_errors_are_turned_into_one_line():
    from alz_jax.host import command

    try:
        {}["x"]  # a KeyError raised outside ml_collections' override walk
    except KeyError as e:
        assert not command._raised_walking_an_override(e)
    text = command.config_override_error(
        AttributeError(KeyError('\'optimm\'\nDid you mean "optim" instead of "optimm"?')),
        ["prog", "--config=demo", "--config.optimm.learning_rate=1"],
    )
    assert text.startswith('--config.optimm.learning_rate: config has no field \'optimm\'; did '
                           'you mean "optim"?')  # fmt: skip


# ---- 9. Numeric fields out of range. ----


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("data.image_size", 0, "config.data.image_size = 0: expected a positive multiple of 32"),
        ("optim.b2", 1.0, "config.optim.b2 = 1.0: expected in [0, 1)"),
        ("optim.eps", 0.0, "config.optim.eps = 0.0: expected > 0 and finite"),
        ("optim.learning_rate", float("nan"), "config.optim.learning_rate = nan: expected > 0"),
        ("optim.end_learning_rate", 1.0, "config.optim.end_learning_rate = 1.0: expected in "
                                         "[0, learning_rate]"),
        ("augment.translate", 1.5, "config.augment.translate = 1.5: expected in [0, 1]"),
        ("augment.shear_deg", 90.0, "config.augment.shear_deg = 90.0: expected in [0, 90)"),
        ("augment.blur_kernel", -1, "config.augment.blur_kernel = -1: expected a positive odd"),
        ("augment.erase_value", 300, "config.augment.erase_value = 300: expected in [0, 255]"),
        ("augment.erase_scale", (0.0, 0.3), "config.augment.erase_scale = (0.0, 0.3): expected"),
        ("augment.noise_std", float("inf"), "config.augment.noise_std = inf: expected >= 0"),
        ("eval.bootstrap_seed", -1, "config.eval.bootstrap_seed = -1: expected >= 0"),
        ("seed", -1, "config.seed = -1: expected an integer >= 0"),
        ("num_epochs", -1, "config.num_epochs = -1: expected >= 0 and finite"),
        ("ema.warmup_gamma", float("inf"), "config.ema.warmup_gamma = inf: expected > 0"),
    ],
)  # fmt: skip
def test_numeric_fields_out_of_range_are_refused(field, value, message):
    from alz_jax.host import command
    from alz_jax.run import specs

    config = command.load_config("demo")
    *sections, name = field.split(".")
    target = config
    for section in sections:
        target = target[section]
    target[name] = value
    with pytest.raises(UserError) as info:
        specs.resolve(config)
    assert str(info.value).startswith(message)


def test_spec_dataclasses_check_their_own_ranges():
    from alz_jax.core import averaging
    from alz_jax.data import mixing
    from alz_jax.models import convnext
    from alz_jax.run import specs

    with pytest.raises(UserError, match=r"config\.num_epochs = nan: expected >= 0 and finite"):
        specs.Duration("num_train", epochs=float("nan"))  # a float-typed config's epochs
    with pytest.raises(UserError, match=r"config\.model\.layer_scale_init = 0\.0: expected > 0"):
        convnext.ConvNeXtSpec((1,), (8,), layer_scale_init=0.0)
    with pytest.raises(UserError, match=r"config\.model\.dims = \(0,\): expected each >= 1"):
        convnext.ConvNeXtSpec((1,), (0,))
    with pytest.raises(UserError, match=r"config\.mix\.label_smoothing = 1\.0"):
        mixing.MixSpec(label_smoothing=1.0)
    with pytest.raises(UserError, match=r"config\.swa\.every_steps = 0: expected >= 1"):
        averaging.AveragingSpec(swa=True, swa_every_steps=0)
