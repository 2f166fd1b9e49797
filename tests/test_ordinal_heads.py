"""The classification heads (`model.head`, models/heads.py): CORAL's and CORN's losses,
probabilities and decisions against NumPy references written from the papers' formulas, CORAL's
bias initialisation and rank consistency, every family and a scan model with either ordinal
head through one real train step, the softmax head unchanged, the refusals, and a fresh ordinal
head on imported weights."""

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from alz_jax.core import sharding, steps
from alz_jax.data import preprocess
from alz_jax.host.errors import UserError
from alz_jax.models import convert, heads, registry, resnet, resnet_import, scan
from tests import tiny_config

K = 4
STATS = {"mean": 0.25, "std": 0.3}


# ---- NumPy references from the papers (hard labels; soft targets are mixtures of them). ----


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


def coral_ref_loss(z: np.ndarray, y: int) -> float:
    """Cao et al. 2020, eq. 4 with unit task weights: -sum_k [y_k log s_k + (1-y_k) log(1-s_k)],
    y_k = [y > k]."""
    s = _sigmoid(z)
    levels = (y > np.arange(len(z))).astype(np.float64)
    return float(-np.sum(levels * np.log(s) + (1 - levels) * np.log(1 - s)))


def corn_ref_loss(z: np.ndarray, y: int) -> float:
    """Shi et al. 2021: the binary cross-entropies of the tasks k whose conditional training
    subset {y > k - 1} holds the example, task k's label [y > k]."""
    total = 0.0
    for k, zk in enumerate(z):
        if y > k - 1:
            s = _sigmoid(zk)
            total -= np.log(s) if y > k else np.log(1 - s)
    return float(total)


def coral_ref_probs(z: np.ndarray) -> np.ndarray:
    """P(y = k) = P(y > k - 1) - P(y > k), negatives clipped to 0, renormalised."""
    cum = np.concatenate([[1.0], _sigmoid(z), [0.0]])
    p = np.clip(cum[:-1] - cum[1:], 0.0, None)
    return p / p.sum()


def corn_ref_probs(z: np.ndarray) -> np.ndarray:
    """P(y > k) = prod_{j <= k} sigmoid(z_j); P(y = k) = P(y > k - 1) - P(y > k)."""
    cum = np.concatenate([[1.0], np.cumprod(_sigmoid(z)), [0.0]])
    return cum[:-1] - cum[1:]


REFERENCES = {"coral": (coral_ref_loss, coral_ref_probs), "corn": (corn_ref_loss, corn_ref_probs)}


def ref_soft_loss(name: str, z: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-example loss of soft targets: the targets' mixture of the hard-label losses."""
    hard = REFERENCES[name][0]
    return np.array([sum(t[j] * hard(row, j) for j in range(len(t)) if t[j])
                     for row, t in zip(z, targets, strict=True)])  # fmt: skip


def ref_predicted(name: str, z: np.ndarray) -> np.ndarray:
    """CORAL: sum_k [sigmoid(z_k) > 0.5]; CORN: sum_k [prod_{j <= k} sigmoid(z_j) > 0.5]."""
    s = _sigmoid(z)
    return np.sum((np.cumprod(s, -1) if name == "corn" else s) > 0.5, axis=-1)


def logits(seed: int, rows: int = 12, scale: float = 2.0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=(rows, K - 1)) * scale).astype(np.float32)


# ---- Losses, probabilities, decisions. ----


