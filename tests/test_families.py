"""Every model family through the training core: BatchNorm statistics of the global batch on 8
devices as on 1, running statistics in the EMA, SWA's statistics pass against its eager
reference, frozen parameters (unchanged, without optimizer state) and layer-wise decay."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alz_jax.core import averaging, optim, sharding, steps
from alz_jax.data import preprocess
from alz_jax.evaluation import saliency
from alz_jax.host.errors import UserError
from alz_jax.models import batchnorm, convnext, registry
from alz_jax.run import assembly, run_record, specs
from tests import tiny_config

STATS = {"mean": 0.25, "std": 0.3}


def families() -> list[str]:
    """The registered families: each is tested through its `test_config` (a small variant for
    32-px images), so a family is covered by being registered. A family that no model.name
    selects (scan models, wrapping another family's: tests/test_scan_models.py) is left out."""
    return sorted(name for name, fam in registry.FAMILIES.items() if fam.names)


def one_device_mesh():
    return jax.make_mesh((1,), ("data",), devices=jax.devices()[:1],
                         axis_types=(jax.sharding.AxisType.Auto,))  # fmt: skip


def with_test_model(config, family: str):
    """`config` with the family's small variant: its `test_config` fields of config.model."""
    config.model.arch = {}
    for key, value in registry.FAMILIES[family].test_config.items():
        config.model[key] = value
    return config


def config_for(family: str, **overrides):
    """The tiny test config with the family's small variant, without Mixup/CutMix, and
    `overrides` ('a.b.c': value)."""
    config = with_test_model(tiny_config.get_config(), family)
    config.mix.prob = 0.0
    tiny_config.override(config, overrides)
    return config


def setup(family: str, mesh=None, **overrides):
    run = specs.resolve(config_for(family, **overrides))
    parts = assembly.assemble(run, run.plan(2), mesh or sharding.make_mesh(), STATS)
    return run, parts


def batch(seed: int = 0, size: int = 16) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (size, 32, 32, 1), dtype=np.uint8),
        "label": rng.integers(0, 2, (size,), dtype=np.int32),
    }


def assert_trees_close(a, b, atol):
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b),
                            strict=True):  # fmt: skip
        np.testing.assert_allclose(
            np.asarray(x, np.float64),
            np.asarray(y, np.float64),
            rtol=0,
            atol=atol,
            err_msg=jax.tree_util.keystr(path),
        )


@pytest.fixture(scope="module")
def one_device_resnet_step():
    """The reference: one step of the tiny ResNet on one device, and the statistics before."""
    _, one = setup("resnet", one_device_mesh(), grad_accum_steps=1)
    state = one.fresh_state(0)
    before = jax.device_get(state["batch_stats"])
    state, _ = one.train_step(state, batch())
    return before, jax.device_get(state)


@pytest.mark.parametrize("impl", ["jit", "shard_map"])
def test_batchnorm_statistics_on_8_devices_are_the_global_batchs(impl, one_device_resnet_step):
    """The 8-device step (XLA-partitioned, or per device with the moments' pmean) gives the
    running statistics and update of the same global batch on one device."""
    before, state1 = one_device_resnet_step
    _, eight = setup("resnet", step_impl=impl, grad_accum_steps=1)
    state8, _ = eight.train_step(eight.fresh_state(0), batch())
    state8 = jax.device_get(state8)
    assert_trees_close(state8["batch_stats"], state1["batch_stats"], atol=1e-6)
    assert_trees_close(state8["params"], state1["params"], atol=1e-6)
    # The statistics moved by 0.1 of the way to the batch's (PyTorch's momentum).
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), state1["batch_stats"], before)
    assert min(jax.tree.leaves(moved)) > 0


def test_ema_averages_running_statistics_with_the_weights():
    run, parts = setup("resnet", **{"ema.dtype": "float32", "ema.warmup": False,
                                    "ema.decay": 0.5})  # fmt: skip
    state = parts.fresh_state(0)
    state, _ = parts.train_step(state, batch(0))
    first = jax.device_get(state["batch_stats"])
    np.testing.assert_equal(jax.device_get(state["ema"]["batch_stats"]), first)  # copy
    state, _ = parts.train_step(state, batch(1))
    second = jax.device_get(state["batch_stats"])
    expected = jax.tree.map(lambda e, s: 0.5 * e + 0.5 * s, first, second)
    assert_trees_close(jax.device_get(state["ema"]["batch_stats"]), expected, atol=1e-6)
    # SWA keeps parameters only: its statistics wait for the statistics pass.
    assert int(state["swa_stats_count"]) == 0
    assert run.averages.swa


