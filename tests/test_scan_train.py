"""Scan models in training and evaluation, on 8 fake devices: the mean bag's gradient is the sum
of its slices' gradients; a bag step on 8 devices equals one on 1; a bag run reports the bag
model beside both slice baselines, writes each slice's weight, resumes exactly, and its
`predict` and export reproduce its evaluation."""

import csv
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alz_jax.core import checkpointing, sharding, steps
from alz_jax.host.errors import UserError
from alz_jax.models import registry, scan
from alz_jax.run import (
    assembly,
    compare_runs,
    exporting,
    prediction,
    saved_run,
    specs,
    train,
)
from alz_jax.run.saved_run import SavedRun
from tests import interrupt
from tests import tiny_config as tiny_config_file

pytestmark = pytest.mark.slow

SMALL_CONVNEXT = {"depths": (1, 1), "dims": (8, 16)}


def encoder_spec():
    return registry.spec_from_config(
        _model_section(), in_chans=1, num_classes=2, drop_path_rate=0.0, head_dropout=0.0,
        dtype="float32", param_dtype="float32", depthwise="xla", image_size=32,
    )  # fmt: skip


def _model_section():
    config = tiny_config_file.get_config()
    config.model.depths, config.model.dims = SMALL_CONVNEXT["depths"], SMALL_CONVNEXT["dims"]
    return config.model


def test_the_mean_bag_gradient_is_the_sum_of_its_slices_gradients():
    spec = scan.scan_spec(encoder_spec(), "mean")
    params, _ = registry.init_variables(spec, 0)
    model = steps.make_model(spec)
    rng = np.random.default_rng(0)
    bags = jnp.asarray(rng.normal(size=(2, 3, 32, 32, 1)), jnp.float32)
    labels = jnp.asarray([0, 1])

    def bag_loss(p):
        return steps.cross_entropy(model.apply(p, bags), labels, 0.0).sum()

    bag_grads = jax.grad(bag_loss)(params)
    # By hand: the bag logit is the mean of its slices' logits (a linear classifier of the mean
    # embedding), so dL/dtheta = sum_k (dL/dz)^T (dz_k/dtheta) / K, with dL/dz at the bag's z.
    bag_logits = model.apply(params, bags)
    upstream = jax.nn.softmax(bag_logits) - jax.nn.one_hot(labels, 2)

    def slice_term(p, k):
        net = model.module(p)
        logits = net.encoder.classify(net.encoder.embed(bags[:, k]))
        return jnp.sum(upstream * logits) / bags.shape[1]

    summed = jax.tree.map(jnp.zeros_like, params)
    for k in range(bags.shape[1]):
        summed = jax.tree.map(jnp.add, summed, jax.grad(slice_term)(params, k))
    for (path, got), want in zip(jax.tree_util.tree_leaves_with_path(bag_grads),
                                 jax.tree.leaves(summed), strict=True):  # fmt: skip
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=str(path))
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(bag_grads)) > 0


def _bag_batch(bags: int, k: int, size: int) -> dict:
    rng = np.random.default_rng(1)
    return {
        "image": rng.integers(0, 256, (bags, k, size, size, 1), np.uint8),
        "label": rng.integers(0, 2, bags).astype(np.int32),
        "slice_mask": np.ones((bags, k), np.int32),
        "positions": np.tile(np.arange(k, dtype=np.int32), (bags, 1)),
    }


@pytest.mark.parametrize("aggregator", ["attention", "transformer"])
def test_a_bag_step_on_eight_devices_equals_one_on_one(aggregator):
    spec = scan.scan_spec(encoder_spec(), aggregator)
    model = steps.make_model(spec)
    # Plain SGD: Adam would turn the attention score's bias, whose gradient is 0 up to rounding
    # (a softmax ignores a shift), into steps of +-lr whose sign is the rounding's.
    tx = optax.sgd(0.1)
    batch = _bag_batch(8, 3, 32)
    stats = {"mean": 0.4, "std": 0.25}
    step_spec = steps.StepSpec(seed=3, noise_prob=0.5, noise_std=0.02)
    results = []
    for devices in (jax.devices(), jax.devices()[:1]):
        mesh = jax.sharding.Mesh(np.array(devices), ("data",))
        step = steps.make_train_step(model, tx, optax.constant_schedule(1e-3), step_spec, stats,
                                     mesh)  # fmt: skip
        state = steps.create_train_state(spec, tx, mesh, seed=0)
        for _ in range(2):
            placed = {k: jax.device_put(v, sharding.batch_sharded(mesh)) for k, v in batch.items()}
            state, metrics = step(state, placed)
        results.append((jax.device_get(state["params"]), float(metrics["loss"])))
    (a, loss_a), (b, loss_b) = results
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("tfds_scan")