@pytest.mark.parametrize("name", ["coral", "corn"])
def test_losses_match_the_papers_for_hard_labels_and_mixtures(name):
    head = heads.get(name)
    z = logits(1)
    labels = np.arange(len(z)) % K
    got = np.asarray(head.loss(jnp.asarray(z), jax.nn.one_hot(labels, K)))
    want = [REFERENCES[name][0](row, y) for row, y in zip(z, labels, strict=True)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # A Mixup pair: the loss of lam * onehot(a) + (1 - lam) * onehot(b) is the same mix.
    other = (labels + 2) % K
    lam = np.linspace(0.1, 0.9, len(z))[:, None].astype(np.float32)
    mixed = lam * np.eye(K)[labels] + (1 - lam) * np.eye(K)[other]
    got = np.asarray(head.loss(jnp.asarray(z), jnp.asarray(mixed, jnp.float32)))
    np.testing.assert_allclose(got, ref_soft_loss(name, z, mixed), rtol=1e-5, atol=1e-6)


def test_corn_loss_is_coral_pytorchs_up_to_the_number_of_task_examples():
    z, labels = logits(2), np.array([0, 1, 2, 3] * 3)
    per_example = heads.get("corn").loss(jnp.asarray(z), jax.nn.one_hot(labels, K))
    # coral-pytorch's corn_loss: the batch's summed BCEs / the (example, task) pairs; an
    # example of class y is in tasks 0..min(y, K - 2).
    pairs = np.sum(np.minimum(labels + 1, K - 1))
    torch_style = sum(corn_ref_loss(row, y) for row, y in zip(z, labels, strict=True)) / pairs
    assert float(per_example.sum()) / pairs == pytest.approx(torch_style, rel=1e-5)


@pytest.mark.parametrize("name", ["coral", "corn"])
def test_probabilities_and_decisions_match_the_references(name):
    head = heads.get(name)
    z = logits(3, rows=64, scale=3.0)
    probs = np.asarray(head.class_probs(jnp.asarray(z)))
    np.testing.assert_allclose(probs, [REFERENCES[name][1](r) for r in z], rtol=1e-5, atol=1e-6)
    # log_probs clips at a tiny probability (CORAL's clipped 0s): exp gives it back.
    np.testing.assert_allclose(np.exp(head.log_probs(jnp.asarray(z))), probs, rtol=1e-5, atol=1e-30)
    got = np.asarray(head.predicted(jnp.asarray(z)))
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, ref_predicted(name, z))
    assert set(got) == set(range(K))  # every decision reached: the test sees them all


def test_the_decisions_of_hand_worked_logits():
    z = jnp.asarray([[2.0, 0.5, -1.0], [-3.0, -4.0, -5.0], [5.0, 4.0, 3.0], [2.0, -3.0, 5.0]])
    # CORAL counts the thresholds passed: 2, 0, 3 and (2 > 0, 5 > 0) 2.
    assert heads.get("coral").predicted(z).tolist() == [2, 0, 3, 2]
    # CORN multiplies the conditionals: the last row's P(y > 1) = s(2) s(-3) = 0.04 < 0.5.
    assert heads.get("corn").predicted(z).tolist() == [2, 0, 3, 1]
    assert heads.get("softmax").predicted(z).tolist() == [0, 0, 0, 2]


@pytest.mark.parametrize("name", ["coral", "corn"])
def test_probabilities_are_a_distribution_for_arbitrary_logits(name):
    head = heads.get(name)
    rng = np.random.default_rng(4)
    # Extreme and unordered logits (CORAL's differences go negative: clipped, renormalised).
    z = np.concatenate([rng.normal(size=(200, K - 1)) * 30,
                        [[-1e4, 0.0, 1e4], [1e4, 1e4, 1e4], [-1e4, -1e4, -1e4],
                         [-5.0, 0.0, 5.0]]]).astype(np.float32)  # fmt: skip
    probs = np.asarray(head.class_probs(jnp.asarray(z)))
    assert probs.shape == (len(z), K)
    assert (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-6)
    assert np.isfinite(np.asarray(head.log_probs(jnp.asarray(z)))).all()
    assert np.isfinite(
        np.asarray(head.loss(jnp.asarray(z), jax.nn.one_hot(np.zeros(len(z), int), K)))
    ).all()


