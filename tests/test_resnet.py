"""ResNet-50 family: PyTorch's logits from torchvision- and timm-layout files, the 1-channel stem,
the head, refusals naming keys, timm's initialisation, drop path, bf16, layer ids, presets,
FLOPs, and BatchNorm's statistics: a training-mode forward's observed moments and the SWA
statistics pass against `torch.optim.swa_utils.update_bn`."""

import functools
import os
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alz_jax.core import averaging
from alz_jax.host.errors import UserError
from alz_jax.models import batchnorm, convert, resnet, resnet_import
from alz_jax.models.import_helpers import ConversionError, path_names

FIXTURES = Path(__file__).parent / "fixtures"
WEIGHTS = FIXTURES / "resnet_tiny_timm.safetensors"
# The fixture's model (tests/fixtures/make_resnet_fixture.py).
DEPTHS, WIDTHS, STEM, CLASSES = (1, 1, 1, 1), (4, 6, 8, 10), 8, 5
_BUFFER = re.compile(r".*\.(running_mean|running_var|num_batches_tracked)")


@pytest.fixture(scope="module")
def fixture():
    with np.load(FIXTURES / "resnet_tiny_fixture.npz", allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def state():
    return convert.load_state_dict(str(WEIGHTS))


def spec(**kw) -> resnet.ResNetSpec:
    values = dict(stem_width=STEM, in_chans=3, num_classes=CLASSES) | kw
    return resnet.ResNetSpec(DEPTHS, WIDTHS, **values)


def decode(u8: np.ndarray) -> np.ndarray:
    """The fixture's uint8 image codes as float32 (make_resnet_fixture.decode)."""
    return ((u8.astype(np.float32) - 127.5) / 64.0).astype(np.float32)


def perturbation(shape: tuple) -> np.ndarray:
    """make_resnet_fixture.perturbation: w2 = w1 + this, for every parameter."""
    i = np.arange(int(np.prod(shape)), dtype=np.int64)
    return (((i * 7919) % 201 - 100).astype(np.float32) / np.float32(10000.0)).reshape(shape)


def nhwc(images: np.ndarray) -> jax.Array:
    return jnp.asarray(images.transpose(0, 2, 3, 1))


def with_variables(target: resnet.ResNetSpec, params: dict, stats: dict) -> resnet.ResNet:
    model = resnet.ResNet(target, rngs=nnx.Rngs(0))
    nnx.update(model, nnx.State(params))
    nnx.update(model, nnx.State(stats))
    return model


@functools.partial(jax.jit, static_argnames=("graphdef", "method"))
def _apply(graphdef, variables, images, sample_keys, method):
    module = nnx.merge(graphdef, variables)
    return getattr(module, method)(images, sample_keys=sample_keys)


def run(model: resnet.ResNet, images, sample_keys=None, method: str = "__call__") -> np.ndarray:
    """The model's logits (or feature map) compiled once per architecture: XLA:CPU compiles a
    whole tiny ResNet faster than the op-by-op (eager) forward's hundred small programs."""
    graphdef, variables = nnx.split(model)
    return np.asarray(_apply(graphdef, variables, images, sample_keys, method))


def imported(state_dict, target: resnet.ResNetSpec, layout=None) -> resnet.ResNet:
    params, stats, _ = resnet_import.variables_from_state_dict(state_dict, target, layout)
    return with_variables(target, params, stats)


def flat(tree) -> dict[tuple, np.ndarray]:
    return {path_names(p): np.asarray(v) for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_fixture_is_small_and_made_by_its_script(state):
    sizes = [p.stat().st_size for p in FIXTURES.glob("resnet_*")]
    assert len(sizes) == 2 and sum(sizes) < 100_000
    assert (FIXTURES / "make_resnet_fixture.py").exists()
    assert "layer1.0.bn1.num_batches_tracked" in state  # present in the file, ignored on import


@pytest.mark.parametrize("layout", ["torchvision", "timm", None])
def test_imported_model_gives_pytorchs_logits(fixture, state, layout):
    """One file, both layout names (torchvision and timm share their keys; the fixture script
    checks torchvision's forward gives timm's logits on it)."""
    model = imported(state, spec(), layout)
    logits = run(model, nhwc(decode(fixture["images_u8"])))
    np.testing.assert_allclose(logits, fixture["logits"], rtol=0, atol=1e-5)
    assert resnet_import.detect_layout(state) == "torchvision"
    assert logits.dtype == np.float32


def test_spec_is_inferred_from_the_file(state):
    inferred = resnet_import.spec_from_state_dict(state, in_chans=3, num_classes=CLASSES)
    assert inferred == spec()
    assert resnet_import.spec_from_state_dict(state) == spec(in_chans=1, num_classes=2)
    assert resnet.title(inferred) == "ResNet depths (1, 1, 1, 1), widths (4, 6, 8, 10), stem 8"


def test_one_channel_stem_is_the_summed_kernel(fixture, state):
    """A gray image repeated over RGB through PyTorch's 3-channel model = the gray image through
    the summed 1-channel stem."""
    params, stats, notes = resnet_import.variables_from_state_dict(state, spec(in_chans=1))
    model = with_variables(spec(in_chans=1), params, stats)
    logits = run(model, nhwc(decode(fixture["gray_u8"])))
    np.testing.assert_allclose(logits, fixture["gray_logits"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(
        params["stem"]["conv"]["kernel"][..., 0, :],
        state["conv1.weight"].sum(1).transpose(1, 2, 0),
        rtol=1e-6,
    )
    assert any("summed" in n for n in notes)


def test_head_is_reinitialised_for_another_class_count(state):
    target = spec(in_chans=1, num_classes=2)
    params, stats, notes = resnet_import.variables_from_state_dict(state, target, seed=5)
    fresh = resnet.init_params(target, 5)
    np.testing.assert_array_equal(params["head"]["fc"]["kernel"], fresh["head"]["fc"]["kernel"])
    np.testing.assert_array_equal(params["head"]["fc"]["bias"], fresh["head"]["fc"]["bias"])
    # Everything else comes from the file: the last block and its statistics included.
    np.testing.assert_array_equal(
        params["stages"][3][0]["conv3"]["kernel"],
        state["layer4.0.conv3.weight"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        stats["stages"][3][0]["downsample"]["bn"]["var"], state["layer4.0.downsample.1.running_var"]
    )
    assert "head: re-initialised for 2 classes (the checkpoint's has 5)" in notes
    headless = {k: v for k, v in state.items() if not k.startswith("fc.")}
    params, _, notes = resnet_import.variables_from_state_dict(headless, target, seed=5)
    np.testing.assert_array_equal(params["head"]["fc"]["kernel"], fresh["head"]["fc"]["kernel"])
    assert "head: initialised for 2 classes (the file has none)" in notes


def test_mismatches_are_refused_naming_the_keys(state):
    convert_ = resnet_import.variables_from_state_dict
    with pytest.raises(ConversionError, match=r"holds a ResNet depths \(1, 1, 1, 1\), widths "
                       r"\(4, 6, 8, 10\), stem 8; the model is ResNet-50"):  # fmt: skip
        convert_(state, resnet.spec_for("resnet50"))
    lacking = {k: v for k, v in state.items() if k != "layer2.0.bn2.running_var"}
    with pytest.raises(ConversionError, match=r"lacks 1 tensor.*layer2\.0\.bn2\.running_var"):
        convert_(lacking, spec())
    extra = dict(state, **{"layer2.0.se.fc1.weight": np.zeros(3, np.float32)})
    with pytest.raises(ConversionError, match=r"would not use.*layer2\.0\.se\.fc1\.weight"):
        convert_(extra, spec())
    wrong = dict(state, **{"layer3.0.conv2.weight": np.zeros((8, 4, 3, 3), np.float32)})
    with pytest.raises(ConversionError, match=r"layer3\.0\.conv2\.weight has shape "
                       r"\(8, 4, 3, 3\).*expects \(3, 3, 8, 8\)"):  # fmt: skip
        convert_(wrong, spec())
    broken = dict(state, **{"layer1.0.bn3.bias": np.full(16, np.nan, np.float32)})
    with pytest.raises(ConversionError, match=r"NaN or Inf.*layer1\.0\.bn3\.bias"):
        convert_(broken, spec())
    with pytest.raises(ConversionError, match="a 2-channel stem cannot be adapted to in_chans=1"):
        convert_(dict(state, **{"conv1.weight": state["conv1.weight"][:, :2]}), spec(in_chans=1))
    with pytest.raises(ConversionError, match="layout 'fb'"):
        convert_(state, spec(), "fb")
    basic = {k: v for k, v in state.items() if ".conv3." not in k and ".bn3." not in k}
    with pytest.raises(ConversionError, match="BasicBlock ResNet"):
        convert_(basic, spec())
    with pytest.raises(ConversionError, match="Not a ResNet state dict"):
        resnet_import.detect_layout({"features.0.0.weight": np.zeros(1)})
    deep = {("conv1.0.weight" if k == "conv1.weight" else k): v for k, v in state.items()}
    with pytest.raises(ConversionError, match="deep-stem"):
        resnet_import.spec_from_state_dict(deep)


def test_spec_fields_are_checked():
    assert resnet.spec_for("resnet50", in_chans=3) == resnet.ResNetSpec(
        (3, 4, 6, 3), (64, 128, 256, 512), stem_width=64, in_chans=3
    )
    with pytest.raises(UserError, match="expected one of resnet50"):
        resnet.spec_for("resnet18")
    with pytest.raises(UserError, match="same length"):
        resnet.ResNetSpec((1, 1), (4,))
    for field, value, message in [
        ("param_dtype", "bfloat16", "config.model.param_dtype"),
        ("dtype", "float16", "float32|bfloat16"),
        ("drop_path_rate", 1.0, r"in \[0, 1\)"),
        ("stem_width", 0, "config.model.stem_width = 0"),
    ]:
        with pytest.raises(UserError, match=message):
            spec(**{field: value})
    assert resnet.title(resnet.spec_for("resnet50")) == "ResNet-50"


def test_full_size_parameter_count_matches_torchvision_and_timm():
    model = nnx.eval_shape(
        lambda: resnet.ResNet(
            resnet.spec_for("resnet50", in_chans=3, num_classes=1000), rngs=nnx.Rngs(0)
        )
    )
    count = sum(int(p.size) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    stats = sum(int(p.size) for p in jax.tree.leaves(nnx.state(model, nnx.BatchStat)))
    # sum(p.numel() for p in torchvision.models.resnet50().parameters()), timm's the same;
    # running_mean and running_var of its 53 BatchNorms.
    assert count == 25_557_032
    assert stats == 53_120


@pytest.mark.parametrize("zero_init_last", [True, False])
def test_initialisation_follows_timm(zero_init_last):
    target = resnet.ResNetSpec((1, 1, 1, 1), (8, 16, 32, 64), stem_width=32,
                               num_classes=300, zero_init_last=zero_init_last)  # fmt: skip
    model = resnet.ResNet(target, rngs=nnx.Rngs(3))
    params = flat(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    stats = flat(nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))
    for path, value in params.items():
        if path[-1] == "kernel" and value.ndim == 4:  # kaiming_normal_, fan_out, ReLU gain
            std = np.sqrt(2.0 / (value.shape[0] * value.shape[1] * value.shape[3]))
            tol = 4.0 / np.sqrt(value.size)  # a few standard errors of the sample std
            assert abs(value.std() / std - 1) < tol + 0.01, path
            assert abs(value.mean()) < 4 * std / np.sqrt(value.size), path
        elif path[-1] == "scale":
            last = path[-2] == "bn3" and zero_init_last
            np.testing.assert_array_equal(value, 0.0 if last else 1.0)
        elif path[-1] == "bias" and path[0] != "head":
            np.testing.assert_array_equal(value, 0.0)
    for path, value in stats.items():
        np.testing.assert_array_equal(value, 0.0 if path[-1] == "mean" else 1.0)
    bound = 1.0 / np.sqrt(256)  # nn.Linear: kernel and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    kernel, bias = params[("head", "fc", "kernel")], params[("head", "fc", "bias")]
    assert kernel.shape == (256, 300) and np.abs(kernel).max() <= bound
    assert kernel.std() == pytest.approx(bound / np.sqrt(3), rel=0.01)
    assert np.abs(bias).max() <= bound and bias.std() == pytest.approx(bound / np.sqrt(3), rel=0.2)


def test_drop_path_only_with_keys_per_sample_and_on_the_residual_branch(fixture, state):
    params, stats, _ = resnet_import.variables_from_state_dict(state, spec())
    model = with_variables(spec(drop_path_rate=0.6), params, stats)
    # timm's make_blocks: drop_path_rate * block_idx / (blocks - 1).
    assert [b.drop_path_rate for s in model.stages for b in s] == pytest.approx([0, 0.2, 0.4, 0.6])
    assert resnet.block_drop_rates(resnet.spec_for("resnet50", drop_path_rate=0.15)) == (
        pytest.approx([0.15 * k / 15 for k in range(16)])
    )
    images = nhwc(np.repeat(decode(fixture["images_u8"][:1]), 8, axis=0))
    plain = run(model, images)
    np.testing.assert_allclose(plain, np.repeat(fixture["logits"][:1], 8, 0), rtol=0, atol=1e-5)
    keys = jax.random.split(jax.random.key(1), 8)
    dropped = run(model, images, keys)
    assert len({tuple(np.round(r, 4)) for r in dropped}) > 1  # samples drew different blocks
    np.testing.assert_allclose(run(model, images[3:4], keys[3:4])[0], dropped[3], rtol=0, atol=1e-5)
    # One block: the branch (not the shortcut) is zeroed or scaled by 1 / keep, per sample.
    block = model.stages[3][0]
    keep = 1.0 - block.drop_path_rate
    x = jax.random.normal(jax.random.key(2), (8, 4, 4, 4 * WIDTHS[2]))
    masks = jax.vmap(lambda k: jax.random.bernoulli(k, keep))(keys)
    assert 0 < int(masks.sum()) < 8
    branch = block.bn3(block.conv3(jax.nn.relu(block.bn2(block.conv2(
        jax.nn.relu(block.bn1(block.conv1(x))))))))  # fmt: skip
    expected = jax.nn.relu(
        block.downsample(x) + jnp.where(masks[:, None, None, None], branch / keep, 0.0)
    )
    np.testing.assert_allclose(block(x, keys), expected, rtol=1e-6, atol=1e-6)


def test_bfloat16_compute_is_close_to_float32(fixture, state):
    params, stats, _ = resnet_import.variables_from_state_dict(state, spec())
    model = with_variables(spec(dtype="bfloat16"), params, stats)
    images = nhwc(decode(fixture["images_u8"]))
    logits = run(model, images)
    assert logits.dtype == np.float32
    assert run(model, images, method="feature_map").dtype == jnp.bfloat16
    scale = np.abs(fixture["logits"]).max()
    assert np.abs(logits - fixture["logits"]).max() < 0.03 * scale


def test_feature_map_is_what_the_head_pools(fixture, state):
    model = imported(state, spec())
    images = nhwc(decode(fixture["images_u8"]))
    features = run(model, images, method="feature_map")
    assert features.shape == (2, 1, 1, 4 * WIDTHS[-1])
    pooled = features.astype(np.float64).mean(axis=(1, 2))
    kernel, bias = model.head.fc.kernel.value, model.head.fc.bias.value
    np.testing.assert_allclose(pooled @ kernel + bias, run(model, images), rtol=0, atol=1e-5)


def test_layer_ids_follow_timms_block_grouping():
    params = resnet.init_params(resnet.ResNetSpec((2, 1, 1, 1), WIDTHS, stem_width=STEM), 0)
    ids, count = resnet.layer_ids(params)
    assert count == 7
    assert ids["stem"]["conv"]["kernel"] == 0 and ids["stem"]["bn"]["bias"] == 0
    assert ids["stages"][0][0]["downsample"]["conv"]["kernel"] == 1  # with its block
    assert ids["stages"][0][1]["conv3"]["kernel"] == 2
    assert ids["stages"][1][0]["bn1"]["scale"] == 3
    assert ids["stages"][3][0]["downsample"]["bn"]["bias"] == 5
    assert ids["head"]["fc"]["kernel"] == 6 and ids["head"]["fc"]["bias"] == 6
    # ResNet-50: timm's param_groups_layer_decay(decay d) scales conv1 by d^17, layer1.0 by
    # d^16, layer4.2 by d^1 and fc by d^0: 18 layers.
    full = nnx.eval_shape(lambda: resnet.ResNet(resnet.spec_for("resnet50"), rngs=nnx.Rngs(0)))
    ids, count = resnet.layer_ids(nnx.to_pure_dict(nnx.state(full, nnx.Param)))
    assert count == 18
    assert ids["stages"][0][0]["conv1"]["kernel"] == 1
    assert ids["stages"][3][2]["conv3"]["kernel"] == 16 and ids["head"]["fc"]["bias"] == 17


def test_trainable_presets_pick_the_head_and_the_last_stage():
    params = resnet.init_params(resnet.ResNetSpec((2, 1, 1, 2), WIDTHS, stem_width=STEM), 0)
    paths = ["/".join(map(str, p)) for p in flat(params)]
    presets = resnet.trainable_presets(resnet.ResNetSpec((2, 1, 1, 2), WIDTHS))
    head = [p for p in paths if re.fullmatch(presets["head"], p)]
    last = [p for p in paths if re.fullmatch(presets["last_stage"], p)]
    assert sorted(head) == ["head/fc/bias", "head/fc/kernel"]
    assert sorted(last) == sorted(p for p in paths if p.startswith(("stages/3/", "head/")))
    assert "stages/3/0/downsample/conv/kernel" in last and len(last) == 2 + 2 * 9 + 3


def test_flops_match_the_published_resnet50_count_and_xla_cost_analysis():
    full = resnet.spec_for("resnet50", in_chans=3, num_classes=1000)
    # torchvision's ResNet50_Weights: 4.09 GFLOPS (multiply-adds); torch.utils.flop_counter's
    # FlopCounterMode counts 8,178,368,512 FLOPs for torchvision's resnet50 at 224.
    assert resnet.forward_flops_per_image(full, 224) == 8_178_368_512
    assert resnet.forward_flops_per_image(full, 224) == pytest.approx(2 * 4.09e9, rel=0.01)
    small = resnet.ResNetSpec((1, 1), (32, 64), stem_width=32)
    graphdef, variables = nnx.split(resnet.ResNet(small, rngs=nnx.Rngs(0)))
    images = jnp.zeros((4, 64, 64, 1))
    forward = jax.jit(lambda v, x: nnx.merge(graphdef, v)(x))
    cost = forward.lower(variables, images).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    # XLA also counts BatchNorm, ReLU, the pools and the adds, but leaves out the kernel taps that
    # fall on padding (PyTorch's counter and ours count them): 0.993 at 64 px.
    ratio = cost["flops"] / 4 / resnet.forward_flops_per_image(small, 64)
    assert 0.97 < ratio < 1.03


def test_observed_statistics_are_the_first_batch_norms_input_moments(fixture, state):
    """A training-mode forward records the batch mean and unbiased variance of each BN's input;
    the stem BN's input is the 7x7 stride-2 convolution, done here in numpy."""
    model = imported(state, spec())
    images = decode(fixture["swa_batches_u8"][0]).astype(np.float64)
    _, seen = batchnorm.observed(model, nhwc(images.astype(np.float32)))
    padded = np.pad(images, ((0, 0), (0, 0), (3, 3), (3, 3)))
    span = 2 * ((images.shape[-1] - 1) // 2 + 1)  # stride 2 over the padded image
    taps = [padded[:, :, i : i + span : 2, j : j + span : 2] for i in range(7) for j in range(7)]
    kernel = state["conv1.weight"].astype(np.float64).reshape(STEM, 3, 49)
    conv = np.einsum("nchwk,ock->nohw", np.stack(taps, axis=-1), kernel)
    np.testing.assert_allclose(seen["stem"]["bn"]["mean"], conv.mean(axis=(0, 2, 3)),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    np.testing.assert_allclose(seen["stem"]["bn"]["var"], conv.var(axis=(0, 2, 3), ddof=1),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    assert all(not n.training for _, n in batchnorm.named_batch_norms(model))  # evaluation again


def test_swa_average_and_statistics_pass_match_torchs_update_bn(fixture, state):
    """w1 then w2 into the SWA average (their mean), then the cumulative statistics pass over
    three batches: torch's AveragedModel + update_bn statistics and logits."""
    target = spec()
    w1, _, _ = resnet_import.variables_from_state_dict(state, target)
    moved = {k: v if _BUFFER.fullmatch(k) else v + perturbation(v.shape) for k, v in state.items()}
    w2, _, _ = resnet_import.variables_from_state_dict(moved, target)
    swa = averaging.AveragingSpec(swa=True, swa_start_step=1, swa_every_steps=1)
    averages = averaging.init_state(swa, w1)
    for step, weights in ((1, w1), (2, w2)):
        averages = averaging.update(swa, averages, weights, jnp.asarray(step), jax.random.key(0))
    assert int(averages["swa_count"]) == 2
    model = resnet.ResNet(target, rngs=nnx.Rngs(0))
    nnx.update(model, nnx.State(averages["swa"]))
    batches = [nhwc(decode(b)) for b in fixture["swa_batches_u8"]]
    running = batchnorm.cumulative_statistics(model, batches)
    checked = 0
    for path, value in flat(running).items():
        expected = fixture[f"swa.{resnet_import.torch_key(path)}"]
        np.testing.assert_allclose(value, expected, rtol=0, atol=1e-5, err_msg=str(path))
        checked += 1
    assert checked == 2 * 17  # every BatchNorm's mean and var
    nnx.update(model, nnx.State(running))
    logits = run(model, nhwc(decode(fixture["images_u8"])))
    np.testing.assert_allclose(logits, fixture["swa_logits"], rtol=0, atol=1e-5)


def _randomised_batch_norms(model, images) -> None:
    """Random BN affine parameters (timm zeroes each bn3's scale) and running statistics near
    the images' own (a train-mode pass at momentum 1, then jittered), so the logits are O(1)."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1 and not name.startswith("fc."):
                p.copy_(
                    0.5 + torch.rand_like(p)
                    if name.endswith("weight")
                    else 0.1 * torch.randn_like(p)
                )
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = 1.0
        model.train()(images)
        model.eval()
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.add_(0.1 * torch.randn_like(b))
            elif name.endswith("running_var"):
                b.mul_(0.8 + 0.4 * torch.rand_like(b))


@pytest.mark.skipif(
    not os.environ.get("ALZ_JAX_TORCH_PARITY"), reason="opt-in: needs torch, torchvision, timm"
)
def test_full_resnet50_matches_torchvision_and_timm():
    """Full-size ResNet-50 (random weights and BN statistics: nothing is downloaded) against
    torchvision's and timm's.

    Tolerance: 1e-5 absolute is out of reach at full size. Through 53 convolutions (sums of up
    to 4608 products) float32 rounding alone moves the logits (scale ~6) by ~3.5e-5: PyTorch's
    own float32 logits differ from its float64 ones by 3.6e-5 (torchvision) and 3.8e-5 (timm),
    and ours from PyTorch's float32 by 3.5e-5 and 3.4e-5 (5.5e-6 and 6.3e-6 of the logit scale;
    measured once). The bound is 2e-5 of the logit scale."""
    import timm
    import torch
    import torchvision

    torch.manual_seed(0)
    images = torch.randn(2, 3, 224, 224)
    full = resnet.spec_for("resnet50", in_chans=3, num_classes=1000)
    for model in (torchvision.models.resnet50(weights=None), timm.create_model("resnet50")):
        _randomised_batch_norms(model, images)
        with torch.no_grad():
            expected = model(images).numpy()
        sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
        logits = run(imported(sd, full), nhwc(images.numpy()))
        scale = np.abs(expected).max()
        np.testing.assert_allclose(logits, expected, rtol=0, atol=2e-5 * max(scale, 1.0))