def bag_config(manual_dir, data_dir, **overrides):
    config = tiny_config_file.get_config()
    config.data.manual_dir, config.data.data_dir = str(manual_dir), str(data_dir)
    settings = {
        "model.depths": SMALL_CONVNEXT["depths"], "model.dims": SMALL_CONVNEXT["dims"],
        "model.aggregator": "attention", "data.bag_size": 4, "batch_size": 8,
        "mix.prob": 0.0, "num_train_steps": 4, "warmup_steps": 1, "eval_every_steps": 2,
        "swa.enabled": False, "eval.gradcam_scans": 2, "eval.bootstrap_samples": 50,
        **overrides,
    }  # fmt: skip
    tiny_config_file.override(config, settings)
    return config


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _copy_scan(members: list[dict], manual_dir, folder: Path) -> Path:
    """A folder holding the image files of one scan's predictions rows (what `predict` reads)."""
    folder.mkdir()
    for member in members:
        source = next(Path(manual_dir).rglob(Path(member["file_name"]).name))
        (folder / source.name).write_bytes(source.read_bytes())
    return folder


def _final_state(workdir, config):
    run = specs.resolve(config)
    manager = checkpointing.make_manager(workdir, run.checkpoint)
    parts = assembly.assemble(run, run.plan(steps_per_epoch=1), sharding.make_mesh(),
                              {"mean": 0.0, "std": 1.0})  # fmt: skip
    return checkpointing.restore(manager, manager.latest_step(), parts.abstract_state())