def test_statistics_pass_equals_the_eager_update_bn_reference():
    """The jitted, batch-sharded pass = batchnorm.cumulative_statistics (torch's update_bn
    arithmetic, checked against torch itself in tests/test_resnet.py)."""
    run, parts = setup("resnet")
    model = parts.model
    params, stats = registry.init_variables(run.model, 3)
    # Non-trivial BatchNorm parameters, so every layer's input depends on the ones before.
    params = jax.tree.map(lambda p: p + 0.1 * np.sin(np.arange(p.size).reshape(p.shape)), params)
    weights = model.weights(params, stats)
    images = [batch(seed)["image"] for seed in range(3)]
    step = steps.make_statistics_pass(model, STATS, parts.mesh)
    running = jax.tree.map(jnp.zeros_like, stats)
    for k, x in enumerate(images):
        running = step(weights, running, np.int32(k), x)
    reference = batchnorm.cumulative_statistics(
        model.module(weights),
        [preprocess.normalize(jnp.asarray(x), STATS["mean"], STATS["std"]) for x in images],
    )
    assert_trees_close(jax.device_get(running), reference, atol=1e-5)
    # Not the statistics of any single batch: the mean over the three.
    single = batchnorm.cumulative_statistics(
        model.module(weights), [preprocess.normalize(jnp.asarray(images[0]), 0.25, 0.3)]
    )
    assert (
        max(
            np.abs(a - b).max()
            for a, b in zip(jax.tree.leaves(running), jax.tree.leaves(single), strict=True)
        )
        > 1e-3
    )


def _leaf_size(tree) -> int:
    return sum(int(np.size(x)) for x in jax.tree.leaves(tree) if np.ndim(x) > 0)


@pytest.mark.parametrize(
    ("family", "trainable"),
    [("convnext", "head"), ("resnet", "last_stage"), ("vit", "head"), ("efficientnet", "head")],
)
def test_frozen_parameters_do_not_change_and_have_no_optimizer_state(family, trainable):
    check_frozen_parameters(family, trainable)


def check_frozen_parameters(family: str, trainable: str) -> None:
    """Parameters outside the `trainable` preset stay bitwise and have no optimizer state."""
    # Layer decay on: the family's layer ids inside the frozen-aware optimizer.
    run, parts = setup(family, **{"optim.trainable": trainable, "optim.layer_decay": 0.8,
                                  "ema.enabled": False, "swa.enabled": False})  # fmt: skip
    pattern = specs.trainable_pattern(run)
    state = parts.fresh_state(0)
    start = jax.device_get(state["params"])
    mask = optim.trainable_mask(start, pattern)
    for seed in range(2):
        state, metrics = parts.train_step(state, batch(seed))
    end = jax.device_get(state["params"])
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), start, end)
    moves = list(zip(jax.tree.leaves(mask), jax.tree.leaves(changed), strict=True))
    assert not any(moved for trains, moved in moves if not trains)  # frozen: bitwise unchanged
    assert any(moved for trains, moved in moves if trains)
    trainable_size = sum(
        int(np.size(p))
        for p, m in zip(jax.tree.leaves(start), jax.tree.leaves(mask), strict=True)
        if m
    )
    assert 0 < trainable_size < _leaf_size(start)
    # Adam's two moments for the trainable parameters only.
    assert _leaf_size(state["opt_state"]) == 2 * trainable_size
    assert np.isfinite(float(metrics["loss"]))
    # optim.frozen_batchnorm 'running' (the default): frozen layers' statistics stay.
    moved = _moved_norms(parts.fresh_state(0).get("batch_stats", {}), state.get("batch_stats", {}))
    assert all(moved[path] == (path not in parts.model.frozen_norms) for path in moved), moved


