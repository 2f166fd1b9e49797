"""ConvNeXt architecture, parameter count and initialisation against the reference facts."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from alz_jax.configs import convnext_t
from alz_jax.host.errors import UserError
from alz_jax.models import convnext
from alz_jax.run import specs


def _abstract(spec):
    return nnx.eval_shape(lambda: convnext.ConvNeXt(spec, rngs=nnx.Rngs(0)))


@pytest.mark.parametrize(("classes", "expected"), [(1000, 28_589_128), (2, 27_821_666)])
def test_tiny_parameter_count(classes, expected):
    spec = convnext.ConvNeXtSpec(*convnext.SIZES["tiny"], in_chans=3, num_classes=classes)
    assert convnext.count_params(_abstract(spec)) == expected


def test_drop_path_rates_rise_linearly_over_all_blocks():
    spec = convnext.ConvNeXtSpec((2, 2, 6, 2), (8, 8, 8, 8), drop_path_rate=0.1)
    model = _abstract(spec)
    rates = [block.drop_path_rate for stage in model.stages for block in stage]
    np.testing.assert_allclose(rates, np.linspace(0, 0.1, 12), atol=1e-12)


def test_init_matches_reference():
    spec = convnext.ConvNeXtSpec((1, 1, 1, 1), (32, 64, 128, 256), layer_scale_init=1e-6)
    model = convnext.ConvNeXt(spec, rngs=nnx.Rngs(0))
    big = np.asarray(model.stages[3][0].pwconv1.kernel.value)  # 256 x 1024 weights
    # Untruncated N(0, 0.02): flax's truncated_normal(0.02) would give std ~0.0176.
    assert abs(big.std() - 0.02) < 0.0003
    assert np.abs(big).max() > 0.04  # beyond 2 sigma: not truncated there
    assert np.all(np.asarray(model.stages[0][0].pwconv1.bias.value) == 0)
    np.testing.assert_array_equal(np.asarray(model.stages[2][0].gamma.value), np.float32(1e-6))
    np.testing.assert_array_equal(np.asarray(model.head.norm.scale.value), 1.0)


def test_layer_norm_is_two_pass_over_channels_eps_1e6():
    spec = convnext.ConvNeXtSpec((1, 1, 1, 1), (8, 16, 32, 64))
    norm = convnext.ConvNeXt(spec, rngs=nnx.Rngs(0)).stem.norm
    # Large mean, small variance: a one-pass E[x^2]-E[x]^2 loses precision here in float32.
    x = 1000.0 + jax.random.normal(jax.random.key(1), (2, 3, 3, 8)) * 1e-2
    xn = np.asarray(x, np.float64)
    mean = xn.mean(-1, keepdims=True)
    var = ((xn - mean) ** 2).mean(-1, keepdims=True)
    expected = (xn - mean) / np.sqrt(var + 1e-6)
    np.testing.assert_allclose(np.asarray(norm(x)), expected, atol=2e-2)
    assert norm.epsilon == 1e-6 and norm.use_fast_variance is False


def _block_reference(block, x):
    """NumPy float64 reference of one ConvNeXt block (eval mode)."""
    x = np.asarray(x, np.float64)
    w = np.asarray(block.dwconv.kernel.value, np.float64)[:, :, 0, :]  # (7, 7, C)
    b = np.asarray(block.dwconv.bias.value, np.float64)
    _, h, wd, _ = x.shape
    xp = np.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)))
    y = sum(xp[:, i : i + h, j : j + wd, :] * w[i, j] for i in range(7) for j in range(7)) + b
    mean = y.mean(-1, keepdims=True)
    y = (y - mean) / np.sqrt(((y - mean) ** 2).mean(-1, keepdims=True) + 1e-6)
    y = y * np.asarray(block.norm.scale.value) + np.asarray(block.norm.bias.value)
    y = y @ np.asarray(block.pwconv1.kernel.value, np.float64) + np.asarray(
        block.pwconv1.bias.value
    )
    from scipy.special import erf

    y = 0.5 * y * (1 + erf(y / np.sqrt(2)))  # exact GELU
    y = y @ np.asarray(block.pwconv2.kernel.value, np.float64) + np.asarray(
        block.pwconv2.bias.value
    )
    return x + y * np.asarray(block.gamma.value, np.float64)


def test_block_matches_numpy_reference():
    spec = convnext.ConvNeXtSpec((1, 1, 1, 1), (8, 16, 32, 64), layer_scale_init=0.5)
    block = convnext.ConvNeXt(spec, rngs=nnx.Rngs(0)).stages[0][0]
    # Non-trivial parameters so that every term matters.
    block.dwconv.bias.value = jax.random.normal(jax.random.key(2), (8,)) * 0.1
    block.norm.scale.value = 1 + jax.random.normal(jax.random.key(3), (8,)) * 0.1
    block.pwconv1.kernel.value = block.pwconv1.kernel.value * 50
    x = jax.random.normal(jax.random.key(4), (2, 9, 9, 8))
    np.testing.assert_allclose(np.asarray(block(x, None)), _block_reference(block, x), atol=2e-5)


def test_drop_path_is_per_sample_and_rescales():
    x = jnp.ones((4096, 2, 2, 3))
    out = np.asarray(convnext.drop_path(x, 0.25, jax.random.split(jax.random.key(0), 4096)))
    per_sample = out.reshape(4096, -1)
    # Each sample is either all zero or all 1/keep.
    assert np.all((per_sample == 0).all(1) | np.isclose(per_sample, 1 / 0.75).all(1))
    assert abs((per_sample[:, 0] == 0).mean() - 0.25) < 0.03
    assert np.array_equal(np.asarray(convnext.drop_path(x, 0.25, None)), np.asarray(x))


def test_forward_shapes_and_stochastic_depth_only_with_key():
    spec = convnext.ConvNeXtSpec(
        (1, 1, 1, 1), (8, 16, 32, 64), drop_path_rate=0.5, layer_scale_init=1.0
    )
    model = convnext.ConvNeXt(spec, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 1))
    a, b = model(x), model(x)
    assert a.shape == (4, 2) and a.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    keys = jax.random.split(jax.random.key(1), 4)
    c = model(x, sample_keys=keys)
    assert not np.allclose(np.asarray(a), np.asarray(c))
    # A sample's stochastic depth depends only on its own key, not on the rest of the batch.
    pair = model(x[2:], sample_keys=keys[2:])
    np.testing.assert_allclose(np.asarray(pair), np.asarray(c)[2:], rtol=1e-6, atol=1e-6)


def test_bfloat16_forward_stays_close_to_float32():
    """Mixed precision: bf16 activations/matmuls/convs, float32 params, LayerNorm and logits."""
    spec = convnext.ConvNeXtSpec((1, 1, 2, 1), (16, 32, 64, 128), layer_scale_init=1.0)
    model32 = convnext.ConvNeXt(spec, rngs=nnx.Rngs(0))
    model16 = convnext.ConvNeXt(dataclasses.replace(spec, dtype="bfloat16"), rngs=nnx.Rngs(0))
    for a, b in zip(
        jax.tree.leaves(nnx.state(model32)), jax.tree.leaves(nnx.state(model16)), strict=True
    ):
        assert b.dtype == jnp.float32  # parameters stay float32
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    x = jax.random.normal(jax.random.key(0), (8, 64, 64, 1))
    ref, low = np.asarray(model32(x)), np.asarray(model16(x))
    assert low.dtype == np.float32  # logits come out in float32
    # Stated tolerance: logits within 5% of the float32 logits' scale, the same argmax.
    scale = np.abs(ref).max()
    assert np.abs(low - ref).max() < 0.05 * scale, (np.abs(low - ref).max(), scale)
    assert np.abs(low - ref).max() > 0  # the bf16 path really ran in lower precision
    np.testing.assert_array_equal(low.argmax(-1), ref.argmax(-1))
    # LayerNorm statistics are float32 whatever the compute dtype.
    assert model16.stages[0][0].norm.dtype == jnp.float32


def test_unknown_size_is_a_clear_error():
    cfg = convnext_t.get_config().model
    cfg.size = "huge"
    with pytest.raises(UserError, match="atto"):
        specs.model_spec(cfg)


def test_model_arch_sets_other_convnext_fields_and_refuses_depths_and_unknown_names():
    cfg = convnext_t.get_config().model
    cfg.size = "atto"
    cfg.arch = ml_collections.ConfigDict({"layer_scale_init": 1.0})
    spec = specs.model_spec(cfg)
    assert spec.layer_scale_init == 1.0 and (spec.depths, spec.dims) == convnext.SIZES["atto"]
    gamma = convnext.ConvNeXt(spec, rngs=nnx.Rngs(0)).stages[0][0].gamma.value
    assert np.all(np.asarray(gamma) == 1.0)
    bad_arch = (
        ({"depths": (1, 1, 1, 1)}, "depths"),
        ({"num_classes": 3}, "num_classes"),
        ({"depthwise": "xla"}, "depthwise"),  # model.depthwise sets it
    )
    for bad, named in bad_arch:
        cfg.arch = ml_collections.ConfigDict(bad)
        with pytest.raises(UserError, match=f"model.arch has \\['{named}'\\]"):
            specs.model_spec(cfg)
