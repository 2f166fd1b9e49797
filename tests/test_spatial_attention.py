"""The spatial attention head of the CNN families (model.spatial_attention) and 2.5D input on
the model side: the pooling against a computation by hand, every CNN family built with it
(parameters, FLOPs, presets, layer ids), ViT's refusal, weight import leaving the scorer fresh,
the stem adapted to in_chans 3 and 5, and the report's attention figure beside Grad-CAM."""

import dataclasses
import re
from pathlib import Path

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alz_jax.core import optim, sharding, steps
from alz_jax.evaluation import figures, reports, saliency
from alz_jax.host.errors import UserError
from alz_jax.models import (
    convert,
    convnext,
    efficientnet_import,
    import_helpers,
    registry,
    resnet_import,
    vit_import,
)
from alz_jax.models.layers import SpatialAttentionPool, attention_pool_macs, attention_width
from alz_jax.run import assembly, run_record, specs
from tests.test_families import batch, config_for

FIXTURES = Path(__file__).parent / "fixtures"
CNN_FAMILIES = ("convnext", "efficientnet", "resnet", "simple_cnn")
STATS = {"mean": 0.25, "std": 0.3}


def _spec(family: str, **fields):
    """The family's tiny test model (32 px), with `fields` replaced."""
    return dataclasses.replace(specs.resolve(config_for(family)).model, **fields)


def _images(seed: int, count: int = 2, channels: int = 1) -> jax.Array:
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(0, 1, (count, 32, 32, channels)), jnp.float32)


def _scorer_size(dim: int) -> int:
    hidden = attention_width(dim)
    return dim * hidden + hidden + hidden + 1