def _moved_norms(before, after) -> dict[str, bool]:
    """Per BatchNorm path ('layer1/0/bn1'): whether any of its running statistics changed."""
    moved: dict[str, bool] = {}
    flat_before = jax.tree_util.tree_flatten_with_path(jax.device_get(before))[0]
    for (path, a), b in zip(flat_before, jax.tree.leaves(jax.device_get(after)), strict=True):
        norm = optim.path_name(path).rsplit("/", 1)[0]
        moved[norm] = moved.get(norm, False) or not np.array_equal(a, b)
    return moved


@pytest.mark.parametrize("family", families())
def test_every_family_keeps_the_contract(family):
    check_contract(family)


def check_contract(family: str) -> None:
    """What the training core takes from a family: a spec on the shared base that its names
    resolve to, a model giving float32 logits, counts, FLOPs, a title and the presets."""
    fam = registry.FAMILIES[family]
    assert issubclass(fam.spec_type, registry.ModelSpec) and fam.names
    for name in fam.names:
        assert registry.NAMES[name][0] == family
        assert isinstance(registry.spec_from_name(name, in_chans=1), fam.spec_type)
    run = specs.resolve(config_for(family))
    spec = run.model
    assert registry.family(spec) is fam and registry.title(spec)
    params, stats = registry.init_variables(spec, 0)
    count = sum(int(np.size(p)) for p in jax.tree.leaves(params))
    assert registry.count_params(spec) == count > 0
    assert registry.has_batch_stats(spec) == bool(jax.tree.leaves(stats))
    assert registry.forward_flops_per_image(spec, 32) > count  # at least a MAC per weight
    logits = registry.build(spec, 0)(jnp.zeros((2, 32, 32, 1), jnp.float32))
    assert logits.shape == (2, spec.num_classes) and logits.dtype == jnp.float32
    names = [optim.path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    for preset in ("head", "last_stage"):
        pattern = registry.trainable_pattern(spec, preset)
        assert 0 < sum(bool(re.fullmatch(pattern, n)) for n in names) < len(names), preset


def test_trainable_refuses_a_pattern_matching_nothing():
    with pytest.raises(Exception, match=r"matches no parameter; parameter paths look like"):
        setup("resnet", **{"optim.trainable": "nothing/.*"})
    with pytest.raises(Exception, match=r"neither a preset"):
        setup("resnet", **{"optim.trainable": "head[("})


@pytest.mark.parametrize("family", families())
def test_layer_decay_numbers_every_family_from_input_to_head(family):
    check_layer_decay(family)


def check_layer_decay(family: str) -> None:
    """The family's layer ids number its parameters from 0 at the input to the head, last."""
    run = specs.resolve(config_for(family))
    params, _ = jax.eval_shape(lambda: registry.init_variables(run.model, 0))
    ids, num_layers = registry.layer_ids(run.model, params)
    flat = {optim.path_name(p): i for p, i in jax.tree_util.tree_flatten_with_path(ids)[0]}
    head_pattern = registry.trainable_pattern(run.model, "head")
    head = [i for name, i in flat.items() if re.fullmatch(head_pattern, name)]
    assert head and set(head) == {num_layers - 1}
    assert min(flat.values()) == 0 and num_layers >= 3
    scales = optim.layer_decay_scales(params, 0.5, lambda p: registry.layer_ids(run.model, p))
    values = jax.tree.leaves(scales)
    assert max(values) == 1.0 and min(values) == pytest.approx(0.5 ** (num_layers - 1))


def test_averaging_keeps_its_layout_for_convnext():
    """ConvNeXt's state is what it was before other families: no batch_stats, averages of the
    parameter tree itself."""
    run, parts = setup("convnext")
    state = parts.fresh_state(0)
    assert "batch_stats" not in state and "swa_stats_count" not in state
    assert jax.tree.structure(state["ema"]) == jax.tree.structure(state["params"])
    model = parts.model
    assert not model.batch_stats and isinstance(model.module(state["params"]), nnx.Module)
    assert averaging.available(parts.averages, 0) == ("raw", "ema")
    assert run.model.num_classes == 2


def test_head_dropout_drops_each_samples_features_from_its_own_key():
    keys = jax.random.split(jax.random.key(0), 8)
    x = jnp.asarray(np.random.default_rng(0).uniform(1.0, 2.0, (8, 4096)), jnp.float32)
    out = np.asarray(convnext.head_dropout(x, 0.25, keys))
    kept = out != 0
    assert abs(kept.mean() - 0.75) < 0.01  # 32768 draws: standard error 0.0024
    # Elements are dropped, not whole samples (as drop_path does).
    assert kept.mean(axis=1).min() > 0.7 and kept.mean(axis=1).max() < 0.8
    np.testing.assert_allclose(out[kept], np.asarray(x)[kept] / 0.75, rtol=1e-6)
    # A sample's mask is its key's: the same in any batch it is part of.
    np.testing.assert_array_equal(np.asarray(convnext.head_dropout(x[3:5], 0.25, keys[3:5])),
                                  out[3:5])  # fmt: skip
    # Not the draw of block 0's stochastic depth (another fold of the same key).
    assert convnext.HEAD_KEY_INDEX > 10**6
    for no_drop in (convnext.head_dropout(x, 0.25, None), convnext.head_dropout(x, 0.0, keys)):
        np.testing.assert_array_equal(np.asarray(no_drop), np.asarray(x))


def _pooled(net, x):
    return jnp.mean(net.feature_map(x).astype(jnp.float32), axis=(1, 2))


# Each built-in family's head written out: (net, images) -> (the pooled features, the final
# linear layer).
HEADS = {
    "convnext": lambda net, x: (net.head.norm(_pooled(net, x)), net.head.fc),
    "efficientnet": lambda net, x: (_pooled(net, x), net.classifier),
    "resnet": lambda net, x: (_pooled(net, x), net.head.fc),
    "vit": lambda net, x: (net.tokens(x)[:, 0], net.head),
}


def _head_with_dropout(family: str, net, x):
    """The family's pooled features (computed once), then a function of per-sample keys
    applying dropout and the final linear layer."""
    pooled, classifier = HEADS[family](net, x)
    return lambda keys: classifier(convnext.head_dropout(pooled, 0.5, keys))


@pytest.mark.parametrize("family", sorted(HEADS))
def test_head_dropout_acts_on_the_pooled_features_before_each_familys_classifier(family):
    run = specs.resolve(config_for(family, **{"model.head_dropout": 0.5,
                                              "model.drop_path_rate": 0.0}))  # fmt: skip
    assert run.model.head_dropout == 0.5
    net = registry.build(run.model, 0)
    x = jnp.asarray(preprocess.normalize(batch(1, 4)["image"], 0.25, 0.3))
    keys = jax.random.split(jax.random.key(3), 4)
    head = _head_with_dropout(family, net, x)
    trained = net(x, sample_keys=keys)
    np.testing.assert_allclose(trained, head(keys), rtol=1e-5, atol=1e-6)
    # No keys (evaluation): no dropout, which changes the logits.
    assert np.abs(np.asarray(trained) - np.asarray(head(None))).max() > 1e-4


def test_head_dropout_is_checked_and_left_out_of_a_default_runs_identity():
    with pytest.raises(UserError, match=r"config\.model\.head_dropout = 1\.0.*\[0, 1\)"):
        specs.resolve(config_for("resnet", **{"model.head_dropout": 1.0}))
    plain = run_record.identity(specs.resolve(config_for("convnext")), "fp")["model"]
    assert "head_dropout" not in plain  # runs recorded before the field resume
    dropped = specs.resolve(config_for("convnext", **{"model.head_dropout": 0.2}))
    assert run_record.identity(dropped, "fp")["model"]["head_dropout"] == 0.2


def _model_and_weights(family: str, **overrides):
    run = specs.resolve(config_for(family, **overrides))
    model = steps.make_model(run.model)
    params, stats = registry.init_variables(run.model, 0)
    return model, model.weights(params, stats)


@pytest.mark.parametrize("family", families())
def test_gradcam_target_reproduces_each_familys_logits_and_carries_their_gradient(family):
    check_gradcam(family)


def check_gradcam(family: str) -> None:
    """The family's Grad-CAM target splits the model exactly, carries the margin's gradient,
    and gives maps in [0, 1] at the image size."""
    model, weights = _model_and_weights(family)
    net = model.module(weights)
    x = jnp.asarray(preprocess.normalize(batch(2, 4)["image"], 0.25, 0.3))
    features, to_logits = registry.gradcam_target(model.spec)(net, x)
    assert features.ndim == 4 and features.dtype == jnp.float32
    np.testing.assert_allclose(to_logits(features), net(x), rtol=1e-5, atol=1e-6)
    # The margin depends on the map (a ViT's tokens after its final norm would give 0 here).
    grads = jax.grad(lambda f: jnp.sum(to_logits(f)[:, 1] - to_logits(f)[:, 0]))(features)
    assert np.all(np.abs(np.asarray(grads)).max(axis=(1, 2, 3)) > 0)
    cams, margins = saliency.make_gradcam_fn(model, STATS)(
        weights, batch(2, 4)["image"], np.ones(4, np.float32)
    )
    logits = net(x)
    np.testing.assert_allclose(margins, logits[:, 1] - logits[:, 0], rtol=1e-5, atol=1e-6)
    cams = np.asarray(cams)
    assert cams.shape == (4, 32, 32) and cams.min() >= 0
    assert np.all((cams.max(axis=(1, 2)) == 0) | np.isclose(cams.max(axis=(1, 2)), 1.0))


def test_vit_gradcam_map_cells_are_the_image_patches_in_place():
    """With one block, the map's cell (i, j) is patch (i, j) alone (a per-token LayerNorm of its
    embedding): a change to the image's patch at row 0, column 1 moves that cell only."""
    model, weights = _model_and_weights("vit", **{"model.arch.depth": 1})
    net = model.module(weights)
    x = np.asarray(preprocess.normalize(batch(3, 2)["image"], 0.25, 0.3))
    moved = x.copy()
    moved[:, 0:8, 8:16] += 1.0  # patch size 8
    target = registry.gradcam_target(model.spec)
    before, _ = target(net, jnp.asarray(x))
    after, _ = target(net, jnp.asarray(moved))
    changed = np.abs(np.asarray(after) - np.asarray(before)).max(axis=(0, 3)) > 1e-6
    expected = np.zeros((4, 4), bool)
    expected[0, 1] = True
    np.testing.assert_array_equal(changed, expected)


@pytest.mark.parametrize("mode", ["running", "batch"])
def test_frozen_batchnorm_keeps_and_uses_running_statistics_or_follows_the_batch(mode):
    """optim.frozen_batchnorm: 'running' (timm's freeze, Keras) normalises the frozen layers with
    their running statistics and keeps them, in the train step and SWA's statistics pass;
    'batch' (PyTorch's requires_grad=False alone) treats them as any other layer."""
    overrides = {"optim.frozen_batchnorm": mode, "model.drop_path_rate": 0.0}
    run, parts = setup("resnet", **{"optim.trainable": "last_stage", **overrides})
    model = parts.model
    params, stats = registry.init_variables(run.model, 0)
    stats = jax.tree.map(lambda v: v + 0.5, stats)  # running statistics unlike any batch's
    x = jnp.asarray(preprocess.normalize(batch(4, 8)["image"], *STATS.values()))
    _, after_step = model.train_apply(params, stats, x, None)
    statistics_pass = steps.make_statistics_pass(model, STATS, one_device_mesh())
    after_pass = statistics_pass(model.weights(params, stats), stats, jnp.asarray(0),
                                 batch(4, 8)["image"])  # fmt: skip
    all_norms = {path for path, _ in batchnorm.named_batch_norms(model.module(
        model.weights(params, stats)))}  # fmt: skip
    if mode == "batch":
        assert model.frozen_norms == ()
    else:
        assert 0 < len(model.frozen_norms) < len(all_norms)
        assert all(p.startswith(("stem/", "stages/0/")) for p in model.frozen_norms)
    for after in (after_step, after_pass):
        moved = _moved_norms(stats, after)
        assert set(moved) == all_norms
        assert {p for p, m in moved.items() if not m} == set(model.frozen_norms)
    # With every layer frozen but the classifier, the training forward is the evaluation one.
    _, head_only = setup("resnet", **{"optim.trainable": "head", **overrides})
    trained, _ = head_only.model.train_apply(params, stats, x, None)
    evaluated = head_only.model.apply(model.weights(params, stats), x)
    if mode == "running":
        np.testing.assert_array_equal(np.asarray(trained), np.asarray(evaluated))
    else:
        assert np.abs(np.asarray(trained) - np.asarray(evaluated)).max() > 1e-3