def test_corals_probabilities_clip_the_negative_differences():
    # Increasing logits: P(y > 0) < P(y > 2), so P(y = 1) and P(y = 2) would be negative.
    probs = np.asarray(heads.get("coral").class_probs(jnp.asarray([[-5.0, 0.0, 5.0]])))[0]
    s = _sigmoid([-5.0, 0.0, 5.0])
    raw = np.array([1 - s[0], s[0] - s[1], s[1] - s[2], s[2]])
    assert (raw[1:3] < 0).all()
    np.testing.assert_allclose(probs, np.clip(raw, 0, None) / np.clip(raw, 0, None).sum(),
                               rtol=1e-5)  # fmt: skip
    assert probs[1] == 0.0 and probs[2] == 0.0


def test_softmax_head_is_todays_cross_entropy_exactly():
    z = jnp.asarray(np.random.default_rng(5).normal(size=(16, 5)) * 2, jnp.float32)
    labels = jnp.asarray(np.arange(16) % 5)
    old = optax.softmax_cross_entropy(
        z.astype(jnp.float32), optax.smooth_labels(jax.nn.one_hot(labels, 5), 0.1)
    )
    assert steps.StepSpec().head == "softmax"
    np.testing.assert_array_equal(steps.cross_entropy(z, labels, 0.1, "softmax"), old)
    np.testing.assert_array_equal(steps.cross_entropy(z, labels, 0.1), old)
    targets = jax.nn.one_hot((labels + 1) % 5, 5)
    np.testing.assert_array_equal(heads.get("softmax").loss(z, targets),
                                  optax.softmax_cross_entropy(z, targets))  # fmt: skip
    np.testing.assert_array_equal(heads.get("softmax").predicted(z), jnp.argmax(z, -1))
    assert heads.get("softmax").num_outputs(5) == 5 and heads.get("corn").num_outputs(5) == 4


# ---- CORAL's layer: bias initialisation and rank consistency. ----


def coral_layer(in_features: int = 6, num_classes: int = K, seed: int = 0) -> nnx.Module:
    return heads.get("coral").layer(
        in_features, num_classes, rngs=nnx.Rngs(seed),
        kernel_init=nnx.initializers.lecun_normal(), bias_init=nnx.initializers.zeros_init(),
        dtype=jnp.float32, param_dtype=jnp.float32,
    )  # fmt: skip


def test_corals_biases_start_as_coral_pytorchs_preinit_bias():
    layer = coral_layer(num_classes=5)
    # coral-pytorch: torch.arange(num_classes - 1, 0, -1).float() / (num_classes - 1).
    np.testing.assert_allclose(layer.bias.value, [1.0, 0.75, 0.5, 0.25])
    assert layer.kernel.value.shape == (6, 1)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 6)), jnp.float32)
    np.testing.assert_allclose(layer(x), x @ layer.kernel.value + layer.bias.value, rtol=1e-6)


def test_coral_is_rank_consistent_for_any_input_with_ordered_biases():
    layer = coral_layer()
    rng = np.random.default_rng(7)
    head = heads.get("coral")
    for trial in range(20):
        layer.kernel.value = jnp.asarray(rng.normal(size=(6, 1)) * 10, jnp.float32)
        layer.bias.value = jnp.asarray(-np.sort(-rng.normal(size=K - 1) * 3), jnp.float32)
        x = jnp.asarray(rng.normal(size=(256, 6)) * 10 ** (trial % 4), jnp.float32)
        exceed = np.asarray(head.exceed_probs(layer(x)))
        assert (np.diff(exceed, axis=-1) <= 0).all(), trial


