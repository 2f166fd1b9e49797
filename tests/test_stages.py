"""Dementia-stage layouts: detection, class mapping, exact counts, subject-aware splits per layout,
the near-duplicate check on image- and subject-split sets, class weights and balanced sampling."""

import collections
import json
import shutil

import cv2
import grain
import jax.numpy as jnp
import numpy as np
import optax
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.utils.class_weight import compute_class_weight

from alz_jax.configs import demo, stages_demo
from alz_jax.core import steps
from alz_jax.data import bags, dataset, input_pipeline, protocols
from alz_jax.data.data_spec import DataSpec
from alz_jax.evaluation import multiclass, reports, tasks
from alz_jax.host.errors import UserError
from alz_jax.run import cross_validation, run_record, specs
from alz_jax.tfds_builders.mri_slices import audit, synthetic_stages
from alz_jax.tfds_builders.mri_slices.layouts import registry
from alz_jax.tfds_builders.mri_slices.layouts.base import LayoutError
from alz_jax.tfds_builders.mri_slices.layouts.classes import class_order

STAGES = synthetic_stages.STAGES
SPEC = synthetic_stages.StagesSpec(subjects=24, slices_per_subject=8)


@pytest.fixture(scope="module")
def stage_sets(tmp_path_factory):
    """The synthetic four-stage set in every layout (same seed: same brains), with summaries."""
    out = {}
    for kind in synthetic_stages.LAYOUTS:
        root = tmp_path_factory.mktemp(kind)
        out[kind] = root, synthetic_stages.generate(root, seed=5, spec=SPEC, layout=kind)
    return out


@pytest.fixture(scope="module")
def prepared(stage_sets, tmp_path_factory):
    """Each layout built with the TFDS builder and opened with the official protocol. SPEC's 24
    subjects give the rarer stages two or three subjects: the OASIS layout's split by subject
    (70/15/15) leaves one out of validation or test, accepted here (data.allow_missing_classes;
    the check itself: test_class_set_checks.py)."""
    data_dir = tmp_path_factory.mktemp("tfds")
    out = {}
    for kind, (root, _) in stage_sets.items():
        oasis = kind == "oasis"
        spec = DataSpec(data_dir=str(data_dir / kind), manual_dir=str(root),
                        allow_missing_classes=oasis)  # fmt: skip
        out[kind] = dataset.prepare(spec)
    return out


def _counts(parsed) -> dict:
    found = collections.Counter((r.folder_split or "all", parsed.class_names[r.label])
                                for r in parsed.records)  # fmt: skip
    return {(s, c): n for (s, c), n in found.items()}


@pytest.mark.parametrize("kind", synthetic_stages.LAYOUTS)
def test_each_layout_is_detected_with_exact_counts_and_canonical_stages(stage_sets, kind):
    root, summary = stage_sets[kind]
    assert registry.detect(root) == kind
    parsed = registry.parse(root)
    assert parsed.kind == kind
    assert parsed.class_names == STAGES  # whatever the collection calls them
    expected = {(s, c): e["images"] for s, st in summary.items() for c, e in st.items()}
    assert _counts(parsed) == expected
    assert len(parsed.records) == SPEC.subjects * SPEC.slices_per_subject
    assert registry.describe(root) == (kind, STAGES)
    if kind == "oasis":
        assert parsed.subject_source == "file_name" and parsed.folder_splits == ()
        assert len(set(parsed.subject_of_scan.values())) == SPEC.subjects
        assert all(r.slice_index >= 67 for r in parsed.records)
        assert set(parsed.class_mapping) == set(synthetic_stages.OASIS_NAMES)
    else:
        assert parsed.subject_source == "scan_id" and parsed.folder_splits == ("train", "test")
        assert all(r.slice_index == -1 for r in parsed.records)


