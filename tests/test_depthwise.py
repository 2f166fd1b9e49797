"""Every depthwise-convolution implementation gives XLA's grouped convolution's output, input
gradient, kernel gradient, model loss and train-step update within 1e-5, in one parameter layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from alz_jax.core import sharding, steps
from alz_jax.models import convnext, depthwise
from tests import test_steps

SHIFT_LIKE = [impl for impl in depthwise.IMPLS if impl not in ("auto", "xla")]


def _max_rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-30))


def _conv_and_grads(impl, x, kernel, weights):
    def loss(x, kernel):
        return jnp.sum(jnp.sin(depthwise.depthwise_conv(x, kernel, impl)) * weights)

    out = depthwise.depthwise_conv(x, kernel, impl)
    return (out, *jax.grad(loss, argnums=(0, 1))(x, kernel))


@pytest.mark.parametrize("impl", SHIFT_LIKE)
@pytest.mark.parametrize("shape,k", [((3, 9, 7, 5), 7), ((2, 4, 6, 3), 3), ((2, 2, 2, 4), 7)])
def test_output_and_gradients_match_grouped_conv(impl, shape, k):
    """Non-square images, images smaller than the kernel, and a 3x3 kernel."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((k, k, 1, shape[-1])), jnp.float32)
    weights = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    ref = jax.jit(_conv_and_grads, static_argnums=0)("xla", x, kernel, weights)
    got = jax.jit(_conv_and_grads, static_argnums=0)(impl, x, kernel, weights)
    for name, r, g in zip(("output", "d input", "d kernel"), ref, got, strict=True):
        assert g.shape == r.shape and g.dtype == r.dtype, name
        assert _max_rel(r, g) < 1e-5, (name, _max_rel(r, g))  # random kernels: no symmetry


@pytest.mark.parametrize("impl", SHIFT_LIKE)
def test_kernel_gradient_inside_shard_map_is_summed_over_devices(impl):
    """A replicated kernel and a batch split over 8 devices: per-device gradients, psum'd, equal
    the whole batch's."""
    mesh = sharding.make_mesh()
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((16, 6, 6, 4)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((7, 7, 1, 4)), jnp.float32)

    def grads(impl):
        def per_device(x, kernel):
            loss = lambda k: jnp.sum(jnp.sin(depthwise.depthwise_conv(x, k, impl)))  # noqa: E731
            return jax.grad(loss)(kernel)

        return jax.jit(
            jax.shard_map(per_device, mesh=mesh, in_specs=(P("data"), P()), out_specs=P())
        )(x, kernel)

    assert _max_rel(grads("xla"), grads(impl)) < 1e-5


def _tiny_model(impl):
    spec = convnext.ConvNeXtSpec(
        depths=(1, 2), dims=(8, 16), in_chans=1, drop_path_rate=0.2, depthwise=impl
    )
    return convnext.ConvNeXt(spec, rngs=nnx.Rngs(3))


@pytest.mark.parametrize("impl", SHIFT_LIKE)
def test_model_loss_and_gradients_match_and_parameters_keep_one_layout(impl):
    ref_model, model = _tiny_model("xla"), _tiny_model(impl)
    ref_params, params = nnx.state(ref_model, nnx.Param), nnx.state(model, nnx.Param)
    # Same tree, same shapes, same initial values: a checkpoint loads under either.
    assert jax.tree.structure(nnx.to_pure_dict(ref_params)) == jax.tree.structure(
        nnx.to_pure_dict(params)
    )
    for a, b in zip(jax.tree.leaves(ref_params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(a, b)
    rng = np.random.default_rng(2)
    images = jnp.asarray(rng.standard_normal((4, 64, 48, 1)), jnp.float32)
    labels = jnp.asarray([0, 1, 1, 0])
    keys = jax.random.split(jax.random.key(0), 4)

    def loss_and_grads(model):
        graphdef, state = nnx.split(model, nnx.Param)

        def loss(state):
            logits = nnx.merge(graphdef, state)(images, sample_keys=keys)
            return steps.cross_entropy(logits, labels, 0.1).mean()

        return jax.jit(jax.value_and_grad(loss))(state)

    ref_loss, ref_grads = loss_and_grads(ref_model)
    got_loss, got_grads = loss_and_grads(model)
    assert abs(float(ref_loss) - float(got_loss)) < 1e-5
    leaves = jax.tree_util.tree_leaves_with_path(ref_grads)
    for (path, r), g in zip(leaves, jax.tree.leaves(got_grads), strict=True):
        scale = max(float(np.max(np.abs(r))), 1e-3)  # the layer-scaled grads are ~1e-6
        assert float(np.max(np.abs(np.asarray(r) - np.asarray(g)))) / scale < 1e-5, path


@pytest.mark.slow
@pytest.mark.parametrize("impl", SHIFT_LIKE)
def test_shard_map_train_step_matches_the_grouped_conv_jit_step(impl):
    """A whole train step (augmentation noise, Mixup targets, drop path, AdamW, EMA, SWA) built
    by the step factory main uses: 'shift' under shard_map over 8 devices gives the update of
    XLA's grouped conv under jit."""
    _, make_ref, ref_step = test_steps._setup(**{"model.depthwise": "xla"})
    _, make_state, step = test_steps._setup(
        step_impl="shard_map", **{"model.depthwise": impl, "ema.dtype": "float32"}
    )
    ref_state, ref_losses = test_steps._run(ref_step, make_ref, n=2)
    state, losses = test_steps._run(step, make_state, n=2)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    test_steps._assert_close(state["params"], ref_state["params"], atol=1e-5)


def test_auto_picks_shift_on_cpu_and_xla_on_accelerators():
    assert depthwise.resolve("auto", "cpu") == "shift"
    assert depthwise.resolve("auto", "gpu") == "xla"
    assert depthwise.resolve("auto", "tpu") == "xla"
    assert depthwise.resolve("xla", "cpu") == "xla"
    with pytest.raises(ValueError, match=r"'fft'.*expected one of"):
        depthwise.resolve("fft")
