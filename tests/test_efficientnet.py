"""EfficientNet: timm's logits from the tiny fixture (both depthwise implementations), the
architecture read from shapes, the 1-channel stem, the head, refusals that name the keys,
BatchNorm in training mode, timm's initialisation, B0's size, FLOPs, drop path, bf16, layer
ids and the trainable presets."""

import dataclasses
import functools
import math
import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alz_jax.host.errors import UserError
from alz_jax.models import batchnorm, convert, import_helpers
from alz_jax.models import efficientnet as eff
from alz_jax.models import efficientnet_import as eff_import
from alz_jax.models.import_helpers import ConversionError

FIXTURES = Path(__file__).parent / "fixtures"
WEIGHTS = FIXTURES / "efficientnet_tiny_timm.safetensors"
# The fixture's network (tests/fixtures/make_efficientnet_fixture.py).
TINY_STAGES = (
    "ds_r1_k3_s1_e1_c8_se0.25",
    "ir_r1_k3_s2_e3_c16_se0.25",
    "ir_r1_k5_s2_e2_c16_se0.25",
    "ir_r2_k5_s1_e2_c24_se0.25",
)
B0_PARAMS = 5_288_548  # timm.create_model('efficientnet_b0') and torchvision's num_params


@pytest.fixture(scope="module")
def fixture():
    with np.load(FIXTURES / "efficientnet_tiny_fixture.npz", allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def state():
    return convert.load_state_dict(str(WEIGHTS))


def tiny_spec(**kw) -> eff.EfficientNetSpec:
    values = dict(stem_size=8, num_features=32, stages=TINY_STAGES, in_chans=3, num_classes=5)
    return eff.EfficientNetSpec(**(values | kw))


def model_with(params: dict, stats: dict, spec: eff.EfficientNetSpec) -> eff.EfficientNet:
    model = eff.EfficientNet(spec, rngs=nnx.Rngs(0))
    nnx.update(model, nnx.State(params))
    nnx.update(model, nnx.State(stats))
    return model


@functools.partial(jax.jit, static_argnums=0)
def _apply(graphdef, variables, x, sample_keys):
    model = nnx.merge(graphdef, variables)
    return model(x, sample_keys=sample_keys), model.feature_map(x, sample_keys=sample_keys)


def forward(model, x, sample_keys=None, feature_map=False) -> np.ndarray:
    """The model's logits (or feature map), jitted (one compilation for both, not one per op:
    the tests stay fast on a loaded 2-core machine)."""
    graphdef, variables = nnx.split(model)
    return np.asarray(_apply(graphdef, variables, jnp.asarray(x), sample_keys)[int(feature_map)])


def imported(state, spec) -> eff.EfficientNet:
    params, stats, _ = eff_import.variables_from_state_dict(state, spec)
    return model_with(params, stats, spec)


def nhwc(images) -> jax.Array:
    return jnp.asarray(images.transpose(0, 2, 3, 1))


def flat_paths(tree) -> dict[str, object]:
    """'a/b/c' path -> leaf."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(map(str, import_helpers.path_names(p))): v for p, v in leaves}


def timm_state_dict(params: dict, stats: dict) -> dict[str, np.ndarray]:
    """The timm state dict of project variables (the inverse of the import's renaming)."""
    out = {}
    for tree in (params, stats):
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            value = np.asarray(leaf)
            if value.ndim == 4:
                value = value.transpose(3, 2, 0, 1)
            elif value.ndim == 2:
                value = value.T
            out[eff_import.timm_key(import_helpers.path_names(path))] = value
    return out


def shapes_state_dict(spec: eff.EfficientNetSpec) -> dict[str, np.ndarray]:
    """A timm state dict of zeros with the shapes of `spec`'s model (no parameter memory)."""
    model = nnx.eval_shape(lambda: eff.EfficientNet(spec, rngs=nnx.Rngs(0)))
    zeros = jax.tree.map(lambda v: np.broadcast_to(np.float32(0), v.shape),
                         (nnx.to_pure_dict(nnx.state(model, nnx.Param)),
                          nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))))  # fmt: skip
    return timm_state_dict(*zeros)