def test_the_same_brains_get_the_same_stage_in_every_layout(stage_sets):
    """The parquet layout's integer labels (hub order: 0 Mild, 1 Moderate, 2 Non, 3 VeryMild)
    are mapped through their names: per split and stage, counts equal the folder layout's."""
    folders = _counts(registry.parse(stage_sets["folders"][0]))
    parquet = _counts(registry.parse(stage_sets["parquet"][0]))
    assert folders == parquet


def test_stage_aliases_order_and_clashes():
    names, mapping = class_order(
        ["Very_Mild_Demented", "Moderate Dementia", "Non_Demented", "Mild Demented"]
    )
    assert names == STAGES
    assert mapping["Very_Mild_Demented"] == "VeryMildDemented"
    assert class_order(["CDR 0.5", "CDR 0", "CDR 1"])[0] == STAGES[:3]
    # Not all stages: kept as found, sorted.
    assert class_order(["tumour", "normal", "MildDemented"])[0] == (
        "MildDemented", "normal", "tumour")  # fmt: skip
    # Two classes spelled as AD and NC: the binary order, AD positive.
    assert class_order(["Normal", "Alzheimer"]) == (
        ("NC", "AD"), {"Alzheimer": "AD", "Normal": "NC"})  # fmt: skip
    assert class_order(["NonDemented", "Demented"])[0] == ("NC", "AD")
    with pytest.raises(LayoutError, match="same stage twice"):
        class_order(["NonDemented", "Non_Demented", "MildDemented"])


def test_any_class_folders_with_a_val_folder_keep_their_names_and_splits(tmp_path, stage_sets):
    src = stage_sets["folders"][0]
    for split, target in (("train", "train"), ("test", "val"), ("train", "test")):
        for cls in ("NonDemented", "MildDemented"):
            dest = tmp_path / target / {"NonDemented": "cats", "MildDemented": "dogs"}[cls]
            dest.mkdir(parents=True, exist_ok=True)
            for path in sorted((src / split / cls).iterdir())[:2]:
                (dest / path.name).write_bytes(path.read_bytes())
    parsed = registry.parse(tmp_path)
    assert parsed.class_names == ("cats", "dogs")
    assert parsed.folder_splits == ("train", "validation", "test")
    assert _counts(parsed) == {(s, c): 2 for s in ("train", "validation", "test")
                               for c in ("cats", "dogs")}  # fmt: skip


def test_parquet_labels_need_names_and_get_them_from_the_config(tmp_path):
    ok = _png_bytes()
    table = pa.table({"image": pa.array([ok] * 4, pa.binary()), "label": [0, 1, 0, 1]})
    pq.write_table(table, tmp_path / "train-0.parquet")
    pq.write_table(table, tmp_path / "test-0.parquet")
    with pytest.raises(LayoutError, match="label_names"):
        registry.parse(tmp_path)
    parsed = registry.parse(tmp_path, "parquet", ("Moderate_Demented", "Non_Demented"))
    assert parsed.class_names == ("NonDemented", "ModerateDemented")
    assert [r.label for r in parsed.records_in("train")] == [1, 0, 1, 0]
    with pytest.raises(LayoutError, match="a label has no name"):
        registry.parse(tmp_path, "parquet", ("Non_Demented",))


def _png_bytes() -> bytes:
    _, buf = cv2.imencode(".png", np.full((16, 16), 80, np.uint8))
    return buf.tobytes()


def test_an_unknown_layout_names_what_is_accepted(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(LayoutError, match="no layout alz_jax reads"):
        registry.detect(tmp_path)
    with pytest.raises(UserError, match="no layout alz_jax reads"):
        dataset.prepare(DataSpec(data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path)))


def _subjects(data, split):
    return set(data.records(split)["subject_id"])


