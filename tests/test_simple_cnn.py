"""The plain-CNN baseline family (`model.name = 'simple_cnn'`): its exact parameter count and
FLOPs, shapes, BatchNorm's batch statistics in training and running statistics in evaluation,
the refusals (weights to import, unknown or mismatched sizes), its registration under the
generic family checks, the stages config, and a few steps of training, evaluation and export."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alz_jax.configs import stages_simple_cnn
from alz_jax.data import preprocess
from alz_jax.host.errors import UserError
from alz_jax.models import batchnorm, registry, simple_cnn
from alz_jax.models.layers import head_dropout
from alz_jax.run import exporting, run_record, specs, train
from tests import test_families
from tests import tiny_config as tiny_config_file

SMALL = {"dims": (4, 8), "depths": (1, 2), "num_classes": 3}
# Block 0: conv 3x3 1->4 + BN(4); block 1: conv 3x3 4->8 + BN(8), conv 3x3 8->8 + BN(8);
# classifier 8->3 with bias. The convolutions have no bias (BatchNorm's follows).
SMALL_PARAMS = (9 * 1 * 4 + 2 * 4) + (9 * 4 * 8 + 2 * 8) + (9 * 8 * 8 + 2 * 8) + (8 * 3 + 3)


def small_spec(**fields) -> simple_cnn.SimpleCNNSpec:
    return registry.spec_from_name("simple_cnn", {**SMALL, **fields})


def test_parameter_count_and_flops_are_the_closed_forms():
    assert SMALL_PARAMS == 967
    assert registry.count_params(small_spec()) == SMALL_PARAMS
    # 32 px: block 0 at 32x32, block 1 at 16x16; the classifier's multiply-adds.
    macs = 32 * 32 * 9 * 1 * 4 + 16 * 16 * 9 * (4 * 8 + 8 * 8) + 8 * 3
    assert registry.forward_flops_per_image(small_spec(), 32) == 2 * macs
    # The defaults (docs/models.md, configs/stages_simple_cnn.py): four blocks of two convs.
    default = registry.spec_from_name("simple_cnn", num_classes=4)
    assert (default.dims, default.depths) == ((32, 64, 128, 256), (2, 2, 2, 2))
    assert registry.count_params(default) == 1_173_668
    assert registry.forward_flops_per_image(default, 64) == 417_597_440
    assert registry.forward_flops_per_image(default, 224) == 5_115_545_600
    assert registry.title(default) == "Simple CNN 32-64-128-256, 2-2-2-2 convs"


def test_logits_and_feature_map_shapes():
    net = registry.build(small_spec(), 0)
    x = jnp.zeros((2, 33, 33, 1), jnp.float32)  # an odd side: the pool drops the last row
    logits = net(x)
    assert logits.shape == (2, 3) and logits.dtype == jnp.float32
    # The map Grad-CAM weighs: the last convolution's, before the last block's pool.
    assert net.feature_map(x).shape == (2, 16, 16, 8)
    assert simple_cnn.max_pool(jnp.ones((1, 5, 5, 2))).shape == (1, 2, 2, 2)


def _images(seed: int, size: int) -> jax.Array:
    batch = test_families.batch(seed, size)["image"]
    return jnp.asarray(preprocess.normalize(batch, *test_families.STATS.values()))


def test_batchnorm_uses_batch_statistics_in_training_and_running_ones_in_evaluation():
    net = registry.build(small_spec(), 0)
    norms = dict(batchnorm.named_batch_norms(net))
    assert sorted(norms) == ["stages/0/0/bn", "stages/1/0/bn", "stages/1/1/bn"]
    x = _images(0, 8)
    _, seen = batchnorm.observed(net, x)
    # The first norm observed its convolution's batch mean and unbiased variance.
    conv = np.asarray(net.stages[0][0].conv(x), np.float64).reshape(-1, 4)
    np.testing.assert_allclose(seen["stages"][0][0]["bn"]["mean"], conv.mean(0), atol=1e-5)
    np.testing.assert_allclose(seen["stages"][0][0]["bn"]["var"], conv.var(0, ddof=1),
                               rtol=1e-4)  # fmt: skip
    assert not any(n.training for n in norms.values())  # left in evaluation mode

    # Evaluation: running statistics, so a sample's logits don't depend on its batch...
    fresh = registry.build(small_spec(), 0)
    alone, together = fresh(x[:1]), fresh(x)[:1]
    np.testing.assert_allclose(alone, together, rtol=1e-5, atol=1e-6)
    # ...and they are the ones it holds: other running statistics, other logits.
    moved = registry.build(small_spec(), 0)
    moved.stages[0][0].bn.mean.value = moved.stages[0][0].bn.mean.value + 0.5
    assert np.abs(np.asarray(moved(x)) - np.asarray(fresh(x))).max() > 1e-3
    # Training: the batch's statistics, so a sample's logits do depend on its batch.
    batchnorm.set_training(fresh, True)
    alone, together = fresh(x[:1]), fresh(x)[:1]
    assert np.abs(np.asarray(alone) - np.asarray(together)).max() > 1e-3


def test_the_train_step_moves_the_running_statistics():
    _, parts = test_families.setup("simple_cnn", **{"ema.enabled": False,
                                                    "swa.enabled": False})  # fmt: skip
    state = parts.fresh_state(0)
    before = jax.device_get(state["batch_stats"])
    state, metrics = parts.train_step(state, test_families.batch(0))
    after = jax.device_get(state["batch_stats"])
    assert np.isfinite(float(metrics["loss"]))
    moved = test_families._moved_norms(before, after)
    assert moved == {"stages/0/0/bn": True, "stages/1/0/bn": True, "stages/1/1/bn": True}


def test_head_dropout_acts_on_the_pooled_features_before_the_classifier():
    net = registry.build(small_spec(head_dropout=0.5), 0)
    x = _images(1, 4)
    keys = jax.random.split(jax.random.key(3), 4)
    pooled = jnp.mean(simple_cnn.max_pool(net.feature_map(x)), axis=(1, 2))
    expected = net.head.fc(head_dropout(pooled, 0.5, keys))
    np.testing.assert_allclose(net(x, sample_keys=keys), expected, rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(net(x, sample_keys=keys)) - np.asarray(net(x))).max() > 1e-4


def test_registered_and_covered_by_the_generic_family_checks():
    assert registry.NAMES["simple_cnn"] == ("simple_cnn", "default")
    assert registry.FAMILIES["simple_cnn"].spec_type is simple_cnn.SimpleCNNSpec
    # tests/test_families.py runs check_contract, check_layer_decay and check_gradcam over
    # these; its frozen-parameter check is run here.
    assert "simple_cnn" in test_families.families()
    test_families.check_frozen_parameters("simple_cnn", "last_stage")
    spec = specs.resolve(test_families.config_for("simple_cnn")).model
    params, _ = registry.init_variables(spec, 0)
    ids, layers = registry.layer_ids(spec, params)
    assert layers == 4  # three convolution units, then the classifier
    assert ids["stages"][1][1]["bn"]["scale"] == 2 and ids["head"]["fc"]["kernel"] == 3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model.init_from": "timm:/w.pth"},
         r"config\.model\.init_from = 'timm:/w\.pth': model\.name = 'simple_cnn' trains from "
         r"scratch only"),
        ({"model.arch": {"widths": (4, 8)}},
         r"config\.model\.arch has \['widths'\], which a simple_cnn spec does not have"),
        ({"model.arch": {"dims": (4, 8), "depths": (1,)}},
         r"simple_cnn depths \(1,\) and dims \(4, 8\) \(config\.model\.arch\): expected "
         r"non-empty and of the same length"),
        ({"model.arch": {"dims": (4, 0), "depths": (1, 1)}},
         r"config\.model\.dims = \(4, 0\): expected each >= 1 \(channels per stage\)"),
    ],
    ids=["init_from", "unknown_field", "lengths", "zero_channels"],
)  # fmt: skip
def test_refusals_name_the_setting(overrides, message):
    with pytest.raises(UserError, match=message):
        specs.resolve(test_families.config_for("simple_cnn", **overrides))


def test_stages_config_is_the_stages_demo_with_the_plain_cnn_and_recipe():
    run = specs.resolve(stages_simple_cnn.get_config())
    assert run.model == simple_cnn.SimpleCNNSpec(num_classes=4, depths=(1, 1, 1, 1))
    assert registry.count_params(run.model) == 389_348  # the figure its docstring gives
    assert registry.forward_flops_per_image(run.model, 64) == 115_607_552
    config = stages_simple_cnn.get_config()
    assert (config.optim.learning_rate, config.optim.weight_decay) == (1e-3, 1e-4)
    assert config.optim.class_weights == "balanced" and config.mix.prob == 0.0
    assert not config.ema.enabled and not config.swa.enabled
    assert (config.data.image_size, config.num_epochs) == (64, 15)


@pytest.mark.slow
def test_trains_evaluates_and_exports(tiny_synthetic, tmp_path):
    manual_dir, summary = tiny_synthetic
    config = test_families.with_test_model(tiny_config_file.get_config(), "simple_cnn")
    config.data.manual_dir = str(manual_dir)
    config.data.data_dir = str(tmp_path / "tfds")
    config.num_train_steps = 2
    config.eval.bootstrap_samples = 20
    workdir = tmp_path / "w"
    report = train.train_and_evaluate(config, str(workdir))

    assert report["checkpoint_step"] == 2
    assert report["slice"]["n"] == sum(c["images"] for c in summary["test"].values())
    record = run_record.load(str(workdir))
    assert record["identity"]["model"]["family"] == "simple_cnn"
    assert record["identity"]["model"]["dims"] == [4, 8]

    out = exporting.export(str(workdir), "safetensors", "latest", "raw",
                           output=str(tmp_path / "export"))  # fmt: skip
    model = json.loads((out / exporting.METADATA_FILE).read_text())["model"]
    assert model["family"] == "simple_cnn" and model["architecture"] == "Simple CNN 4-8, 1-2 convs"
    assert model["parameters"] == registry.count_params(
        registry.spec_from_name("simple_cnn", {"dims": (4, 8), "depths": (1, 2)})
    )
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 1), dtype=np.uint8)
    logits = np.asarray(exporting.load_inference(str(out))(images))
    assert logits.shape == (3, 2) and np.all(np.isfinite(logits))