def test_gradient_descent_orders_corals_biases():
    # The paper's theorem: at the loss's minimum the biases are non-increasing. Start them
    # increasing (the wrong order) and train the layer on a tiny problem.
    rng = np.random.default_rng(8)
    x = jnp.asarray(rng.normal(size=(400, 6)), jnp.float32)
    y = np.clip(np.round(np.asarray(x[:, 0]) + rng.normal(size=400) * 0.8 + 1.5), 0, K - 1)
    targets = jax.nn.one_hot(y.astype(int), K)
    layer = coral_layer()
    layer.bias.value = jnp.asarray([-1.0, 0.0, 1.0])
    graphdef, state = nnx.split(layer)
    head = heads.get("coral")

    def loss(state):
        return head.loss(nnx.merge(graphdef, state)(x), targets).mean()

    @jax.jit
    def step(state):
        value, grads = jax.value_and_grad(loss)(state)
        return jax.tree.map(lambda p, g: p - 0.5 * g, state, grads), value

    first = None
    for _ in range(300):
        state, value = step(state)
        first = value if first is None else first
    bias = np.asarray(nnx.merge(graphdef, state).bias.value)
    assert (np.diff(bias) < 0).all(), bias
    assert float(loss(state)) < 0.8 * float(first)


# ---- Every family and a scan model through one real train step. ----


def family_spec(family: str, head: str, num_classes: int = K):
    config = tiny_config.get_config()
    config.model.arch = {}
    for key, value in registry.FAMILIES[family].test_config.items():
        config.model[key] = value
    config.model.head = head
    return registry.spec_from_config(
        config.model, in_chans=1, num_classes=num_classes, drop_path_rate=0.0,
        head_dropout=0.0, dtype="float32", param_dtype="float32", depthwise="xla",
        image_size=32,
    )  # fmt: skip


def families() -> list[str]:
    return sorted(name for name, fam in registry.FAMILIES.items() if fam.names)


def train_batch(bags: bool) -> dict:
    rng = np.random.default_rng(9)
    shape = (8, 2, 32, 32, 1) if bags else (8, 32, 32, 1)
    batch = {"image": rng.integers(0, 256, shape, np.uint8),
             "label": (np.arange(8) % K).astype(np.int32)}  # fmt: skip
    if bags:
        batch["slice_mask"] = np.ones((8, 2), np.int32)
        batch["positions"] = np.tile(np.arange(2, dtype=np.int32), (8, 1))
    return batch


CASES = [(f, h) for f in [*families(), "scan"] for h in ("coral", "corn")]


@pytest.mark.parametrize(("family", "head"), CASES)
def test_every_family_trains_a_step_with_the_reference_loss(family, head):
    if family == "scan":
        spec = scan.scan_spec(family_spec("convnext", head), "mean")
    else:
        spec = family_spec(family, head)
    assert spec.head == head and spec.num_outputs == K - 1
    model = steps.make_model(spec)
    mesh = sharding.make_mesh()
    tx = optax.sgd(0.1)
    step_spec = steps.StepSpec(head=head, label_smoothing=0.1, seed=3)
    step = steps.make_train_step(model, tx, optax.constant_schedule(0.1), step_spec, STATS, mesh)
    state = steps.create_train_state(spec, tx, mesh, seed=0)
    params, stats = jax.device_get(state["params"]), jax.device_get(state.get("batch_stats", {}))
    batch = train_batch(bags=family == "scan")
    placed = {k: jax.device_put(v, sharding.batch_sharded(mesh)) for k, v in batch.items()}
    _, metrics = step(state, placed)
    # The logits the step saw: training mode, the global batch (no stochastic part is on).
    images = preprocess.normalize(batch["image"], STATS["mean"], STATS["std"])
    extra = {k: batch[k] for k in steps.BAG_INPUTS if k in batch}
    z, _ = model.train_apply(params, stats, jnp.asarray(images), None, None, **extra)
    z = np.asarray(z)
    assert z.shape == (8, K - 1)
    targets = np.eye(K)[batch["label"]] * 0.9 + 0.1 / K
    want = ref_soft_loss(head, z, targets).mean()
    assert float(metrics["loss"]) == pytest.approx(want, rel=1e-5)
    accuracy = np.mean(ref_predicted(head, z) == batch["label"])
    assert float(metrics["accuracy"]) == pytest.approx(accuracy)
    # The classifier sits where the softmax one did: the 'head' preset and the last layer id.
    classifier = "encoder/head/fc" if family == "scan" else CLASSIFIERS[family]
    preset = re.compile(registry.trainable_pattern(spec, "head"))
    ids, layers = registry.layer_ids(spec, params)
    found = {"/".join(str(getattr(k, "key", k)) for k in path): (leaf, layer_id)
             for (path, leaf), layer_id in zip(jax.tree_util.tree_leaves_with_path(params),
                                               jax.tree.leaves(ids), strict=True)}  # fmt: skip
    width = (1,) if head == "coral" else (K - 1,)
    assert found[f"{classifier}/kernel"][0].shape[1:] == width
    assert found[f"{classifier}/bias"][0].shape == (K - 1,)
    for name in ("kernel", "bias"):
        assert preset.fullmatch(f"{classifier}/{name}")
        assert found[f"{classifier}/{name}"][1] == layers - 1