def test_oasis_splits_are_by_subject_and_stratified_70_15_15(prepared):
    data = prepared["oasis"]
    assert data.protocol["official_split"] == "by subject 0.7/0.15/0.15 at build"
    splits = [_subjects(data, s) for s in dataset.SPLITS]
    assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])
    assert sum(len(s) for s in splits) == SPEC.subjects
    strata = protocols.subject_strata(*(data.pooled[k] for k in ("subject_id", "scan_id", "label")))
    for stage in range(4):
        members = [s for s, lab in strata.items() if lab == stage]
        in_test = sum(s in splits[2] for s in members)
        assert abs(in_test - 0.15 * len(members)) <= 1, (stage, in_test, len(members))
    meta = data.report_metadata()
    assert meta["class_names"] == list(STAGES)
    assert sum(sum(c.values()) for c in meta["class_distribution"].values()) == (
        SPEC.subjects * SPEC.slices_per_subject)  # fmt: skip


@pytest.mark.parametrize("protocol", ["resplit", "kfold"])
def test_oasis_protocols_stay_subject_disjoint(stage_sets, tmp_path, protocol):
    spec = DataSpec(data_dir=str(tmp_path), manual_dir=str(stage_sets["oasis"][0]),
                    protocol=protocol, num_folds=3, allow_missing_classes=True)  # fmt: skip
    data = dataset.prepare(spec)
    train, val, test = (_subjects(data, s) for s in dataset.SPLITS)
    assert not (train & test or val & test or train & val)
    assert len(train | val | test) == SPEC.subjects


def test_image_split_collections_are_flagged_and_subject_split_ones_are_not(prepared):
    """The four-class folders and the parquet set divide one brain's slices between train and
    test; the OASIS layout is split by subject: the check must tell them apart."""
    for kind in ("folders", "parquet"):
        found = prepared[kind].report_metadata()["cross_split_near_duplicates"]
        assert found["share"] >= 0.9, (kind, found)
        audit = prepared[kind].metadata["audit"]["cross_split_near_duplicates"]
        assert audit["test_images"] == found["test_images"]
    oasis = prepared["oasis"].report_metadata()["cross_split_near_duplicates"]
    assert oasis["share"] <= 0.1, oasis
    # Subjects known: the flags agree with them (no test subject is in train here).
    assert oasis["agreement_with_subject_ids"]["shared_subject_images"] == 0


def test_slice_range_on_a_layout_without_slice_indices_is_a_user_error(stage_sets, tmp_path):
    spec = DataSpec(data_dir=str(tmp_path), manual_dir=str(stage_sets["folders"][0]),
                    slice_range="auto")  # fmt: skip
    with pytest.raises(UserError, match="slice indices"):
        dataset.prepare(spec)


def test_balanced_class_weights_match_scikit_learn():
    counts = [50, 30, 15, 5]
    labels = np.repeat(np.arange(4), counts)
    expected = compute_class_weight("balanced", classes=np.arange(4), y=labels)
    got = specs.resolve_class_weights("balanced", 4, counts)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert np.dot(got, counts) / sum(counts) == pytest.approx(1.0)  # the loss keeps its scale
    assert specs.resolve_class_weights(specs.parse_class_weights("1, 2,3,4", 4), 4, None) == (
        1.0, 2.0, 3.0, 4.0)  # fmt: skip
    with pytest.raises(UserError, match="4 comma-separated weights"):
        specs.parse_class_weights("1,2", 4)
    with pytest.raises(UserError, match="each of the 4 classes"):
        specs.resolve_class_weights("balanced", 4, [3, 0, 1, 1])


def test_balanced_sampler_draws_classes_equally_and_deterministically():
    labels = np.repeat(np.arange(4), [700, 200, 80, 20])
    source = [{"label": int(x)} for x in labels]

    def sampler():
        ds = grain.MapDataset.source(source)
        return input_pipeline.ClassBalancedSampler(ds, labels, seed=3)

    first = sampler()
    drawn = np.array([first[i]["label"] for i in range(4 * len(labels))])
    shares = np.bincount(drawn, minlength=4) / len(drawn)
    np.testing.assert_allclose(shares, 0.25, atol=0.02)
    # Random access: a fresh sampler (a resumed run) reads the same records at the same places.
    again = sampler()
    for i in (3999, 17, 1000, 2500):
        assert again[i] == first[i]
    assert not np.array_equal(first.indices(0), first.indices(1))