def _paths(params) -> list[str]:
    return [optim.path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def _attention_prefix(family: str) -> str:
    return "attention/" if family == "efficientnet" else "head/attention/"


def test_pooling_is_the_softmax_weighted_sum_of_the_map():
    pool = SpatialAttentionPool(16, nnx.Rngs(0))
    rng = np.random.default_rng(1)
    # A trained-looking scorer: the fresh one's last layer is zero (uniform weights).
    pool.score.kernel.value = jnp.asarray(rng.normal(0, 1, (8, 1)), jnp.float32)
    pool.score.bias.value = jnp.asarray([0.3], jnp.float32)
    f = rng.normal(0, 1, (2, 3, 4, 16)).astype(np.float32)
    hidden = np.tanh(f @ np.asarray(pool.proj.kernel.value) + np.asarray(pool.proj.bias.value))
    scores = (hidden @ np.asarray(pool.score.kernel.value))[..., 0] + 0.3
    flat = np.exp(scores.reshape(2, -1) - scores.reshape(2, -1).max(axis=1, keepdims=True))
    weights = (flat / flat.sum(axis=1, keepdims=True)).reshape(2, 3, 4)
    expected = np.einsum("bhw,bhwc->bc", weights, f)
    np.testing.assert_allclose(np.asarray(pool(jnp.asarray(f))), expected, rtol=0, atol=1e-5)
    drawn = np.asarray(pool.weights(jnp.asarray(f)))
    assert drawn.shape == (2, 3, 4) and drawn.dtype == np.float32
    np.testing.assert_allclose(drawn, weights, rtol=0, atol=1e-6)
    np.testing.assert_allclose(drawn.sum(axis=(1, 2)), [1.0, 1.0], rtol=0, atol=1e-6)
    assert np.abs(drawn - 1 / 12).max() > 1e-3  # not the uniform map
    # A constant map: whatever the weights, the mean pooling's result.
    constant = np.broadcast_to(f[:, :1, :1, :], f.shape)
    np.testing.assert_allclose(np.asarray(pool(jnp.asarray(constant))),
                               constant.mean(axis=(1, 2)), rtol=0, atol=1e-6)  # fmt: skip
    # Fresh, the scorer's last layer is zero: the plain mean of any map.
    fresh = SpatialAttentionPool(16, nnx.Rngs(0))
    np.testing.assert_allclose(np.asarray(fresh(jnp.asarray(f))), f.mean(axis=(1, 2)),
                               rtol=0, atol=1e-6)  # fmt: skip


@pytest.mark.parametrize("family", CNN_FAMILIES)
def test_every_cnn_family_builds_and_runs_with_spatial_attention(family):
    plain, spec = _spec(family), _spec(family, spatial_attention=True)
    net = registry.build(spec, 0)
    x = _images(0)
    features = net.feature_map(x)
    weights = np.asarray(net.attention_map(features))
    dim = features.shape[-1]
    cells = weights.shape[1] * weights.shape[2]
    assert weights.shape[0] == 2 and weights.dtype == np.float32
    np.testing.assert_allclose(weights.sum(axis=(1, 2)), [1.0, 1.0], rtol=0, atol=1e-6)
    logits = net(x)
    assert logits.shape == (2, 2) and np.all(np.isfinite(np.asarray(logits)))
    assert registry.count_params(spec) == registry.count_params(plain) + _scorer_size(dim)
    extra = registry.forward_flops_per_image(spec, 32) - registry.forward_flops_per_image(plain, 32)
    assert extra == 2 * attention_pool_macs(dim, cells)
    params, _ = registry.init_variables(spec, 0)
    scorer = [n for n in _paths(params) if n.startswith(_attention_prefix(family))]
    assert sorted(scorer) == sorted(
        _attention_prefix(family) + n
        for n in ("proj/kernel", "proj/bias", "score/kernel", "score/bias")
    )
    for preset in ("head", "last_stage"):
        pattern = registry.trainable_pattern(spec, preset)
        assert all(re.fullmatch(pattern, n) for n in scorer), preset
    ids, layers = registry.layer_ids(spec, params)
    flat = {optim.path_name(p): i for p, i in jax.tree_util.tree_flatten_with_path(ids)[0]}
    assert {flat[n] for n in scorer} == {layers - 1}  # the head's layer


def test_a_head_only_step_trains_the_scorer_and_nothing_outside_the_head():
    config = config_for("resnet", **{"optim.trainable": "head", "ema.enabled": False,
                                     "swa.enabled": False})  # fmt: skip
    plain = specs.resolve(config)
    run = plain.with_model(dataclasses.replace(plain.model, spatial_attention=True))
    parts = assembly.assemble(run, run.plan(2), sharding.make_mesh(), STATS)
    state = parts.fresh_state(0)
    start = jax.device_get(state["params"])
    # Warm-up starts at learning rate 0; the zero last layer moves first, then what feeds it.
    for seed in range(3):
        state, _ = parts.train_step(state, batch(seed))
    end = jax.device_get(state["params"])
    moved = {
        optim.path_name(p): not np.array_equal(a, b)
        for (p, a), b in zip(
            jax.tree_util.tree_flatten_with_path(start)[0], jax.tree.leaves(end), strict=True
        )
    }
    assert {n for n, m in moved.items() if m} == {
        "head/fc/kernel",
        "head/fc/bias",
        "head/attention/proj/kernel",
        "head/attention/proj/bias",
        "head/attention/score/kernel",
        "head/attention/score/bias",
    }


def test_spatial_attention_is_in_a_runs_identity_only_when_on():
    run = specs.resolve(config_for("resnet"))
    assert "spatial_attention" not in run_record.identity(run, "fp")["model"]  # older runs
    on = dataclasses.replace(run, model=dataclasses.replace(run.model, spatial_attention=True))
    assert run_record.identity(on, "fp")["model"]["spatial_attention"] is True


def test_spatial_attention_is_a_common_field_and_a_vit_refuses_it():
    for name in ("convnext_atto", "resnet50", "efficientnet_b0", "simple_cnn"):
        assert registry.spec_from_name(name, spatial_attention=True).spatial_attention
        assert not registry.spec_from_name(name).spatial_attention
    with pytest.raises(UserError, match=r"config\.model\.spatial_attention = True: expected "
                       r"False for a ViT \(its head reads the class token"):  # fmt: skip
        registry.spec_from_name("vit_s16", spatial_attention=True)
    with pytest.raises(UserError, match=r"config\.model\.spatial_attention"):
        _spec("vit", spatial_attention=True)


def _import_case(family: str):
    """(state dict, layout, spec) of a family's tiny PyTorch fixture, 3 input channels."""
    if family == "convnext":
        state = convert.load_state_dict(str(FIXTURES / "convnext_tiny_torchvision.safetensors"))
        return (
            state,
            "torchvision",
            convnext.ConvNeXtSpec(
                (1, 1, 1, 1), (8, 12, 16, 24), in_chans=3, num_classes=10, depthwise="xla"
            ),
        )
    state = convert.load_state_dict(str(FIXTURES / f"{family}_tiny_timm.safetensors"))
    if family == "vit":
        return (
            state,
            "timm",
            vit_import.spec_from_state_dict(state, "timm", in_chans=3, num_classes=5, num_heads=2),
        )
    if family == "resnet":
        return state, "timm", resnet_import.spec_from_state_dict(state, "timm", in_chans=3,
                                                                 num_classes=5)  # fmt: skip
    with np.load(FIXTURES / "efficientnet_tiny_fixture.npz") as f:
        strides = tuple(int(s) for s in f["strides"])
    return state, "timm", efficientnet_import.spec_from_state_dict(
        state, "timm", strides=strides, in_chans=3, num_classes=5)  # fmt: skip


def _subtree(params: dict, prefix: str) -> dict:
    node = params
    for key in prefix.strip("/").split("/"):
        node = node[key]
    return node


@pytest.mark.parametrize("family", ["convnext", "resnet", "efficientnet"])
def test_weight_import_keeps_the_files_weights_and_a_fresh_seeded_scorer(family):
    state, layout, plain = _import_case(family)
    spec = dataclasses.replace(plain, spatial_attention=True)
    want, want_stats, _ = convert.variables_from_state_dict(state, plain, layout, seed=7)
    got, got_stats, notes = convert.variables_from_state_dict(state, spec, layout, seed=7)
    prefix = _attention_prefix(family)
    scorer = _subtree(got, prefix)
    owner = _subtree(got, prefix.rsplit("/", 2)[0]) if family != "efficientnet" else got
    del owner["attention"]
    # Every tensor read from the file: bitwise the plain import's.
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_equal(got_stats, want_stats)
    # The scorer: the fresh model's of that seed (another seed, another draw).
    fresh, _ = registry.init_variables(spec, 7)
    for a, b in zip(jax.tree.leaves(scorer), jax.tree.leaves(_subtree(fresh, prefix)),
                    strict=True):  # fmt: skip
        np.testing.assert_array_equal(a, b)
    other, _ = registry.init_variables(spec, 8)
    assert not np.array_equal(scorer["proj"]["kernel"], _subtree(other, prefix)["proj"]["kernel"])
    assert any("spatial attention initialised fresh" in n for n in notes), notes
    # Its last layer at zero: the imported model starts as the file's (mean pooling).
    x = _images(3, channels=3)
    with_attention = convert.model_with(spec, *convert.variables_from_state_dict(
        state, spec, layout, seed=7)[:2])(x)  # fmt: skip
    without = convert.model_with(plain, want, want_stats)(x)
    np.testing.assert_allclose(np.asarray(with_attention), np.asarray(without), rtol=0,
                               atol=1e-5)  # fmt: skip


def test_stem_of_3_channels_is_kept_and_of_5_adapted_by_timms_rule():
    state, layout, plain = _import_case("convnext")
    rgb = state["features.0.0.weight"]  # (out, 3, 4, 4)
    kept, notes = convert.params_from_state_dict(state, plain, layout)
    np.testing.assert_array_equal(kept["stem"]["conv"]["kernel"], rgb.transpose(2, 3, 1, 0))
    assert not any(n.startswith("stem") for n in notes)
    five, notes = convert.params_from_state_dict(state, dataclasses.replace(plain, in_chans=5),
                                                 layout)  # fmt: skip
    # timm's adapt_input_conv: weight.repeat(1, ceil(5 / 3), 1, 1)[:, :5] * 3 / 5.
    expected = (np.concatenate([rgb, rgb], axis=1)[:, :5] * (3 / 5)).transpose(2, 3, 1, 0)
    np.testing.assert_allclose(five["stem"]["conv"]["kernel"], expected, rtol=1e-6, atol=0)
    assert ("stem: the 3-channel kernel repeated over 5 input channels, scaled by 3/5 (timm's "
            "adapt_input_conv)") in notes  # fmt: skip
    np.testing.assert_allclose(
        import_helpers.adapt_input_kernel(rgb.transpose(2, 3, 1, 0), 2),
        (rgb[:, :2] * 1.5).transpose(2, 3, 1, 0), rtol=1e-6, atol=0,
    )  # fmt: skip


@pytest.mark.parametrize("family", ["resnet", "efficientnet", "vit"])
def test_every_other_importing_family_takes_5_channel_input(family):
    state, layout, plain = _import_case(family)
    spec = dataclasses.replace(plain, in_chans=5)
    params, stats, notes = convert.variables_from_state_dict(state, spec, layout)
    assert any("repeated over 5 input channels" in n for n in notes), notes
    size = getattr(spec, "image_size", 32)
    images = jnp.asarray(np.random.default_rng(4).normal(0, 1, (2, size, size, 5)), jnp.float32)
    logits = convert.model_with(spec, params, stats)(images)
    assert logits.shape == (2, 5) and np.all(np.isfinite(np.asarray(logits)))


def _scan_source(scans: int, slices: int) -> tuple[list, dict]:
    """(TFDS-like source of PNG-encoded 32 px slices, records) of `scans` scans."""
    rng = np.random.default_rng(5)
    source, n = [], scans * slices
    for _ in range(n):
        image = rng.integers(0, 255, (32, 32), np.uint8)
        source.append({"image": cv2.imencode(".png", image)[1].tobytes()})
    records = {
        "file_name": np.array([f"s{i // slices}_{i % slices}.png" for i in range(n)], object),
        "scan_id": np.array([f"scan{i // slices}" for i in range(n)], object),
        "label": np.array([(i // slices) % 2 for i in range(n)]),
        "slice_index": np.array([i % slices for i in range(n)]),
    }
    return source, records


@pytest.mark.parametrize("attention", [False, True])
def test_the_saliency_figures_add_the_attention_panels_for_a_spatial_attention_model(attention):
    spec = _spec("simple_cnn", spatial_attention=attention)
    model = steps.make_model(spec)
    weights = jax.tree.map(jnp.asarray, model.weights(*registry.init_variables(spec, 0)))
    source, records = _scan_source(2, 3)
    drawn = saliency.scan_figures(
        source, records, np.full(6, 0.6), [("scan0", 0), ("scan1", 1)], model, weights, STATS,
        32, 3, 0.5,
    )  # fmt: skip
    assert sorted(drawn) == (["gradcam", "spatial_attention"] if attention else ["gradcam"])
    if attention:
        cards = figures.card_figures(drawn["spatial_attention"])
        assert len(cards) == 2  # one per scan, as Grad-CAM's
        assert cards[0]._supxlabel.get_text() == saliency.ATTENTION_CARD_EXPLANATION
        assert drawn["spatial_attention"]._supxlabel.get_text() == saliency.ATTENTION_EXPLANATION
        maps = np.asarray(saliency.make_attention_fn(model, STATS)(
            weights, np.zeros((1, 32, 32, 1), np.uint8)))  # fmt: skip
        assert maps.shape == (1, 32, 32) and np.isclose(maps.max(), 1.0)


def test_the_report_explains_the_attention_figure():
    text = reports.markdown_end(["# r"], [], {"gradcam": "g.png", "spatial_attention": "a.png"})
    lines = text.splitlines()
    after = lines[lines.index("![spatial_attention](a.png)") + 2]
    assert after == reports.SPATIAL_ATTENTION_TEXT
    assert after.startswith("Spatial attention: the weights the head pooled the last feature")
