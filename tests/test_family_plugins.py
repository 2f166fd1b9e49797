"""A model family is added by one registration: a toy two-convolution network registered here
passes the generic family checks (tests/test_families.py) and trains, evaluates and exports
through the same code as the built-in families, without any of it naming the toy."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alz_jax.host.errors import UserError, check_fields
from alz_jax.models import registry, weights_import
from alz_jax.models.family import Family, ModelSpec
from alz_jax.models.layers import head_dropout, pooled_map_target
from alz_jax.run import exporting, run_record, specs, train
from tests import test_families
from tests import tiny_config as tiny_config_file

WIDTH = 4
# conv1 3x3 1->4 (+ bias), conv2 3x3 4->8 (+ bias), head 8->2 (+ bias).
TOY_PARAMS = (9 * 1 * WIDTH + WIDTH) + (9 * WIDTH * 2 * WIDTH + 2 * WIDTH) + (2 * WIDTH * 2 + 2)


@dataclasses.dataclass(frozen=True)
class ToySpec(ModelSpec):
    """Two stride-2 3x3 convolutions and a linear head; the common fields from ModelSpec."""

    width: int = WIDTH

    def __post_init__(self):
        check_fields("model", [("width", self.width, self.width >= 1, ">= 1"),
                               *self.common_checks()])  # fmt: skip


class ToyNet(nnx.Module):
    """conv 3x3/2, ReLU, conv 3x3/2, ReLU, mean pool, head dropout, linear (float32 logits)."""

    def __init__(self, spec: ToySpec, *, rngs: nnx.Rngs):
        self.spec = spec
        common = dict(dtype=spec.dtype, param_dtype=spec.param_dtype, rngs=rngs)
        self.conv1 = nnx.Conv(spec.in_chans, spec.width, (3, 3), strides=2, **common)
        self.conv2 = nnx.Conv(spec.width, 2 * spec.width, (3, 3), strides=2, **common)
        self.head = nnx.Linear(2 * spec.width, spec.num_classes, dtype=jnp.float32,
                               param_dtype=spec.param_dtype, rngs=rngs)  # fmt: skip

    def feature_map(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.conv1(x.astype(self.spec.dtype)))
        return jax.nn.relu(self.conv2(x))

    def __call__(self, x: jax.Array, *, sample_keys: jax.Array | None = None) -> jax.Array:
        pooled = jnp.mean(self.feature_map(x).astype(jnp.float32), axis=(1, 2))
        return self.head(head_dropout(pooled, self.spec.head_dropout, sample_keys))


def _toy_layer_ids(params: dict) -> tuple[dict, int]:
    order = {"conv1": 0, "conv2": 1, "head": 2}
    return jax.tree_util.tree_map_with_path(lambda p, _: order[p[0].key], params), 3


def _toy_flops(spec: ToySpec, resolution: int) -> float:
    side1, side2 = (resolution + 1) // 2, (resolution + 3) // 4
    macs = side1**2 * 9 * spec.in_chans * spec.width + side2**2 * 9 * 2 * spec.width**2
    return 2.0 * (macs + 2 * spec.width * spec.num_classes)


TOY = Family(
    name="toy",
    spec_type=ToySpec,
    module=ToyNet,
    names={"toy_cnn": "small"},
    spec_for=lambda variant, **fields: ToySpec(**fields),
    layer_ids=_toy_layer_ids,
    presets=lambda spec: {"head": r"head/.*", "last_stage": r"(conv2/|head/).*"},
    forward_flops=_toy_flops,
    title=lambda spec: f"Toy CNN, width {spec.width}",
    gradcam_target=pooled_map_target(lambda net, f: net.head(jnp.mean(f, axis=(1, 2)))),
    test_config={"name": "toy_cnn", "arch": {"width": WIDTH}},
)


@pytest.fixture
def toy():
    """The toy family, registered for one test."""
    registry.register(TOY)
    yield TOY
    registry.unregister(TOY.name)


def test_model_name_accepts_a_family_while_it_is_registered(toy):
    config = test_families.config_for("toy")
    assert isinstance(specs.resolve(config).model, ToySpec)
    with pytest.raises(ValueError, match="already registered"):
        registry.register(toy)
    # A spec type under another family's would make `registry.family(spec)` ambiguous.
    subclass = type("ToySubSpec", (ToySpec,), {})
    with pytest.raises(ValueError, match=r"already registered \(\['toy'\]\)"):
        registry.register(dataclasses.replace(toy, name="toy2", names={}, spec_type=subclass))
    registry.unregister("toy")
    with pytest.raises(UserError, match=r"config\.model\.name = 'toy_cnn': expected one of"):
        specs.resolve(config)
    registry.register(toy)  # for the fixture's teardown


@pytest.mark.parametrize(
    "check",
    [
        test_families.check_contract,
        test_families.check_layer_decay,
        test_families.check_gradcam,
        lambda family: test_families.check_frozen_parameters(family, "head"),
    ],
    ids=["contract", "layer_decay", "gradcam", "frozen_parameters"],
)
def test_the_generic_family_checks_cover_a_registered_toy(toy, check):
    check("toy")


def test_a_family_without_weight_import_refuses_weights_by_name(toy):
    spec = registry.spec_from_name("toy_cnn")
    with pytest.raises(UserError, match=r"Toy CNN, width 4 weights are read from the"):
        weights_import.variables_from_state_dict({}, spec, "timm")


def test_a_registered_toy_trains_evaluates_and_exports(toy, tiny_synthetic, tmp_path):
    manual_dir, summary = tiny_synthetic
    config = test_families.with_test_model(tiny_config_file.get_config(), "toy")
    config.data.manual_dir = str(manual_dir)
    config.data.data_dir = str(tmp_path / "tfds")
    config.num_train_steps = 2
    config.eval.bootstrap_samples = 20
    workdir = tmp_path / "w"
    report = train.train_and_evaluate(config, str(workdir))

    assert report["checkpoint_step"] == 2  # both steps ran and the last was evaluated
    saved = json.loads((workdir / "report_test.json").read_text())
    test_images = sum(c["images"] for c in summary["test"].values())
    assert saved["slice"]["n"] == report["slice"]["n"] == test_images
    assert saved["subject"]["n"] == sum(c["subjects"] for c in summary["test"].values())
    record = run_record.load(str(workdir))
    assert record["identity"]["model"]["family"] == "toy"
    assert record["identity"]["model"]["width"] == WIDTH

    out = exporting.export(str(workdir), "safetensors", "latest", "raw",
                           output=str(tmp_path / "export"))  # fmt: skip
    model = json.loads((out / exporting.METADATA_FILE).read_text())["model"]
    assert model["architecture"] == "Toy CNN, width 4" and model["family"] == "toy"
    assert model["parameters"] == TOY_PARAMS == registry.count_params(ToySpec())
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 1), dtype=np.uint8)
    logits = np.asarray(exporting.load_inference(str(out))(images))
    assert logits.shape == (3, 2) and np.all(np.isfinite(logits))