# Each family's classifier (a softmax run's, and now the ordinal head's) parameter path.
CLASSIFIERS = {"convnext": "head/fc", "resnet": "head/fc", "simple_cnn": "head/fc",
               "efficientnet": "classifier", "vit": "head"}  # fmt: skip


# ---- Refusals and weight import. ----


def test_an_ordinal_head_of_two_classes_is_refused():
    with pytest.raises(UserError) as e:
        family_spec("resnet", "coral", num_classes=2)
    message = str(e.value)
    assert "config.model.head = 'coral'" in message
    assert "ordinal heads need at least three ordered classes" in message
    assert "model.head=softmax" in message
    assert family_spec("resnet", "corn", num_classes=3).num_outputs == 2


def test_an_unknown_head_is_refused_with_the_choices():
    with pytest.raises(UserError, match=r"config\.model\.head = 'ordinal': expected "
                                        r"softmax\|coral\|corn"):  # fmt: skip
        family_spec("simple_cnn", "ordinal")
    with pytest.raises(UserError, match=r"config\.model\.head = 'ordinal'"):
        heads.get("ordinal")
    with pytest.raises(UserError, match=r"config\.model\.head = 'ordinal'"):
        steps.StepSpec(head="ordinal")


def test_imported_weights_get_a_fresh_ordinal_head():
    fixtures = Path(__file__).parent / "fixtures"
    state = convert.load_state_dict(str(fixtures / "resnet_tiny_timm.safetensors"))
    # The file's classifier has 5 classes: a 6-class CORN head has 5 outputs, the same shape,
    # and must still not take them (they are softmax logits).
    for head, classes, shape in (("corn", 6, (40, 5)), ("coral", 5, (40, 1))):
        target = resnet.ResNetSpec((1, 1, 1, 1), (4, 6, 8, 10), stem_width=8, in_chans=1,
                                   num_classes=classes, head=head)  # fmt: skip
        params, _, notes = resnet_import.variables_from_state_dict(state, target, seed=5)
        fresh = resnet.init_params(target, 5)["head"]["fc"]
        assert params["head"]["fc"]["kernel"].shape == shape
        np.testing.assert_array_equal(params["head"]["fc"]["kernel"], fresh["kernel"])
        np.testing.assert_array_equal(params["head"]["fc"]["bias"], fresh["bias"])
        assert any(f"initialised fresh for model.head={head}" in n and "fc.weight" in n
                   for n in notes), notes  # fmt: skip
        np.testing.assert_array_equal(
            params["stages"][3][0]["conv3"]["kernel"],
            state["layer4.0.conv3.weight"].transpose(2, 3, 1, 0),
        )
    np.testing.assert_allclose(params["head"]["fc"]["bias"], [1.0, 0.75, 0.5, 0.25])
