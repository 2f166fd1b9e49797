"""Weight import: PyTorch's logits from torchvision, timm and FB layouts, the 1-channel stem, the
head, refusals that name the keys, safe file reading, and layer-wise learning-rate decay."""

import dataclasses
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from safetensors.numpy import save_file

from alz_jax.core import optim
from alz_jax.host.errors import UserError
from alz_jax.models import (
    convert,
    convnext,
    efficientnet_import,
    registry,
    resnet_import,
    vit_import,
)
from alz_jax.run import specs

FIXTURES = Path(__file__).parent / "fixtures"
WEIGHTS = FIXTURES / "convnext_tiny_torchvision.safetensors"
# The fixture's model (tests/fixtures/make_convnext_fixture.py).
DEPTHS, DIMS = (1, 1, 1, 1), (8, 12, 16, 24)


@pytest.fixture(scope="module")
def fixture():
    with np.load(FIXTURES / "convnext_tiny_fixture.npz", allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def torchvision_state():
    return convert.load_state_dict(str(WEIGHTS))


def spec(**kw):
    values = dict(in_chans=3, num_classes=10, depthwise="xla") | kw
    return convnext.ConvNeXtSpec(DEPTHS, DIMS, **values)


def renamed(state, fixture, layout):
    """The fixture's tensors under the names timm or FB give them (recorded by the fixture
    script and checked there by running timm)."""
    names = zip(fixture[f"{layout}_names"], fixture["torchvision_names"], strict=True)
    return {str(new): state[str(old)].reshape(-1) if str(new).endswith("gamma")
            else state[str(old)] for new, old in names}  # fmt: skip


def nhwc(images):
    return jnp.asarray(images.transpose(0, 2, 3, 1))


def test_fixture_is_small_and_made_by_its_script():
    sizes = [
        p.stat().st_size
        for p in FIXTURES.glob("convnext_*")
        if p.suffix in (".npz", ".safetensors")
    ]
    assert len(sizes) == 2 and sum(sizes) < 200_000
    assert (FIXTURES / "make_convnext_fixture.py").exists()


@pytest.mark.parametrize("layout", ["torchvision", "timm", "fb"])
@pytest.mark.parametrize("depthwise", ["xla", "shift"])
def test_imported_model_gives_pytorchs_logits(fixture, torchvision_state, layout, depthwise):
    state = (
        torchvision_state
        if layout == "torchvision"
        else renamed(torchvision_state, fixture, layout)
    )
    from_layout = {"torchvision": convert.from_torchvision, "timm": convert.from_timm,
                   "fb": convert.from_fb}[layout]  # fmt: skip
    model = from_layout(state, spec(depthwise=depthwise), in_chans=3, num_classes=10)
    logits = np.asarray(model(nhwc(fixture["images"])))
    np.testing.assert_allclose(logits, fixture["logits"], rtol=0, atol=1e-5)
    assert convert.detect_layout(state) == layout


def test_one_channel_stem_is_the_summed_kernel(fixture, torchvision_state):
    """A gray image repeated over RGB through PyTorch's 3-channel model = the gray image through
    the summed 1-channel stem."""
    model = convert.from_torchvision(torchvision_state, spec(in_chans=1))
    logits = np.asarray(model(nhwc(fixture["gray"])))
    np.testing.assert_allclose(logits, fixture["gray_logits"], rtol=0, atol=1e-5)
    params, notes = convert.params_from_state_dict(torchvision_state, spec(in_chans=1))
    np.testing.assert_allclose(
        params["stem"]["conv"]["kernel"][..., 0, :],
        torchvision_state["features.0.0.weight"].sum(1).transpose(1, 2, 0),
        rtol=1e-6,
    )
    assert any("summed" in n for n in notes)


def test_head_is_reinitialised_for_another_class_count(torchvision_state):
    target = spec(in_chans=1, num_classes=2)
    params, notes = convert.params_from_state_dict(torchvision_state, target, seed=5)
    fresh = convnext.init_params(target, 5)
    np.testing.assert_array_equal(params["head"]["fc"]["kernel"], fresh["head"]["fc"]["kernel"])
    np.testing.assert_array_equal(params["head"]["fc"]["bias"], np.zeros(2))
    # Everything else comes from the file: the head's LayerNorm and the last block included.
    np.testing.assert_array_equal(
        params["head"]["norm"]["scale"], torchvision_state["classifier.0.weight"]
    )
    np.testing.assert_array_equal(
        params["stages"][3][0]["pwconv2"]["kernel"],
        torchvision_state["features.7.0.block.5.weight"].T,
    )
    assert "head: re-initialised for 2 classes (the checkpoint's has 10)" in notes
    # A file saved without a classifier (timm's num_classes=0) gets a fresh head too.
    headless = {k: v for k, v in torchvision_state.items() if not k.startswith("classifier.2")}
    params, notes = convert.params_from_state_dict(headless, target, seed=5)
    np.testing.assert_array_equal(params["head"]["fc"]["kernel"], fresh["head"]["fc"]["kernel"])
    assert "head: initialised for 2 classes (the file has none)" in notes


def test_mismatches_are_refused_naming_the_keys(torchvision_state):
    with pytest.raises(convert.ConversionError, match=r"ConvNeXt depths \(1, 1, 1, 1\), dims "
                       r"\(8, 12, 16, 24\); the model is ConvNeXt tiny"):  # fmt: skip
        convert.from_torchvision(torchvision_state, "tiny")
    lacking = {k: v for k, v in torchvision_state.items() if k != "features.3.0.block.3.bias"}
    with pytest.raises(convert.ConversionError, match=r"lacks 1 tensor.*features\.3\.0\.block\.3"):
        convert.from_torchvision(lacking, spec())
    extra = dict(torchvision_state, **{"features.9.weight": np.zeros(3, np.float32)})
    with pytest.raises(convert.ConversionError, match=r"would not use.*features\.9\.weight"):
        convert.from_torchvision(extra, spec())
    wrong = dict(torchvision_state)
    wrong["features.1.0.block.3.weight"] = np.zeros((32, 9), np.float32)
    with pytest.raises(convert.ConversionError, match=r"features\.1\.0\.block\.3\.weight has "
                       r"shape \(32, 9\).*expects \(8, 32\)"):  # fmt: skip
        convert.from_torchvision(wrong, spec())
    with pytest.raises(convert.ConversionError, match="Not a ConvNeXt state dict"):
        convert.detect_layout({"conv1.weight": np.zeros(1)})
    stem = torchvision_state["features.0.0.weight"]
    with pytest.raises(convert.ConversionError, match="a 2-channel stem cannot be adapted to "
                       "in_chans=1"):  # fmt: skip
        convert.from_torchvision(dict(torchvision_state, **{"features.0.0.weight": stem[:, :2]}),
                                 spec(in_chans=1))  # fmt: skip


def test_files_are_read_safely_and_bad_files_are_named(tmp_path, torchvision_state):
    nested = tmp_path / "fb.npz"  # unwrapping and a DDP prefix; npz read without pickle
    np.savez(nested, **{f"module.{k}": v for k, v in torchvision_state.items()})
    loaded = convert.load_state_dict(str(nested))
    assert sorted(loaded) == sorted(torchvision_state)
    for name, content, message in [
        ("missing.safetensors", None, "does not exist"),
        ("cut.safetensors", WEIGHTS.read_bytes()[:1000], "Could not read weight file"),
        ("weights.h5", b"x", "unknown type '.h5'"),
    ]:
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(UserError, match=message) as info:
            convert.load_state_dict(str(path))
        assert str(path) in str(info.value)
    pickled = tmp_path / "object.npz"
    np.savez(pickled, a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(UserError, match="Could not read"):  # object arrays need pickle: refused
        convert.load_state_dict(str(pickled))


def test_bfloat16_safetensors_are_read(tmp_path, torchvision_state):
    """Checkpoints saved in bfloat16 (common for timm) import as their float32 values."""
    import ml_dtypes

    path = tmp_path / "bf16.safetensors"
    save_file({k: v.astype(ml_dtypes.bfloat16) for k, v in torchvision_state.items()}, path)
    params, _ = convert.params_from_state_dict(convert.load_state_dict(str(path)), spec())
    expected = torchvision_state["features.1.0.block.3.weight"].astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(
        params["stages"][0][0]["pwconv1"]["kernel"], expected.astype(np.float32).T
    )


def test_pytorch_files_need_torch_or_are_read_weights_only(tmp_path, torchvision_state):
    path = tmp_path / "convnext.pth"
    try:
        import torch
    except ImportError:
        path.write_bytes(b"PK\x03\x04")
        with pytest.raises(UserError, match=r"(?s)needs torch .*safetensors"):
            convert.load_state_dict(str(path))
        return
    torch.save({"model": {k: torch.from_numpy(v) for k, v in torchvision_state.items()}}, path)
    loaded = convert.load_state_dict(str(path))
    np.testing.assert_array_equal(
        loaded["classifier.2.bias"], torchvision_state["classifier.2.bias"]
    )


def test_init_from_config_is_checked_before_any_work(tmp_path):
    from alz_jax.configs import demo

    config = demo.get_config()
    config.model.init_from = "resnet:/x.pth"
    with pytest.raises(UserError, match="expected 'LAYOUT:PATH' with LAYOUT one of"):
        specs.resolve(config)
    config.model.init_from = f"torchvision:{tmp_path / 'none.safetensors'}"
    specs.resolve(config)  # a resume no longer needs the file: checked at a fresh start
    with pytest.raises(UserError, match="no such file"):
        specs.check_init_from_file(config.model.init_from)
    config.model.init_from = f"torchvision:{WEIGHTS}"
    config.optim.layer_decay = 1.5
    with pytest.raises(UserError, match=r"config.optim.layer_decay = 1.5"):
        specs.resolve(config)


def test_layer_decay_scales_follow_depth_from_the_head():
    params = convnext.init_params(convnext.ConvNeXtSpec((2, 1, 1, 1), DIMS), 0)
    scales = optim.layer_decay_scales(params, 0.5, convnext.layer_ids)
    # Layers: stem 0, stage-0 blocks 1-2, downsample 3, block 4, downsample 5, block 6,
    # downsample 7, block 8, head 9.
    assert scales["head"]["fc"]["kernel"] == 1.0
    assert scales["stages"][3][0]["gamma"] == 0.5
    assert scales["downsamples"][2]["conv"]["kernel"] == 0.5**2
    assert scales["stages"][0][1]["pwconv1"]["bias"] == 0.5**7
    assert scales["stages"][0][0]["norm"]["scale"] == 0.5**8
    assert scales["stem"]["conv"]["kernel"] == 0.5**9


def test_layer_decay_scales_the_whole_adamw_update():
    """With layer decay each parameter's update (Adam direction and weight decay) is its scale
    times the update without it: a per-layer learning rate."""
    params = convnext.init_params(convnext.ConvNeXtSpec(DEPTHS, DIMS), 0)
    grads = jax.tree.map(lambda p: jnp.cos(p * 7.0 + 1.0), params)
    cfg = optim.OptimSpec(grad_clip_norm=0.0, weight_decay=0.05, layer_decay=1.0)
    plain = optim.make_optimizer(cfg, optax.constant_schedule(1e-2))
    cfg = dataclasses.replace(cfg, layer_decay=0.7)
    decayed = optim.make_optimizer(cfg, optax.constant_schedule(1e-2), convnext.layer_ids)
    u_plain, _ = plain.update(grads, plain.init(params), params)
    u_decay, _ = decayed.update(grads, decayed.init(params), params)
    scales = optim.layer_decay_scales(params, 0.7, convnext.layer_ids)
    jax.tree.map(
        lambda a, b, s: np.testing.assert_allclose(b, a * s, rtol=1e-6, atol=1e-12),
        u_plain, u_decay, scales,
    )  # fmt: skip
    assert min(jax.tree.leaves(scales)) == pytest.approx(0.7**8)


@pytest.mark.skipif(
    not os.environ.get("ALZ_JAX_TORCH_PARITY"), reason="opt-in: make parity-torchvision"
)
def test_full_convnext_tiny_matches_torchvision(tmp_path):
    """Full-size ConvNeXt-T (random weights: nothing is downloaded) against torchvision."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.convnext_tiny(weights=None).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layer_scale" in name:
                p.copy_(0.5 + torch.rand_like(p))
        images = torch.randn(2, 3, 224, 224)
        expected = model(images).numpy()
    path = tmp_path / "convnext_tiny.pth"
    torch.save(model.state_dict(), path)
    state = convert.load_state_dict(str(path))
    for depthwise in ("xla", "shift"):
        ours = convert.from_torchvision(
            state,
            convnext.ConvNeXtSpec(
                *convnext.SIZES["tiny"], in_chans=3, num_classes=1000, depthwise=depthwise
            ),
        )
        logits = np.asarray(ours(nhwc(images.numpy())))
        np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5)
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()},
              tmp_path / "convnext_tiny.safetensors")  # fmt: skip
    from_safetensors = convert.load_state_dict(str(tmp_path / "convnext_tiny.safetensors"))
    assert sorted(from_safetensors) == sorted(state)


def _family_case(family: str, layout: str):
    """(state dict, spec, NCHW float32 images, expected logits) of a family's fixture."""
    fixture = dict(np.load(FIXTURES / f"{family}_tiny_fixture.npz", allow_pickle=False))
    file = {"huggingface": "vit_tiny_hf"}.get(layout, f"{family}_tiny_timm")
    state = convert.load_state_dict(str(FIXTURES / f"{file}.safetensors"))
    importer = {"vit": vit_import, "resnet": resnet_import,
                "efficientnet": efficientnet_import}[family]  # fmt: skip
    extra = {"vit": {"num_heads": 2},
             "efficientnet": {"strides": tuple(fixture.get("strides", ()))}}  # fmt: skip
    target = importer.spec_from_state_dict(state, layout, in_chans=3, num_classes=5,
                                           **extra.get(family, {}))  # fmt: skip
    if family == "resnet":  # the fixture stores its images as uint8 codes
        images = (fixture["images_u8"].astype(np.float32) - 127.5) / 64.0
    else:
        images = fixture["images"]
    expected = fixture["hf_logits" if layout == "huggingface" else "logits"]
    return state, target, images, expected


@pytest.mark.parametrize(
    ("family", "layout"),
    [("vit", "timm"), ("vit", "huggingface"), ("resnet", "torchvision"), ("resnet", "timm"),
     ("efficientnet", "timm")],
)  # fmt: skip
def test_every_family_imports_through_convert_with_the_source_logits(family, layout):
    """convert.from_timm / from_torchvision / from_huggingface reproduce the source framework's
    eval-mode logits (fixtures made by tests/fixtures/make_<family>_fixture.py) within 1e-5,
    and init_from reads the same file into (params, batch_stats) for a run."""
    state, target, images, expected = _family_case(family, layout)
    from_layout = getattr(convert, f"from_{layout}")
    model = from_layout(state, target, in_chans=3, num_classes=5)
    np.testing.assert_allclose(np.asarray(model(nhwc(images))), expected, rtol=0, atol=1e-5)
    params, stats, _ = convert.variables_from_state_dict(state, target, layout)
    fresh = jax.eval_shape(lambda: registry.init_variables(target, 0))
    assert jax.tree.structure((params, stats)) == jax.tree.structure(fresh)
    assert bool(stats) == (family != "vit")
    assert registry.family(target).name == family
    with pytest.raises(convert.ConversionError, match=r"read from the .* layouts, not 'fb'"):
        convert.variables_from_state_dict(state, target, "fb")


def test_model_names_select_full_size_specs_and_huggingface_eps():
    assert convert.spec_named("vit_base_patch16_224", 3, 1000) == registry.spec_from_name(
        "vit_b16", in_chans=3, num_classes=1000
    )
    assert registry.title(convert.spec_named("resnet50")) == "ResNet-50"
    assert registry.title(convert.spec_named("tiny")) == "ConvNeXt tiny"
    with pytest.raises(convert.ConversionError, match="expected a ConvNeXt size"):
        convert.spec_named("alexnet")