def test_weighted_loss_is_the_weighted_mean_of_cross_entropies():
    logits = jnp.array([[2.0, 0.1, -1.0, 0.3], [0.2, 0.4, 1.5, -0.2], [1.0, 1.0, 1.0, 1.0]])
    labels = jnp.array([0, 2, 3])
    weights = (0.5, 1.0, 2.0, 4.0)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    got = steps.example_weights({"label": labels}, weights) * ce
    np.testing.assert_allclose(got, np.array([0.5, 2.0, 4.0]) * ce, rtol=1e-6)
    targets = jnp.array([[0.3, 0.0, 0.7, 0.0]])
    mixed = steps.example_weights({"label": labels[:1], "targets": targets}, weights)
    np.testing.assert_allclose(mixed, [0.3 * 0.5 + 0.7 * 2.0], rtol=1e-6)


def test_a_model_head_that_does_not_fit_the_classes_is_a_user_error(prepared):
    config = stages_demo.get_config()
    config.model.num_classes = 2
    run = specs.resolve(config)
    with pytest.raises(UserError, match="num_classes=4"):
        run.check_classes(prepared["oasis"].class_names)


def test_builder_metadata_records_layout_pairs_and_class_distribution(prepared):
    meta = prepared["folders"].metadata
    assert meta["layout"] == "folders" and meta["class_names"] == list(STAGES)
    pairs = meta["near_duplicate_pairs"]
    assert pairs and all(a < b for a, b in pairs)
    json.dumps(pairs)  # stored as JSON
    files = set(prepared["folders"].pooled["file_name"])
    assert all(a in files and b in files for a, b in pairs)


def test_near_duplicate_flags_agree_with_oasis_subject_ids(stage_sets, tmp_path):
    """Where subject IDs exist the check must agree with them: OASIS files put in train/ and
    test/ folders with half the test subjects' slices divided between both (the test half as a
    second session, MR2: a scan lives in one folder), the rest whole in one folder. Shared
    subjects' test images are flagged, others not."""
    parsed = registry.parse(stage_sets["oasis"][0])
    by_subject = collections.defaultdict(list)
    for r in parsed.records:
        by_subject[parsed.subject_of_scan[r.scan_id]].append(r)
    subjects = sorted(by_subject)
    shared, test_only = set(subjects[:6]), set(subjects[6:12])
    for subject, records in by_subject.items():
        for i, r in enumerate(sorted(records, key=lambda r: r.slice_index)):
            split = "test" if subject in test_only or (subject in shared and i % 2) else "train"
            folder = tmp_path / split / r.path.parent.name
            folder.mkdir(parents=True, exist_ok=True)
            # A scan lives in one folder (else refused): a shared subject's test half is MR2.
            name = r.path.name.replace("_MR1_", "_MR2_") if split == "test" else r.path.name
            (folder / name).write_bytes(r.read_bytes())
    relaid = registry.parse(tmp_path)
    assert relaid.kind == "oasis" and relaid.folder_splits == ("train", "test")
    report, _ = audit.run(relaid)
    agreement = report["cross_split_near_duplicates"]["agreement_with_subject_ids"]
    assert agreement["shared_subject_images"] == len(shared) * SPEC.slices_per_subject // 2
    assert agreement["flag_rate_shared"] >= 0.9, agreement
    assert agreement["flag_rate_not_shared"] <= 0.1, agreement
    assert report["subjects_in_train_and_test"]["count"] == len(shared)


