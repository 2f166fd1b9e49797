"""Fine-tune from the torchvision fixture with in_chans=1, export in every format, reload: the same
logits from each format and from the serialized function, at batch sizes 1 and 5."""

import json
import subprocess
import sys
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import pytest

from alz_jax.core import checkpointing, steps
from alz_jax.host.errors import UserError
from alz_jax.models import convert, convnext
from alz_jax.run import exporting, prediction, run_record, specs, train
from tests import tiny_config as tiny_config_file

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "convnext_tiny_torchvision.safetensors"
LR = 2e-3


@pytest.fixture(scope="module")
def finetuned(tiny_synthetic, tmp_path_factory):
    """A 2-step fine-tune of the fixture's weights (3 -> 1 channel, 10 -> 2 classes)."""
    root = tmp_path_factory.mktemp("finetune")
    config = tiny_config_file.get_config()
    config.data.manual_dir = str(tiny_synthetic[0])
    config.data.data_dir = str(root / "tfds")
    config.model.depths, config.model.dims = (1, 1, 1, 1), (8, 12, 16, 24)
    weights = root / "convnext_tiny_torchvision.safetensors"  # removed after training
    weights.write_bytes(FIXTURE.read_bytes())
    config.model.init_from = f"torchvision:{weights}"
    config.optim.layer_decay = 0.8
    config.optim.learning_rate = LR
    config.num_train_steps, config.warmup_steps, config.eval_every_steps = 2, 1, 2
    config.swa.enabled = False
    workdir = root / "workdir"
    report = train.train_and_evaluate(config, str(workdir))
    return workdir, config, report


def test_a_resume_does_not_need_the_weight_file_again(finetuned):
    workdir, config, report = finetuned
    config = config.copy_and_resolve_references()
    weights = Path(config.model.init_from.removeprefix("torchvision:"))
    weights.unlink()
    config.eval.bootstrap_samples = 0
    again = train.train_and_evaluate(config, str(workdir))  # resumes at the end: report only
    assert again["checkpoint_step"] == report["checkpoint_step"] == 2
    with pytest.raises(UserError, match="no such file"):
        train.train_and_evaluate(config, str(workdir.parent / "fresh"))


def test_finetuning_starts_from_the_imported_weights(finetuned):
    workdir, config, report = finetuned
    spec = prediction.load_model(str(workdir), "latest", "raw")["model"].spec
    imported, _ = convert.params_from_state_dict(
        convert.load_state_dict(str(FIXTURE)), spec, "torchvision", config.seed
    )
    trained = prediction.load_model(str(workdir), "latest", "raw")["params"]
    # Two AdamW steps move each weight by at most ~2 x the peak learning rate; the fixture's
    # weights are ~0.3 apart from a fresh initialisation's.
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), trained, imported)
    assert max(jax.tree.leaves(moved)) < 2.5 * LR
    fresh = convnext.init_params(spec, config.seed)
    assert (
        float(np.abs(fresh["stem"]["conv"]["kernel"] - imported["stem"]["conv"]["kernel"]).max())
        > 0.1
    )
    assert report["checkpoint_step"] == 2


@pytest.fixture(scope="module")
def exports(finetuned, tmp_path_factory):
    workdir, _, _ = finetuned
    out = tmp_path_factory.mktemp("exports")
    made = {
        fmt: exporting.export(str(workdir), fmt, output=str(out / fmt)) for fmt in exporting.FORMATS
    }
    made["bf16"] = exporting.export(str(workdir), "safetensors", dtype="bfloat16",
                                    output=str(out / "bf16"), platforms=("cpu",))  # fmt: skip
    return made


def images(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 1), np.uint8)