def abstract_b0(**kw) -> eff.EfficientNet:
    spec = eff.spec_for("efficientnet_b0", **kw)
    return nnx.eval_shape(lambda: eff.EfficientNet(spec, rngs=nnx.Rngs(0)))


def test_fixture_is_small_and_made_by_its_script():
    sizes = [
        p.stat().st_size
        for p in FIXTURES.glob("efficientnet_*")
        if p.suffix in (".npz", ".safetensors")
    ]
    assert len(sizes) == 2 and sum(sizes) < 100_000
    assert (FIXTURES / "make_efficientnet_fixture.py").exists()


def test_imported_model_gives_timms_logits_with_either_depthwise(fixture, state):
    assert eff_import.detect_layout(state) == "timm"
    logits = {}
    for impl in ("xla", "shift"):
        params, stats, notes = eff_import.variables_from_state_dict(
            state, tiny_spec(depthwise=impl), layout="timm"
        )
        assert notes == []  # num_batches_tracked ignored, nothing adapted
        model = model_with(params, stats, tiny_spec(depthwise=impl))
        logits[impl] = forward(model, nhwc(fixture["images"]))
        assert logits[impl].dtype == np.float32
        np.testing.assert_allclose(logits[impl], fixture["logits"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(logits["xla"], logits["shift"], rtol=0, atol=1e-5)
    # The feature map is what the classifier pools: stem /2, two stride-2 stages: /8.
    features = forward(model, nhwc(fixture["images"]), feature_map=True)
    assert features.shape == (2, 4, 4, 32)
    pooled = model.classifier(jnp.mean(features, axis=(1, 2)))
    np.testing.assert_allclose(pooled, logits["shift"], rtol=0, atol=1e-6)


def test_spec_is_read_from_the_shapes(fixture, state):
    spec = eff_import.spec_from_state_dict(
        state, strides=tuple(fixture["strides"]), in_chans=3, num_classes=5
    )
    assert spec == tiny_spec()
    assert eff.title(spec) == "EfficientNet depths 1-1-1-2, widths 8-16-16-24, head 32"
    with pytest.raises(ConversionError, match=r"4 stages.*give strides"):
        eff_import.spec_from_state_dict(state)
    # Full-size B0 (shapes only): exactly the named variant, strides B0's by default.
    b0 = eff.spec_for("efficientnet_b0", depthwise="shift", in_chans=3, num_classes=1000)
    assert (
        eff_import.spec_from_state_dict(
            shapes_state_dict(b0), depthwise="shift", in_chans=3, num_classes=1000
        )
        == b0
    )
    # A scaled B0 (timm's channel and depth multipliers) comes back as its built widths.
    scaled = eff.spec_for("efficientnet_b0", width_mult=0.25, depth_mult=0.5)
    back = eff_import.spec_from_state_dict(shapes_state_dict(scaled))
    assert eff.block_defs(back) == eff.block_defs(scaled)
    assert (eff.stem_width(back), eff.head_width(back)) == (8, 320)


def test_one_channel_stem_is_the_summed_kernel(fixture, state):
    """Channel 0 of the images repeated over RGB through timm's model = that channel through
    the summed 1-channel stem."""
    params, stats, notes = eff_import.variables_from_state_dict(state, tiny_spec(in_chans=1))
    logits = forward(
        model_with(params, stats, tiny_spec(in_chans=1)), nhwc(fixture["images"][:, :1])
    )
    np.testing.assert_allclose(logits, fixture["gray_logits"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(
        params["conv_stem"]["kernel"][..., 0, :],
        state["conv_stem.weight"].sum(1).transpose(1, 2, 0),
        rtol=1e-6,
    )
    assert any("summed" in n for n in notes)


def test_head_is_reinitialised_for_another_class_count(state):
    target = tiny_spec(in_chans=1, num_classes=2)
    params, stats, notes = eff_import.variables_from_state_dict(state, target, seed=5)
    fresh = nnx.to_pure_dict(nnx.state(eff.EfficientNet(target, rngs=nnx.Rngs(5)), nnx.Param))
    np.testing.assert_array_equal(params["classifier"]["kernel"], fresh["classifier"]["kernel"])
    np.testing.assert_array_equal(params["classifier"]["bias"], np.zeros(2))
    # The head convolution and its BatchNorm still come from the file.
    np.testing.assert_array_equal(params["bn2"]["scale"], state["bn2.weight"])
    np.testing.assert_array_equal(stats["bn2"]["var"], state["bn2.running_var"])
    assert "head: re-initialised for 2 classes (the checkpoint's has 5)" in notes
    headless = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    params, _, notes = eff_import.variables_from_state_dict(headless, target, seed=5)
    np.testing.assert_array_equal(params["classifier"]["kernel"], fresh["classifier"]["kernel"])
    assert "head: initialised for 2 classes (the file has none)" in notes


def test_mismatches_are_refused_naming_the_keys(state):
    with pytest.raises(ConversionError, match=r"holds an EfficientNet with stem 8, depths "
                       r"1-1-1-2, widths 8-16-16-24, head 32; the model is EfficientNet-B0 with "
                       r"stem 32, depths 1-2-2-3-3-4-1"):  # fmt: skip
        eff_import.variables_from_state_dict(state, eff.spec_for("efficientnet_b0"))
    lacking = {k: v for k, v in state.items() if k != "blocks.3.1.se.conv_expand.bias"}
    with pytest.raises(ConversionError, match=r"lacks 1 tensor.*blocks\.3\.1\.se\.conv_expand"):
        eff_import.variables_from_state_dict(lacking, tiny_spec())
    extra = dict(state, **{"blocks.3.1.conv_s2d.weight": np.zeros(3, np.float32)})
    with pytest.raises(ConversionError, match=r"would not use.*blocks\.3\.1\.conv_s2d\.weight"):
        eff_import.variables_from_state_dict(extra, tiny_spec())
    wrong = dict(state, **{"blocks.1.0.bn3.weight": np.ones(7, np.float32)})
    with pytest.raises(ConversionError, match=r"blocks\.1\.0\.bn3\.weight has shape \(7,\).*"
                       r"expects \(16,\)"):  # fmt: skip
        eff_import.variables_from_state_dict(wrong, tiny_spec())
    damaged = dict(state, **{"bn1.running_var": np.full(8, np.nan, np.float32)})
    with pytest.raises(ConversionError, match=r"NaN or Inf.*bn1\.running_var"):
        eff_import.variables_from_state_dict(damaged, tiny_spec())
    with pytest.raises(ConversionError, match="Not an EfficientNet state dict"):
        eff_import.detect_layout({"stem.0.weight": np.zeros(1)})
    with pytest.raises(ConversionError, match="layout 'torchvision'"):
        eff_import.variables_from_state_dict(state, tiny_spec(), layout="torchvision")
    two = dict(state, **{"conv_stem.weight": state["conv_stem.weight"][:, :2]})
    with pytest.raises(ConversionError, match="a 2-channel stem cannot be adapted to in_chans=1"):
        eff_import.variables_from_state_dict(two, tiny_spec(in_chans=1))


@functools.partial(jax.jit, static_argnums=0)
def _observed(graphdef, variables, x):
    return batchnorm.observed(nnx.merge(graphdef, variables), x)


def test_training_mode_batchnorm_matches_timm(fixture, state):
    """One training-mode pass: timm's logits, and its running statistics after the momentum-0.1
    update (the project records the batch's mean and unbiased variance; the caller updates)."""
    params, stats, _ = eff_import.variables_from_state_dict(state, tiny_spec())
    model = model_with(params, stats, tiny_spec())
    graphdef, variables = nnx.split(model)
    logits, observed = _observed(graphdef, variables, nhwc(fixture["images"]))
    np.testing.assert_allclose(logits, fixture["train_logits"], rtol=0, atol=1e-5)
    running = flat_paths(batchnorm.update_running(stats, observed, 0.1))
    by_key = {eff_import.timm_key(tuple(p.split("/"))): v for p, v in running.items()}
    ours = np.concatenate([np.ravel(by_key[k]) for k in sorted(by_key)])
    np.testing.assert_allclose(ours, fixture["running"], rtol=0, atol=1e-5)


def test_initialisation_is_timms_goog_init():
    """Convolutions ~ N(0, 2 / fan_out) (depthwise: fan_out = kh * kw), conv biases 0,
    BatchNorm 1/0 with running stats 0/1, classifier ~ U(+-1/sqrt(classes)), bias 0."""
    # Repeated blocks of one shape: few distinct random ops to compile, many values.
    spec = eff.EfficientNetSpec(
        stages=("ir_r3_k5_s1_e6_c64_se0.25",), stem_size=64, num_features=64, num_classes=10
    )
    model = eff.EfficientNet(spec, rngs=nnx.Rngs(3))
    params = flat_paths(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    normalised = {"dw": [], "pw": [], "se": []}
    for path, leaf in params.items():
        value = np.asarray(leaf)
        if path.endswith("kernel") and value.ndim == 4:
            kh, kw, _, out = value.shape
            groups = out if "conv_dw" in path else 1
            z = value / math.sqrt(2.0 / (kh * kw * out // groups))
            kind = "dw" if "conv_dw" in path else "se" if "/se/" in path else "pw"
            normalised[kind].append(z.ravel())
        elif path.endswith("bias") and not path.startswith("classifier"):
            np.testing.assert_array_equal(value, 0)  # conv (SE) and BatchNorm biases
        elif path.endswith("scale"):
            np.testing.assert_array_equal(value, 1)
    for kind, values in normalised.items():
        z = np.concatenate(values)
        assert z.size > 20_000, kind
        assert abs(z.std() - 1) < 0.03 and abs(z.mean()) < 0.03, (kind, z.std(), z.mean())
    stem = np.asarray(params["conv_stem/kernel"])  # (3, 3, 1, 64)
    assert abs(stem.std() / math.sqrt(2 / (9 * 64)) - 1) < 0.15
    fc = np.asarray(params["classifier/kernel"])
    bound = 1 / math.sqrt(10)
    assert np.abs(fc).max() <= bound and abs(fc.std() / (bound / math.sqrt(3)) - 1) < 0.05
    np.testing.assert_array_equal(params["classifier/bias"], 0)
    stats = flat_paths(nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))
    assert all(np.all(v == (1 if p.endswith("var") else 0)) for p, v in stats.items())


def test_full_size_b0_has_timms_parameter_count_and_arithmetic():
    model = abstract_b0(in_chans=3, num_classes=1000)
    count = sum(int(p.size) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert count == B0_PARAMS
    gray_two_class = abstract_b0()  # the project's default: 1 channel, 2 classes
    count = sum(int(p.size) for p in jax.tree.leaves(nnx.state(gray_two_class, nnx.Param)))
    assert count == B0_PARAMS - 2 * 9 * 32 - 998 * 1281
    assert eff.title(model.spec) == "EfficientNet-B0"
    defs = eff.block_defs(eff.spec_for("efficientnet_b0", drop_path_rate=0.2))
    assert [len(s) for s in defs] == [1, 2, 2, 3, 3, 4, 1]
    assert [s[-1].out_chs for s in defs] == [16, 24, 40, 80, 112, 192, 320]
    first = [(b.kind, b.in_chs, b.mid_chs, b.se_chs, b.has_skip) for b in (defs[0][0], defs[1][0],
             defs[1][1], defs[6][0])]  # fmt: skip
    # SE widths are 1/4 of the block's *input* channels (timm's se_from_exp=False).
    assert first == [("ds", 32, 32, 8, False), ("ir", 16, 96, 4, False),
                     ("ir", 24, 144, 6, True), ("ir", 192, 1152, 48, False)]  # fmt: skip
    rates = [b.drop_path_rate for s in defs for b in s]
    np.testing.assert_allclose(rates, [0.2 * k / 16 for k in range(16)])
    # timm's efficientnet_b0 with channel_multiplier 0.25, depth_multiplier 0.25.
    small = eff.spec_for("efficientnet_b0", width_mult=0.25, depth_mult=0.25)
    assert [s[-1].out_chs for s in eff.block_defs(small)] == [8, 8, 16, 24, 32, 48, 80]
    assert (eff.stem_width(small), eff.head_width(small)) == (8, 320)
    assert eff.title(small) == "EfficientNet (width 0.25, depth 0.25)"


def test_flops_match_the_counted_b0_and_xla_cost_analysis():
    b0 = eff.spec_for("efficientnet_b0", in_chans=3, num_classes=1000)
    flops = eff.forward_flops_per_image(b0, 224)
    # torch.utils.flop_counter.FlopCounterMode on timm's efficientnet_b0 at 224 px: 769,069,504
    # conv + 2,560,000 linear FLOPs; torchvision publishes 0.39 GFLOPS (multiply-adds, rounded).
    assert flops == 771_629_504
    assert 0.385e9 <= flops / 2 < 0.395e9
    spec = eff.EfficientNetSpec(
        stages=("ds_r1_k3_s1_e1_c64_se0.25", "ir_r2_k5_s2_e6_c96_se0.25"),
        stem_size=64,
        num_features=256,
        depthwise="xla",
    )
    model = eff.EfficientNet(spec, rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    images = jnp.zeros((4, 64, 64, 1))
    apply = jax.jit(lambda p, x: nnx.merge(graphdef, p, rest)(x))
    cost = apply.lower(params, images).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    # XLA also counts BatchNorm, SiLU, the SE gate and pooling: a few percent at this width.
    ratio = cost["flops"] / 4 / eff.forward_flops_per_image(spec, 64)
    assert 1.0 < ratio < 1.1


def test_drop_path_only_with_keys_and_per_sample(fixture, state):
    """Rates k / n * 0.5 over the n = 5 blocks: of the two with a residual only the last
    (blocks.3.1, rate 0.4) can drop. Each sample's logits are either those with that branch
    removed or those with it scaled by 1 / 0.6, as its own key decides."""
    spec = tiny_spec(drop_path_rate=0.5)
    assert [b.drop_path_rate for s in eff.block_defs(spec) for b in s] == [0, 0.1, 0.2, 0.3, 0.4]
    params, stats, _ = eff_import.variables_from_state_dict(state, spec)
    model = model_with(params, stats, spec)
    x = jnp.concatenate(
        [nhwc(fixture["images"]), jax.random.normal(jax.random.key(1), (6, 32, 32, 3))]
    )
    # Without keys, no drop path: timm's eval-mode logits.
    np.testing.assert_allclose(forward(model, x)[:2], fixture["logits"], rtol=0, atol=1e-5)

    def with_branch_scaled(factor):
        scaled = jax.tree.map(lambda v: v, params)
        bn3 = scaled["blocks"][3][1]["bn3"]
        bn3["scale"], bn3["bias"] = bn3["scale"] * factor, bn3["bias"] * factor
        return forward(model_with(scaled, stats, spec), x)

    removed, kept = with_branch_scaled(0.0), with_branch_scaled(1 / 0.6)
    keys = jax.random.split(jax.random.key(2), 8)
    dropped = forward(model, x, keys)
    is_removed = np.all(np.abs(dropped - removed) < 1e-5, axis=1)
    is_kept = np.all(np.abs(dropped - kept) < 1e-5, axis=1)
    assert np.all(is_removed ^ is_kept) and 0 < is_removed.sum() < 8
    # A sample's draw depends on its key only, not on its place or the rest of the batch.
    order = np.array([3, 0, 7, 1, 6, 2, 5, 4])
    np.testing.assert_allclose(forward(model, x[order], keys[order]), dropped[order], atol=1e-5)
    other = forward(model, x, jax.random.split(jax.random.key(3), 8))
    assert not np.allclose(other, dropped)


def test_bfloat16_compute_is_close_to_float32(fixture, state):
    model = imported(state, tiny_spec(dtype="bfloat16"))
    logits = forward(model, nhwc(fixture["images"]))
    assert logits.dtype == np.float32
    assert forward(model, nhwc(fixture["images"]), feature_map=True).dtype == jnp.bfloat16
    scale = np.abs(fixture["logits"]).max()
    np.testing.assert_allclose(logits, fixture["logits"], rtol=0, atol=0.05 * scale)


@jax.jit
def _strided_both_ways(x, kernel):
    """(output, input gradient, kernel gradient) of the stride-2 depthwise conv, per impl."""

    def outputs(impl):
        def f(x, w):
            return eff.depthwise_conv(x, w, 2, impl)

        return (f(x, kernel), *jax.grad(lambda x, w: jnp.sum(jnp.sin(f(x, w))), (0, 1))(x, kernel))

    return outputs("xla"), outputs("shift")


def test_strided_shift_depthwise_equals_xla_with_gradients():
    """'shift' at stride 2 is the stride-1 result subsampled: equal to XLA's strided conv for
    odd kernels and sizes, forward and backward."""
    for k, size in ((3, 9), (5, 8)):
        x = jax.random.normal(jax.random.key(k), (2, size, size, 6))
        kernel = jax.random.normal(jax.random.key(k + 1), (k, k, 1, 6))
        xla, shift = _strided_both_ways(x, kernel)
        assert xla[0].shape == (2, -(-size // 2), -(-size // 2), 6)
        for a, b in zip(xla, shift, strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_shift_and_xla_parameter_gradients_agree():
    """The whole model's parameter gradients through either depthwise implementation (both
    stride-2 kernels, 3x3 and 5x5, and a stride-1 one)."""
    stages = ("ds_r1_k3_s1_e1_c8_se0.25", "ir_r1_k5_s2_e2_c8_se0.25", "ir_r1_k3_s2_e2_c8")
    images = jax.random.normal(jax.random.key(0), (2, 16, 16, 1))
    grads = {}
    for impl in ("xla", "shift"):
        spec = eff.EfficientNetSpec(stem_size=8, num_features=16, stages=stages, depthwise=impl)
        graphdef, params, rest = nnx.split(eff.EfficientNet(spec, rngs=nnx.Rngs(0)), nnx.Param, ...)

        def loss(p, graphdef=graphdef, rest=rest):
            logits = nnx.merge(graphdef, p, rest)(images)
            return jnp.sum(jax.nn.log_softmax(logits)[:, 0])

        grads[impl] = jax.jit(jax.grad(loss))(params)
    assert np.abs(grads["shift"]["blocks"][1][0]["conv_dw"]["kernel"]).max() > 1e-4
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        grads["xla"], grads["shift"],
    )  # fmt: skip


def test_layer_ids_follow_timms_group_matcher():
    """Checked against timm's param_groups_layer_decay grouping of efficientnet_b0: stem 0,
    blocks 1-16, conv_head/bn2 with the last block (MATCH_PREV_GROUP), classifier 17."""
    params = nnx.to_pure_dict(nnx.state(abstract_b0(), nnx.Param))
    ids, count = eff.layer_ids(params)
    flat = flat_paths(ids)
    assert count == 18
    assert flat["conv_stem/kernel"] == 0 and flat["bn1/bias"] == 0
    assert flat["blocks/0/0/conv_dw/kernel"] == 1 and flat["blocks/0/0/se/conv_expand/bias"] == 1
    assert flat["blocks/1/1/bn3/scale"] == 3 and flat["blocks/5/3/conv_pwl/kernel"] == 15
    assert flat["blocks/6/0/conv_pw/kernel"] == 16 and flat["conv_head/kernel"] == 16
    assert flat["bn2/scale"] == 16 and flat["classifier/kernel"] == 17
    assert sorted(set(flat.values())) == list(range(18))


def test_trainable_presets_select_the_head_and_the_last_resolution():
    spec = eff.spec_for("efficientnet_b0")
    paths = list(flat_paths(nnx.to_pure_dict(nnx.state(abstract_b0(), nnx.Param))))
    presets = eff.trainable_presets(spec)
    head = [p for p in paths if re.fullmatch(presets["head"], p)]
    assert sorted(head) == ["classifier/bias", "classifier/kernel"]
    last = {p for p in paths if re.fullmatch(presets["last_stage"], p)}
    expected = {p for p in paths if p.startswith(("blocks/5/", "blocks/6/", "conv_head/",
                                                   "bn2/", "classifier/"))}  # fmt: skip
    assert last == expected and len(last) > 50
    tiny = eff.trainable_presets(tiny_spec())["last_stage"]
    assert re.fullmatch(tiny, "blocks/2/0/conv_dw/kernel")
    assert not re.fullmatch(tiny, "blocks/1/0/conv_dw/kernel")


def test_specs_are_validated():
    with pytest.raises(UserError, match=r"config\.model\.stages = .*timm block notation"):
        eff.EfficientNetSpec(stages=("ir_r2_k4_s2_e6_c24",))
    with pytest.raises(UserError, match=r"config\.model\.stages"):
        eff.EfficientNetSpec(stages=("ir_r1_k3_s1_c24",))  # an inverted residual needs e
    with pytest.raises(UserError, match="at most 4 stride-2 stages"):
        eff.EfficientNetSpec(stages=("ds_r1_k3_s2_e1_c8",) * 5)
    with pytest.raises(UserError, match=r"config\.model\.param_dtype"):
        eff.EfficientNetSpec(param_dtype="bfloat16")
    with pytest.raises(UserError, match=r"config\.model\.width_mult = nan"):
        eff.EfficientNetSpec(width_mult=float("nan"))
    with pytest.raises(UserError, match="expected one of efficientnet_b0"):
        eff.spec_for("efficientnet_b9")
    assert eff.EfficientNetSpec(stages=list(TINY_STAGES)).stages == TINY_STAGES
    parsed = [eff.parse_stage(s) for s in eff.B0_STAGES]
    assert tuple(eff.stage_string(s) for s in parsed) == eff.B0_STAGES


@pytest.mark.skipif(
    not os.environ.get("ALZ_JAX_TORCH_PARITY"), reason="opt-in: needs torch and timm"
)
def test_full_efficientnet_b0_matches_timm():
    """Full-size efficientnet_b0 (random weights and BatchNorm statistics: nothing is
    downloaded) against timm, with both depthwise implementations."""
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model("efficientnet_b0", pretrained=False).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".weight") and p.ndim == 1:
                p.copy_(0.5 + torch.rand_like(p))
            elif p.ndim == 1 or name.startswith("classifier"):
                p.copy_(torch.randn_like(p) * (0.1 if p.ndim == 1 else 0.05))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn_like(b) * 0.2)
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand_like(b))
        images = torch.randn(2, 3, 224, 224)
        expected = model(images).numpy()
    state = {k: v.numpy() for k, v in model.state_dict().items()}
    spec = eff_import.spec_from_state_dict(state, in_chans=3, num_classes=1000)
    assert spec == eff.spec_for("efficientnet_b0", in_chans=3, num_classes=1000)
    for impl in ("xla", "shift"):
        ours = imported(state, dataclasses.replace(spec, depthwise=impl))
        logits = np.asarray(ours(nhwc(images.numpy())))
        np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5)