def test_a_bag_run_reports_resumes_predicts_and_exports(
    tiny_synthetic, data_dir, tmp_path, monkeypatch
):
    manual_dir, _ = tiny_synthetic
    config = bag_config(manual_dir, data_dir)
    workdir = tmp_path / "a"
    train.train_and_evaluate(config, str(workdir))
    report = json.loads((workdir / "report_test.json").read_text())

    # The bag model beside both slice baselines, at scan and subject level, paired.
    methods = report["scan_methods"]
    names = methods["methods"]
    assert names == ["slice model + average", "slice model + weighted vote",
                     "bag model (attention)"]  # fmt: skip
    markdown = (workdir / "report_test.md").read_text()
    assert all(name in markdown for name in names)

    # Every slice carries its scan's prediction and its weight; the weights of a scan sum to 1.
    rows = _rows(workdir / "predictions_test.csv")
    by_scan = {}
    for row in rows:
        by_scan.setdefault(row["scan_id"], []).append(row)
    assert len(by_scan) == report["scan"]["n"]
    for members in by_scan.values():
        assert len({m["prob_ad"] for m in members}) == 1
        assert sum(float(m["bag_weight"]) for m in members) == pytest.approx(1.0, abs=1e-4)
    assert (workdir / "attention_0_test.png").is_file() and report["attention_scans"]

    # `predict` on the slices of one test scan gives the report's probability of that scan.
    scan_id, members = next(iter(by_scan.items()))
    folder = _copy_scan(members, manual_dir, tmp_path / "one_scan")
    result = prediction.run(str(workdir), [str(folder)])
    assert {r["scan_id"] for r in result["images"]} == {scan_id}
    for row in result["images"]:
        assert row["prob_ad"] == pytest.approx(float(members[0]["prob_ad"]), abs=1e-5)

    # The export's inference function reproduces the scan's margin.
    out = exporting.export(str(workdir), "safetensors", platforms=("cpu",))
    infer = exporting.load_inference(out)
    images = np.stack([prediction.preprocess.to_model_input(
        prediction.preprocess.decode_image(p.read_bytes(), str(p)), 32)
        for p in sorted(folder.iterdir(), key=lambda p: prediction.SLICE_NAME.match(p.stem)
                        and int(prediction.SLICE_NAME.match(p.stem)["slice"]))])  # fmt: skip
    logits = infer(images[None], np.ones((1, len(images)), np.int32))
    assert float(logits[0, 1] - logits[0, 0]) == pytest.approx(
        float(members[0]["logit_ad"]), abs=1e-4
    )

    # Interrupted after the step-2 checkpoint and run again: the same final state, bit for bit.
    interrupt.train_until(monkeypatch, config, str(tmp_path / "b"), 3)
    train.train_and_evaluate(config, str(tmp_path / "b"))
    a, b = _final_state(workdir, config), _final_state(tmp_path / "b", config)
    assert int(a["step"]) == int(b["step"]) == 4
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_scan_model_starts_its_encoder_from_a_slice_run(tiny_synthetic, data_dir, tmp_path):
    manual_dir, _ = tiny_synthetic
    slice_config = bag_config(
        manual_dir, data_dir, **{"model.aggregator": "none", "batch_size": 16, "num_train_steps": 2}
    )
    train.train_and_evaluate(slice_config, str(tmp_path / "slices"))
    bag_run = specs.resolve(bag_config(manual_dir, data_dir, **{
        "model.init_from": f"run:{tmp_path / 'slices'}"}))  # fmt: skip
    params, stats = saved_run.run_variables(bag_run.init_from, bag_run.model, seed=0)
    trained = SavedRun.open(str(tmp_path / "slices")).restore("best").params
    for x, y in zip(jax.tree.leaves(params["encoder"]), jax.tree.leaves(trained), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    fresh, _ = registry.init_variables(bag_run.model, 0)
    for x, y in zip(jax.tree.leaves(params["aggregator"]), jax.tree.leaves(fresh["aggregator"]),
                    strict=True):  # fmt: skip
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert stats == {}
    # Trained from it, then compared with it, its weighted vote beside it: paired, with each
    # model's cost (a bag step times bags of slices) and a perturbation's curve.
    bag_config_from_run = bag_config(manual_dir, data_dir, **{
        "model.init_from": f"run:{tmp_path / 'slices'}", "num_train_steps": 2})  # fmt: skip
    train.train_and_evaluate(bag_config_from_run, str(tmp_path / "bags"))
    settings = compare_runs.CompareSettings(
        resamples=50, timed_steps=1, warmup_steps=0, perturbations=("noise",),
        levels={"noise": (0.1,)}, weighted_vote=True,
    )  # fmt: skip
    result = compare_runs.compare(
        [str(tmp_path / "slices"), str(tmp_path / "bags")],
        str(tmp_path / "compare"),
        settings,
        ["slices", "bags"],
    )
    assert [m["name"] for m in result["models"]] == ["slices", "slices + weighted vote", "bags"]
    vote, bag = result["models"][1], result["models"][2]
    assert vote["cost"] == result["models"][0]["cost"]
    assert bag["cost"]["train"]["images_per_s"] > 0 and bag["cost"]["batch"] % 4 == 0
    report = json.loads((tmp_path / "slices" / "report_test.json").read_text())
    method = report["scan_methods"]["results"]["scan"]["slice model + weighted vote"]
    assert vote["metrics"]["scan"]["balanced_accuracy"]["value"] == pytest.approx(
        method["metrics"]["balanced_accuracy"]["value"]
    )
    assert set(result["paired_differences"]) == {"slices + weighted vote", "bags"}
    curves = result["robustness"]["perturbations"]["noise"]["curves"]
    assert set(curves) == {"slices", "slices + weighted vote", "bags"}

    # Another model's run is refused, naming both.
    other = specs.resolve(bag_config(manual_dir, data_dir, **{
        "model.dims": (8, 24), "model.init_from": f"run:{tmp_path / 'slices'}"}))  # fmt: skip
    with pytest.raises(UserError, match="that run trained"):
        saved_run.run_variables(other.init_from, other.model, seed=0)


def test_a_2_5d_run_reads_each_slice_with_its_neighbours_everywhere(
    tiny_synthetic, data_dir, tmp_path
):
    """2.5D input: the model takes 3 channels; its report (Grad-CAM included) and `predict` on
    one scan's files (neighbours stacked from the file names) give the same probabilities."""
    manual_dir, _ = tiny_synthetic
    config = bag_config(manual_dir, data_dir, **{
        "model.aggregator": "none", "data.neighbours": 1, "batch_size": 16,
        "num_train_steps": 2, "eval.gradcam_scans": 1,
    })  # fmt: skip
    workdir = tmp_path / "w"
    train.train_and_evaluate(config, str(workdir))
    assert specs.resolve(config).model.in_chans == 3
    assert (workdir / "gradcam_test.png").is_file()
    rows = _rows(workdir / "predictions_test.csv")
    scan_id = rows[0]["scan_id"]
    members = [r for r in rows if r["scan_id"] == scan_id]
    folder = _copy_scan(members, manual_dir, tmp_path / "one_scan")
    result = prediction.run(str(workdir), [str(folder)])
    expected = {Path(m["file_name"]).name: float(m["prob_ad"]) for m in members}
    assert len(result["images"]) == len(members) > 2
    for row in result["images"]:
        assert row["prob_ad"] == pytest.approx(expected[Path(row["file"]).name], abs=1e-5)