def test_every_format_and_the_serialized_function_give_the_same_logits(finetuned, exports):
    workdir, _, _ = finetuned
    loaded = prediction.load_model(str(workdir))
    params = loaded["params"]
    meta = json.loads((exports["npz"] / "metadata.json").read_text())
    spec = exporting.spec_from_metadata(meta)
    fn = jax.jit(exporting.inference_function(spec, **{k: meta["normalization"][k]
                                                       for k in ("mean", "std")}))  # fmt: skip
    reference_flat = exporting.flatten(jax.tree.map(np.asarray, params))
    predict_step = steps.make_predict_step(loaded["model"], loaded["pixel_stats"], loaded["mesh"])
    for n in (1, 5):
        x = images(n, n)
        expected = np.asarray(fn(reference_flat, x))
        # The project's own prediction path (8 devices, margins) agrees with the export's function.
        padded = np.concatenate([x, np.zeros((8 - n, 32, 32, 1), np.uint8)])
        margins = np.asarray(predict_step(params, padded))[:n]
        np.testing.assert_allclose(expected[:, 1] - expected[:, 0], margins, rtol=0, atol=1e-5)
        for fmt in exporting.FORMATS:
            flat, metadata = exporting.load(exports[fmt])
            assert metadata["weights"]["format"] == fmt
            np.testing.assert_array_equal(np.asarray(fn(flat, x)), expected, err_msg=fmt)
            np.testing.assert_array_equal(exporting.load_inference(exports[fmt])(x), expected, fmt)
    one, five = (np.asarray(fn(reference_flat, images(5, 5)[:k])) for k in (1, 5))
    np.testing.assert_allclose(one[0], five[0], rtol=0, atol=1e-5)


def test_bfloat16_export_stores_bfloat16_and_computes_the_same_as_reloaded(exports):
    flat, meta = exporting.load(exports["bf16"])
    assert {v.dtype for v in flat.values()} == {np.dtype(ml_dtypes.bfloat16)}
    assert meta["compute_dtype"] == "bfloat16" and meta["inference_function"]["platforms"] == [
        "cpu"
    ]
    f32, _ = exporting.load(exports["safetensors"])
    np.testing.assert_array_equal(
        flat["stem.conv.kernel"], f32["stem.conv.kernel"].astype(ml_dtypes.bfloat16)
    )
    spec = exporting.spec_from_metadata(meta)
    fn = jax.jit(exporting.inference_function(spec, meta["normalization"]["mean"],
                                              meta["normalization"]["std"]))  # fmt: skip
    for n in (1, 5):
        x = images(n, 10 + n)
        np.testing.assert_array_equal(exporting.load_inference(exports["bf16"])(x), fn(flat, x))


def test_metadata_carries_what_inference_needs(finetuned, exports):
    workdir, config, report = finetuned
    meta = json.loads((exports["safetensors"] / "metadata.json").read_text())
    from safetensors import safe_open

    with safe_open(exports["safetensors"] / "model.safetensors", "numpy") as f:
        assert json.loads(f.metadata()["alz_jax"]) == meta
    record = run_record.load(workdir)
    manager = checkpointing.make_manager(workdir, specs.resolve(config).checkpoint)
    selection = checkpointing.restore_selection(manager, report["checkpoint_step"])
    stored = selection["calibration"][selection["weights"]]
    assert meta["input"]["size"] == 32 and meta["input"]["shape"] == [32, 32, 1]
    assert meta["normalization"]["mean"] == record["pixel_stats"]["mean"]
    assert meta["normalization"]["std"] == record["pixel_stats"]["std"]
    assert meta["class_names"] == ["NC", "AD"]
    assert meta["calibration"]["thresholds"] == stored["thresholds"]
    assert meta["calibration"]["temperature"] == stored["temperature"]
    assert (
        meta["source"]["checkpoint_step"] == 2 and meta["source"]["weights"] == selection["weights"]
    )
    assert meta["model"]["dims"] == [8, 12, 16, 24] and meta["model"]["in_chans"] == 1
    assert meta["source"]["init_from"] == config.model.init_from
    assert meta["inference_function"]["platforms"] == ["cpu", "cuda", "tpu"]


def test_export_command_and_its_refusals(finetuned, tmp_path):
    workdir, _, _ = finetuned
    out = tmp_path / "cmd"
    cmd = [sys.executable, "-m", "alz_jax.export", f"--workdir={workdir}", "--format=npz",
           "--checkpoint=latest", "--weights=ema", f"--output={out}"]  # fmt: skip
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"Exported to {out}" in run.stdout
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["source"]["weights"] == "ema" and (out / "model.npz").exists()
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 2 and "exists and is not empty" in again.stderr
    with pytest.raises(UserError, match=r"expected one of safetensors\|npz\|orbax"):
        exporting.export(str(workdir), "onnx")
    with pytest.raises(UserError, match="holds no run"):
        exporting.export(str(tmp_path), "npz")
    with pytest.raises(UserError, match="not an alz_jax export"):
        exporting.load(tmp_path)