def test_cross_validation_pools_k_class_folds(tmp_path):
    """The K-class aggregate: per-fold means of the fold reports, and the pooled out-of-fold
    metrics computed from the folds' prediction files."""
    rng = np.random.default_rng(0)
    fold_reports, dirs, all_records, all_probs = [], [], [], []
    for fold in range(2):
        n = 40
        records = {
            "file_name": np.array([f"f{fold}_{i}.jpg" for i in range(n)], object),
            "scan_id": np.array([f"s{fold}_{i // 4}" for i in range(n)], object),
            "subject_id": np.array([f"p{fold}_{i // 8}" for i in range(n)], object),
            "label": np.repeat(np.arange(4), n // 4),
        }
        logits = rng.normal(size=(n, 4)) + 2.0 * np.eye(4)[records["label"]]
        probs = multiclass.softmax(logits)
        fold_dir = tmp_path / f"fold_{fold}"
        fold_dir.mkdir()
        tasks.MulticlassTask(4).write_predictions(records, probs, logits, STAGES,
                                                  fold_dir / "predictions_test.csv")  # fmt: skip
        levels = multiclass.multilevel_metrics(records, probs, True, STAGES)
        # Dementia stages: an ordinal task (its reports say so), with the kappa.
        fold_reports.append({"num_classes": 4, "class_names": list(STAGES), "task": "ordinal",
                             **levels})  # fmt: skip
        dirs.append(fold_dir)
        all_records.append(records)
        all_probs.append(probs)
    report = cross_validation.aggregate(fold_reports, dirs)
    kappas = [r["subject"]["quadratic_kappa"] for r in fold_reports]
    assert report["across_folds"]["subject"]["quadratic_kappa"]["mean"] == pytest.approx(
        np.mean(kappas))  # fmt: skip
    pooled_records = {k: np.concatenate([r[k] for r in all_records]) for k in all_records[0]}
    expected = multiclass.multilevel_metrics(
        pooled_records, np.concatenate(all_probs), True, STAGES
    )
    got = report["pooled_out_of_fold"]
    assert got["slice"]["confusion_matrix"] == expected["slice"]["confusion_matrix"]
    assert got["subject"]["macro_f1"] == pytest.approx(expected["subject"]["macro_f1"], abs=1e-5)
    assert got["subject"]["mae"] == pytest.approx(expected["subject"]["mae"], abs=1e-5)


def test_near_duplicate_groups_stand_in_for_subjects_and_make_resplit_honest(stage_sets, tmp_path):
    """Four-class folders (divided by image, no IDs): with data.group_near_duplicates each
    brain's slices form one group, every group holds one stage, and `resplit` by group leaves
    no test image with a near-identical train image, where the official folders leave most."""
    root = str(stage_sets["folders"][0])
    grouped = dataset.prepare(DataSpec(data_dir=str(tmp_path), manual_dir=root,
                                       group_near_duplicates=True, protocol="resplit"))  # fmt: skip
    assert grouped.metadata["subject_source"] == "near_duplicate_groups"
    groups = collections.defaultdict(set)
    for subject, label in zip(grouped.pooled["subject_id"], grouped.pooled["label"], strict=True):
        groups[subject].add(int(label))
    assert len(groups) == SPEC.subjects  # one group per generated brain
    assert all(len(labels) == 1 for labels in groups.values())
    train, val, test = (_subjects(grouped, s) for s in dataset.SPLITS)
    assert not (train & test or val & test or train & val)
    assert grouped.report_metadata()["cross_split_near_duplicates"]["share"] == 0.0
    official = dataset.prepare(DataSpec(data_dir=str(tmp_path), manual_dir=root,
                                        group_near_duplicates=True))  # fmt: skip
    assert official.report_metadata()["cross_split_near_duplicates"]["share"] >= 0.9
    assert official.report_metadata()["test_subjects_also_in_train"] > 0
    # The builder's LayoutError, as every data error from the build: a UserError with a hint.
    with pytest.raises(UserError, match="has subject IDs"):
        dataset.prepare(DataSpec(data_dir=str(tmp_path / "o"), group_near_duplicates=True,
                                 manual_dir=str(stage_sets["oasis"][0])))  # fmt: skip


def test_the_leakage_warning_follows_the_share_and_defers_to_subject_ids():
    def report(share, not_shared=None, split="test"):
        dup = {"share": share, "test_images": 100, "test_images_with_train_match": int(share * 100)}
        if not_shared is not None:
            dup["agreement_with_subject_ids"] = {"flag_rate_not_shared": not_shared}
        return {"split": split, "cross_split_near_duplicates": dup}

    assert reports.leak_warning(report(0.5)).startswith(
        "Warning: the test folder shares brains with train; test accuracy is not an estimate "
        "of accuracy on new people (50 of 100")  # fmt: skip
    assert reports.leak_warning(report(0.09)) is None
    assert reports.leak_warning(report(0.5, split="validation")) is None
    assert reports.leak_warning(report(0.5, not_shared=0.0)).startswith("Warning:")
    # Subjects known, and other people's images match too: the subject count is the measure.
    assert "count leakage by subject" in reports.leak_warning(report(0.5, not_shared=0.3))


def test_unusable_images_of_a_stage_collection_are_named_and_left_out(stage_sets, tmp_path):
    """As for ADNI: a truncated JPEG and an empty file are named in the audit and left out of
    the build; a stray file is reported. An image of another size is kept (the pipeline pads
    and resizes any size) and counted among the sizes."""
    root = tmp_path / "copy"
    shutil.copytree(stage_sets["folders"][0], root)
    images = sorted((root / "train" / "NonDemented").iterdir())
    data = images[0].read_bytes()
    images[0].write_bytes(data[: len(data) // 2])
    images[1].write_bytes(b"")
    cv2.imwrite(str(images[2]), np.full((100, 100), 90, np.uint8))
    (root / "test" / "MildDemented" / "notes.txt").write_text("not an image\n")
    report, _ = audit.run(registry.parse(root))
    assert report["image_size"] == [176, 208]
    assert report["image_sizes"] == {"176x208": SPEC.subjects * SPEC.slices_per_subject - 3,
                                     "100x100": 1}  # fmt: skip
    assert {k: v["count"] for k, v in report["unusable"].items()} == {
        "unreadable": 1, "empty": 1, "off_size": 0}  # fmt: skip
    assert report["stray_files"]["files"] == ["test/MildDemented/notes.txt"]
    built = dataset.prepare(DataSpec(data_dir=str(tmp_path / "tfds"), manual_dir=str(root)))
    total = sum(built.num_examples(s) for s in dataset.SPLITS)
    assert total == SPEC.subjects * SPEC.slices_per_subject - 2
    names = [p.relative_to(root).as_posix() for p in images[:3]]
    assert not set(names[:2]) & set(built.pooled["file_name"])
    assert names[2] in set(built.pooled["file_name"])


def test_an_adni_folder_forced_to_the_class_folder_layout_keeps_nc_and_ad(tiny_synthetic):
    root, summary = tiny_synthetic
    parsed = registry.parse(root / "AD_NC", "folders")
    assert parsed.kind == "folders" and parsed.class_names == ("NC", "AD")
    assert parsed.subject_source == "scan_id"  # the generic layout reads no metadata
    for split in ("train", "test"):
        for label, cls in enumerate(("NC", "AD")):
            found = [r for r in parsed.records_in(split) if r.label == label]
            assert len(found) == summary[split][cls]["images"]
            assert all(f"/{cls}/" in r.file_name for r in found)


def test_a_binary_runs_identity_leaves_the_new_fields_out_at_their_defaults():
    """A binary run recorded before layouts and class weights existed still resumes: its
    identity is unchanged while the new fields hold their defaults."""
    identity = run_record.identity(specs.resolve(demo.get_config()), "fingerprint")
    assert not set(run_record.ADDED_DATA_DEFAULTS) & set(identity["data"])
    training = identity["training"]
    assert "class_weights" not in training and "balanced_sampling" not in training
    assert "class_weights" not in training["step"]
    stages_identity = run_record.identity(specs.resolve(stages_demo.get_config()), "fp")
    assert stages_identity["data"]["synthetic_layout"] == "oasis"
    assert stages_identity["training"]["class_weights"] == "balanced"


def test_detection_keeps_adni_for_ad_nc_and_class_folders_for_other_classes(tmp_path):
    for classes, expected in ((("AD", "NC"), "adni"), (("AD", "CN", "MCI"), "folders")):
        root = tmp_path / "_".join(classes)
        for split in ("train", "test"):
            for cls in classes:
                (root / split / cls).mkdir(parents=True)
                cv2.imwrite(str(root / split / cls / f"{cls}1_{split}.jpg"),
                            np.full((8, 8), 50, np.uint8))  # fmt: skip
        assert registry.detect(root) == expected
    with pytest.raises(LayoutError, match=r"--config\.data\.layout=folders"):
        registry.parse(tmp_path / "AD_NC")  # ADNI names: the ADNI parser says what is wrong


def test_a_damaged_parquet_file_is_named(tmp_path):
    (tmp_path / "train-0.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(LayoutError, match=r"train-0\.parquet: not a readable parquet"):
        registry.describe(tmp_path)
    with pytest.raises(LayoutError, match=r"train-0\.parquet: not a readable parquet"):
        registry.parse(tmp_path)


def test_oasis_names_in_lower_case_keep_their_subject(stage_sets, tmp_path):
    src = stage_sets["oasis"][0]
    folders = sorted(p for p in (src / "Data").iterdir() if p.is_dir())[:2]
    for path in [f for folder in folders for f in sorted(folder.iterdir())[:3]]:
        dest = tmp_path / "Data" / path.parent.name / path.name.lower()
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(path.read_bytes())
    parsed = registry.parse(tmp_path)
    assert all(s.startswith("OAS1_") for s in parsed.subject_of_scan.values())
    upper = registry.parse(src)
    lower_subjects = set(parsed.subject_of_scan.values())
    assert lower_subjects <= set(upper.subject_of_scan.values())


def test_two_classes_other_than_nc_and_ad_are_refused_by_the_two_class_path(prepared):
    config = stages_demo.get_config()
    config.model.num_classes = 2
    run = specs.resolve(config)

    class TwoOther:
        class_names = ("CN", "MCI")

    with pytest.raises(UserError, match="reads them as NC and AD"):
        run.check_classes(TwoOther().class_names)


def test_what_lies_outside_the_class_folders_is_reported_or_refused(stage_sets, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(stage_sets["folders"][0], root)
    (root / "README.txt").write_text("about\n")
    (root / "__MACOSX").mkdir()
    (root / "train" / "list.csv").write_text("a,b\n")
    parsed = registry.parse(root)
    strays = sorted(p.relative_to(root).as_posix() for p in parsed.stray_files)
    assert strays == ["README.txt", "__MACOSX", "train/list.csv"]
    image = next((root / "test" / "NonDemented").iterdir())
    (root / "test" / image.name).write_bytes(image.read_bytes())
    with pytest.raises(LayoutError, match="an image outside any class folder"):
        registry.parse(root)


def test_bags_know_the_scans_of_the_oasis_layout_and_refuse_plain_folders(prepared):
    """A scan model's bags: the OASIS layout names each slice's scan (its slices in order); plain
    class folders name none, and bags of them are refused in one line."""
    records = prepared["oasis"].records("train")
    scans = bags.ScanIndex.from_records(records, "train")
    assert scans.max_slices > 1 and scans.num_records == len(records["label"])
    for members in scans.members:
        assert len({records["scan_id"][m] for m in members}) == 1
        assert list(records["slice_index"][members]) == sorted(records["slice_index"][members])
    with pytest.raises(UserError, match=r"every scan of train has one slice"):
        bags.ScanIndex.from_records(prepared["folders"].records("train"), "train")
