"""Scan (bag-of-slices) models: any family's model encodes a bag's slices with shared weights
and an aggregator pools them (models/scan.py). Tiny encoders (each family's `test_config`) at
32 px, bags of K = 3..4 slices, B = 2."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alz_jax.core import optim
from alz_jax.host.errors import UserError
from alz_jax.models import batchnorm, registry, scan, weights_import
from alz_jax.models.import_helpers import ConversionError
from tests import test_efficientnet


def encoder_spec(family: str, **fields) -> registry.ModelSpec:
    """The family's small test variant (its `test_config`) as a slice model's spec."""
    config = dict(registry.FAMILIES[family].test_config)
    name, arch = config.pop("name"), {**config.pop("arch", {}), **config}
    if family == "convnext":
        name = "convnext_atto"
    return registry.spec_from_name(name, arch, **fields)


def images(shape: tuple, seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


MASK = jnp.array([[True, True, True, False], [True, False, True, True]])


@pytest.mark.parametrize("aggregator", ["mean", "attention"])
def test_weights_sum_to_one_are_zero_where_masked_and_bags_ignore_slice_order(aggregator):
    net = registry.build(scan.scan_spec(encoder_spec("convnext"), aggregator), 0)
    x = images((2, 4, 32, 32, 1))
    out = net.outputs(x, slice_mask=MASK)
    weights = np.asarray(out["weights"])
    assert weights.dtype == np.float32 and weights.shape == (2, 4)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=0, atol=1e-6)
    assert np.all(weights[~np.asarray(MASK)] == 0.0) and np.all(weights[np.asarray(MASK)] > 0)
    order = jnp.array([2, 0, 3, 1])
    permuted = net.outputs(x[:, order], slice_mask=MASK[:, order])
    np.testing.assert_allclose(permuted["logits"], out["logits"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(permuted["weights"], weights[:, order], rtol=0, atol=1e-6)
    np.testing.assert_allclose(net(x, slice_mask=MASK), out["logits"], rtol=0, atol=1e-6)


def test_transformer_weights_are_masked_and_its_logits_follow_the_positions():
    net = registry.build(scan.scan_spec(encoder_spec("convnext"), "transformer"), 0)
    block = net.aggregator.blocks[0]
    # Its output projections start at zero (a fresh block passes its input through): move them.
    for layer, seed in ((block.proj, 1), (block.fc2, 2)):
        layer.kernel.value = 0.1 * images(layer.kernel.value.shape, seed)
    x = images((2, 4, 32, 32, 1))
    positions = jnp.array([[0, 1, 2, 3], [5, 6, 7, 8]], jnp.int32)
    out = net.outputs(x, slice_mask=MASK, positions=positions)
    weights = np.asarray(out["weights"])
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=0, atol=1e-6)
    assert np.all(weights[~np.asarray(MASK)] == 0.0)
    # Slices moved with their positions: the same bag.
    order = jnp.array([3, 1, 0, 2])
    moved = net(x[:, order], slice_mask=MASK[:, order], positions=positions[:, order])
    np.testing.assert_allclose(moved, out["logits"], rtol=0, atol=1e-5)
    # The same slices at other positions: another bag.
    other = net(x, slice_mask=MASK, positions=positions[:, ::-1])
    assert np.abs(np.asarray(other) - np.asarray(out["logits"])).max() > 1e-4
    # A masked slice's pixels reach nothing, not even through the other slices' attention.
    changed = x.at[0, 3].set(100.0).at[1, 1].set(-50.0)
    np.testing.assert_allclose(net(changed, slice_mask=MASK, positions=positions),
                               out["logits"], rtol=0, atol=1e-6)  # fmt: skip


@pytest.mark.parametrize("family", ["convnext", "resnet", "vit"])
@pytest.mark.parametrize("aggregator", ["mean", "attention"])
def test_a_bag_of_one_slice_is_the_slice_model(family, aggregator):
    encoder = encoder_spec(family, **({"image_size": 32} if family == "vit" else {}))
    net = registry.build(scan.scan_spec(encoder, aggregator), 0)
    x = images((2, 32, 32, 1), 3)
    slice_logits = net.encoder(x)  # classify(embed(x))
    out = net.outputs(x[:, None])
    np.testing.assert_array_equal(np.asarray(out["weights"]), np.ones((2, 1), np.float32))
    np.testing.assert_allclose(out["logits"], slice_logits, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out["slice_logits"][:, 0], slice_logits, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(net.encoder.classify(net.encoder.embed(x)), slice_logits,
                               rtol=0, atol=0)  # fmt: skip


def test_mean_logits_are_the_mean_of_slice_logits_and_masked_slices_do_not_matter():
    net = registry.build(scan.scan_spec(encoder_spec("resnet"), "mean"), 0)
    x = images((2, 4, 32, 32, 1), 4)
    out = net.outputs(x, slice_mask=MASK)
    valid = np.asarray(MASK, np.float32)
    np.testing.assert_allclose(np.asarray(out["weights"]), valid / valid.sum(1, keepdims=True),
                               rtol=0, atol=1e-7)  # fmt: skip
    # Each slice's logits alone are the slice model's; the bag's, their mean over valid slices.
    alone = np.stack([np.asarray(net.encoder(x[:, k])) for k in range(4)], axis=1)
    np.testing.assert_allclose(out["slice_logits"], alone, rtol=0, atol=1e-5)
    expected = (alone * valid[..., None]).sum(1) / valid.sum(1)[:, None]
    np.testing.assert_allclose(out["logits"], expected, rtol=0, atol=1e-5)
    # weight x slice logits: each slice's contribution, summing to the bag's logits.
    contributions = np.asarray(out["weights"])[..., None] * np.asarray(out["slice_logits"])
    np.testing.assert_allclose(contributions.sum(1), out["logits"], rtol=0, atol=1e-5)
    changed = x.at[0, 3].set(1e3).at[1, 1].set(jnp.nan)
    np.testing.assert_array_equal(np.asarray(net(changed, slice_mask=MASK)),
                                  np.asarray(out["logits"]))  # fmt: skip


def _attention_params(width: int, dim: int = 128) -> int:
    return 2 * (width * dim + dim) + dim + 1  # v, u, w


@pytest.mark.parametrize(("family", "width", "batch_stats"),
                         [("convnext", 64, False), ("resnet", 32, True)])  # fmt: skip
def test_a_scan_spec_goes_through_the_registry_like_any_model(family, width, batch_stats):
    encoder = encoder_spec(family)
    spec = scan.scan_spec(encoder, "attention")
    params, stats = registry.init_variables(spec, 0)
    assert set(params) == {"encoder", "aggregator"}
    assert set(params["aggregator"]) == {"v", "u", "w"}
    assert registry.has_batch_stats(spec) is batch_stats
    assert set(stats) == ({"encoder"} if batch_stats else set())
    assert registry.count_params(spec) == (
        registry.count_params(encoder) + _attention_params(width)
    )
    assert registry.forward_flops_per_image(spec, 32) == registry.forward_flops_per_image(
        encoder, 32
    )
    assert registry.title(spec) == f"{registry.title(encoder)} + attention pooling"
    names = [optim.path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    head = {n for n in names if re.fullmatch(registry.trainable_pattern(spec, "head"), n)}
    # The aggregator (v, u, w: a kernel and a bias each) and the encoder's own head preset.
    encoder_head = registry.trainable_pattern(encoder, "head")
    assert head == {n for n in names if n.startswith("aggregator/")
                    or re.fullmatch(f"encoder/{encoder_head}", n)}  # fmt: skip
    assert len(head) == 6 + (4 if family == "convnext" else 2)  # ConvNeXt's head has a norm
    last = {n for n in names if re.fullmatch(registry.trainable_pattern(spec, "last_stage"), n)}
    assert head < last and all(n.startswith(("aggregator/", "encoder/")) for n in last)
    ids, layers = registry.layer_ids(spec, params)
    encoder_ids, encoder_layers = registry.layer_ids(encoder, params["encoder"])
    assert layers == encoder_layers and ids["encoder"] == encoder_ids
    assert set(jax.tree.leaves(ids["aggregator"])) == {layers - 1}


def test_the_scan_family_has_no_model_name_and_is_not_the_default():
    fam = registry.FAMILIES["scan"]
    assert fam.names == {} and not fam.default and registry.default_family().name != "scan"
    assert all(family != "scan" for family, _ in registry.NAMES.values())
    with pytest.raises(UserError, match=r"config\.model\.name = 'scan': expected one of"):
        registry.spec_from_name("scan")
    spec = scan.scan_spec(encoder_spec("convnext"), "mean")
    assert registry.family(spec) is fam and registry.record_family(spec) == "scan"


@pytest.mark.parametrize("family", ["convnext", "resnet"])
def test_remat_gives_the_same_logits_and_gradients(family):
    encoder = encoder_spec(family, drop_path_rate=0.2)
    x = images((2, 3, 32, 32, 1), 5)
    keys = jax.random.split(jax.random.key(7), 2)
    labels = jnp.array([0, 1])

    def loss_and_grads(remat: bool):
        net = registry.build(scan.scan_spec(encoder, "attention", remat=remat), 0)
        graphdef, params, rest = nnx.split(net, nnx.Param, ...)
        params, rest = nnx.to_pure_dict(params), nnx.to_pure_dict(rest)  # as the train step

        def loss(p):
            module = nnx.merge(graphdef, p, rest)
            # ResNet in training mode: BatchNorm on the batch's statistics, as the train step.
            logits, _ = batchnorm.observed(module, x, sample_keys=keys)
            return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(2), labels]), logits

        step = jax.value_and_grad(loss, has_aux=True)
        assert ("remat" in str(jax.make_jaxpr(step)(params))) is remat  # checkpointed or not
        (value, logits), grads = jax.jit(step)(params)
        return value, logits, grads

    plain, remat = loss_and_grads(False), loss_and_grads(True)
    np.testing.assert_allclose(remat[1], plain[1], rtol=0, atol=1e-5)
    leaves = jax.tree.leaves(plain[2])
    assert len(leaves) == len(jax.tree.leaves(remat[2])) and max(
        float(np.abs(g).max()) for g in leaves) > 0  # fmt: skip
    for a, b in zip(jax.tree.leaves(remat[2]), leaves, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_each_slice_draws_its_own_stochastic_depth_from_its_bags_key():
    spec = scan.scan_spec(encoder_spec("convnext", drop_path_rate=0.5, head_dropout=0.5), "mean")
    net = registry.build(spec, 0)
    x = jnp.broadcast_to(images((1, 1, 32, 32, 1), 6), (2, 3, 32, 32, 1))  # identical slices
    keys = jax.random.split(jax.random.key(1), 2)
    h = np.asarray(net.slice_embeddings(x, keys))
    assert np.abs(h[0, 0] - h[0, 1]).max() > 1e-4 and np.abs(h[0] - h[1]).max() > 1e-4
    np.testing.assert_array_equal(np.asarray(net.slice_embeddings(x, keys)), h)
    flat_keys = scan.slice_keys(keys, 3)
    np.testing.assert_array_equal(
        jax.random.key_data(flat_keys[4]),
        jax.random.key_data(jax.random.fold_in(keys[1], 1)),
    )
    plain = np.asarray(net.slice_embeddings(x))
    np.testing.assert_array_equal(plain[0, 0], plain[1, 2])  # no keys: no dropping


def test_load_slice_weights_puts_a_slice_model_into_the_encoder_or_names_the_mismatch():
    encoder = encoder_spec("resnet")
    spec = scan.scan_spec(encoder, "attention")
    scan_params, _ = registry.init_variables(spec, 0)
    slice_params, _ = registry.init_variables(encoder, 1)
    loaded = scan.load_slice_weights(scan_params, slice_params)
    for a, b in zip(jax.tree.leaves(loaded["encoder"]), jax.tree.leaves(slice_params),
                    strict=True):  # fmt: skip
        np.testing.assert_array_equal(a, b)
    assert loaded["aggregator"] is scan_params["aggregator"]
    net = registry.build(spec, 0)
    nnx.update(net, nnx.State(loaded))
    x = images((2, 32, 32, 1), 8)
    slice_net = registry.build(encoder, 1)
    np.testing.assert_allclose(net(x[:, None]), slice_net(x), rtol=1e-6, atol=1e-7)
    wider = encoder_spec("resnet", num_classes=3)
    other, _ = registry.init_variables(wider, 0)
    with pytest.raises(UserError, match=(
        r"at \['head'\]\['fc'\]\['bias'\] the slice model has \(3,\), the encoder expects "
        r"\(2,\)")):  # fmt: skip
        scan.load_slice_weights(scan_params, other)
    del other["head"]
    with pytest.raises(UserError, match=r"\['head'\]\['fc'\]\['bias'\] the slice model has "
                                        r"nothing, the encoder expects \(2,\)"):  # fmt: skip
        scan.load_slice_weights(scan_params, other)


def test_scan_spec_checks_its_fields_and_mirrors_the_encoder():
    encoder = encoder_spec("convnext")
    spec = scan.scan_spec(encoder, "transformer", num_classes=3, attention_dim=64)
    assert spec.num_classes == spec.encoder.num_classes == 3 and spec.attention_dim == 64
    with pytest.raises(UserError, match=r"config\.model\.aggregator = 'max': expected "
                                        r"attention\|mean\|transformer\."):  # fmt: skip
        scan.scan_spec(encoder, "max")
    with pytest.raises(UserError, match=r"config\.model\.transformer_heads = 3: expected >= 1 "
                                        r"and dividing attention_dim \(128\)"):  # fmt: skip
        scan.scan_spec(encoder, "transformer", transformer_heads=3)
    with pytest.raises(UserError, match=r"config\.model\.num_classes = 4: expected the "
                                        r"encoder's num_classes \(2\)"):  # fmt: skip
        scan.ScanSpec(encoder=encoder, aggregator="mean", num_classes=4)
    with pytest.raises(UserError, match=r"encoder must be a slice model's spec"):
        scan.scan_spec(scan.scan_spec(encoder, "mean"), "mean")


class MaxPooling(nnx.Module):
    """A toy aggregator: the element-wise max over the valid slices, weights 1/n."""

    title = "max pooling"

    def __init__(self, width, spec, rngs):
        del width, spec, rngs

    def __call__(self, h, mask, positions):
        del positions
        weights = mask / jnp.sum(mask, axis=-1, keepdims=True)
        return jnp.max(jnp.where(mask[..., None], h, -jnp.inf), axis=1), weights


def test_a_new_aggregator_is_one_registration():
    scan.register_aggregator("max", MaxPooling)
    try:
        with pytest.raises(ValueError, match="already registered"):
            scan.register_aggregator("max", MaxPooling)
        encoder = encoder_spec("simple_cnn")
        spec = scan.scan_spec(encoder, "max")
        assert registry.title(spec).endswith("+ max pooling")
        net = registry.build(spec, 0)
        x = images((2, 3, 32, 32, 1), 9)
        h = net.slice_embeddings(x)
        np.testing.assert_allclose(net(x), net.encoder.classify(h.max(axis=1)), atol=1e-6)
    finally:
        del scan.AGGREGATORS["max"]


def test_pytorch_weights_of_the_encoders_family_load_into_the_encoder():
    encoder = encoder_spec("efficientnet")
    spec = scan.scan_spec(encoder, "attention")
    slice_params, slice_stats = registry.init_variables(encoder, 3)
    state_dict = test_efficientnet.timm_state_dict(slice_params, slice_stats)
    params, stats, notes = weights_import.variables_from_state_dict(state_dict, spec, "timm", 5)
    for got, want in ((params["encoder"], slice_params), (stats["encoder"], slice_stats)):
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(a, b)
    fresh, _ = registry.init_variables(spec, 5)
    for a, b in zip(jax.tree.leaves(params["aggregator"]), jax.tree.leaves(fresh["aggregator"]),
                    strict=True):  # fmt: skip
        np.testing.assert_array_equal(a, b)
    assert set(params) == {"encoder", "aggregator"} and set(stats) == {"encoder"}
    assert notes[-1] == "the attention aggregator is freshly initialised"
    with pytest.raises(ConversionError, match=r"\(the scan model's encoder\) are read from the "
                                              r"timm layouts, not 'fb'"):  # fmt: skip
        weights_import.variables_from_state_dict(state_dict, spec, "fb", 5)
