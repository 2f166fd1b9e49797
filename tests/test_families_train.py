"""A BatchNorm model end to end: a tiny ResNet trains with EMA and SWA, its SWA statistics are
recomputed before validation, an interrupted run resumes bitwise (running statistics and their
averages included), and the exported function gives the evaluated model's logits."""

import json

import jax
import numpy as np
import pytest

from alz_jax.core import checkpointing, sharding, steps
from alz_jax.run import assembly, exporting, prediction, specs, train
from tests import interrupt
from tests import tiny_config as tiny_config_file
from tests.test_families import with_test_model

pytestmark = pytest.mark.slow


def resnet_config(manual_dir, data_dir):
    config = tiny_config_file.get_config()
    config.data.manual_dir = str(manual_dir)
    config.data.data_dir = str(data_dir)
    with_test_model(config, "resnet")
    config.num_train_steps = 4
    config.swa.start_fraction = 0.25  # SWA from step 1: validated (with its statistics) at 2, 4
    config.swa.bn_update_batches = 2
    config.eval.bootstrap_samples = 50
    return config


def final_state(workdir, config):
    run = specs.resolve(config)
    manager = checkpointing.make_manager(workdir, run.checkpoint)
    parts = assembly.assemble(run, run.plan(1), sharding.make_mesh(), {"mean": 0.0, "std": 1.0})
    return checkpointing.restore(manager, manager.latest_step(), parts.abstract_state())


def test_resnet_trains_resumes_bitwise_and_exports(tiny_synthetic, tmp_path, monkeypatch):
    manual_dir, _ = tiny_synthetic
    config = resnet_config(manual_dir, tmp_path / "tfds")
    train.train_and_evaluate(config, str(tmp_path / "a"))
    report = json.loads((tmp_path / "a" / "report_test.json").read_text())
    assert report["slice"]["n"] > 0

    interrupt.train_until(monkeypatch, config, str(tmp_path / "b"), 3)
    train.train_and_evaluate(config, str(tmp_path / "b"))

    a, b = final_state(tmp_path / "a", config), final_state(tmp_path / "b", config)
    assert {"batch_stats", "swa_stats_count"} <= set(a)
    assert set(a["ema"]) == set(a["swa"]) == {"params", "batch_stats"}
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # The last validation recomputed the SWA statistics for the last SWA update.
    assert int(a["swa_stats_count"]) == int(a["swa_count"]) > 0
    moved = [np.abs(np.asarray(s)).max() for s in jax.tree.leaves(a["swa"]["batch_stats"])]
    assert min(moved) > 0  # not the zeros they start as

    # SWA weights evaluate with those statistics; the export reproduces the evaluated logits.
    loaded = prediction.load_model(str(tmp_path / "a"), "latest", "swa")
    assert set(loaded["params"]) == {"params", "batch_stats"}
    out = exporting.export(str(tmp_path / "a"), "safetensors", "latest", "swa",
                           output=str(tmp_path / "export"))  # fmt: skip
    infer = exporting.load_inference(str(out))
    images = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 1), dtype=np.uint8)
    predict = steps.make_predict_step(loaded["model"], loaded["pixel_stats"], loaded["mesh"])
    margin = np.asarray(predict(loaded["params"], images))
    logits = np.asarray(infer(images))
    np.testing.assert_allclose(logits[:, 1] - logits[:, 0], margin, rtol=0, atol=1e-5)
