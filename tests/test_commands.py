"""The command surface: --config by path or name from any folder, the mission command's default
workdir and its message without ADNI, and the synthetic-set command."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from alz_jax.host import command
from alz_jax.host.errors import UserError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def run_command(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """`python -m alz_jax.<args>` from `cwd`, the project importable as an install would make
    it, one CPU device, no huge-page restart (it would only double the start-up here)."""
    env = dict(os.environ, PYTHONPATH=str(REPO), XLA_FLAGS="", ALZ_JAX_HUGE_PAGES="off", **env)
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300, check=False)  # fmt: skip


def test_config_is_found_by_path_or_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert command.available_configs() == [
        "convnext_t", "convnext_t_resplit", "demo", "demo_resnet", "efficientnet_b0_finetune",
        "resnet50_finetune", "scan_convnext_t", "scan_demo", "stages_convnext_t", "stages_corn",
        "stages_demo", "stages_simple_cnn", "vit_b16_finetune", "volumes_demo",
    ]  # fmt: skip
    for value in ("demo", "demo.py", "configs/demo.py"):
        assert command.find_config(value) == str(CONFIGS / "demo.py"), value
    assert command.find_config("demo:arg") == f"{CONFIGS / 'demo.py'}:arg"
    own = tmp_path / "mine.py"
    own.write_text("def get_config():\n    return {}\n")
    assert command.find_config("mine.py") == "mine.py"  # an existing file: as given
    monkeypatch.chdir(REPO)
    assert command.find_config("configs/demo.py") == "configs/demo.py"
    # A path elsewhere is not silently replaced by the project's config of the same name.
    assert command.find_config(str(tmp_path / "other" / "demo.py")) is None
    assert command.find_config(str(tmp_path / "configs" / "demo.py")) is None
    for missing in ("nope", "__init__", "configs/nope.py", "demo.txt"):
        assert command.find_config(missing) is None, missing
    with pytest.raises(UserError, match=r"no config of that name .*convnext_t, .*demo"):
        command.resolve_config("nope")


def test_config_argument_is_resolved_and_overrides_are_left_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["prog", "--config=convnext_t", "--config.data.manual_dir=/d", "--workdir=w"]
    assert command.resolve_config_argv(argv) == [
        "prog", f"--config={CONFIGS / 'convnext_t.py'}", "--config.data.manual_dir=/d",
        "--workdir=w",
    ]  # fmt: skip
    assert command.resolve_config_argv(["prog", "--config", "demo", "--", "--config=x"]) == [
        "prog", "--config", str(CONFIGS / "demo.py"), "--", "--config=x",
    ]  # fmt: skip
    # It imports its base, alz_jax.configs.convnext_t.
    loaded = command.load_config("convnext_t_resplit")
    assert loaded.data.protocol == "resplit" and loaded.model.size == "tiny"


def test_mission_command_defaults_the_workdir_and_says_where_adni_goes(tmp_path):
    # As the README writes it, from a folder without the project: stops before any compile.
    result = run_command(["alz_jax.main", "--config=configs/convnext_t.py"], tmp_path,
                         HOME=str(tmp_path), JAX_LOG_COMPILES="1")  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stdout.splitlines()[0] == "workdir: runs/convnext_t"
    assert "error: No data folder given: set --config.data.manual_dir=DIR" in result.stderr
    assert "AD_NC/{train,test}/{AD,NC}/<scanID>_<slice>.jpeg" in result.stderr
    assert "adni.loni.usc.edu" in result.stderr and "--config=configs/demo.py" in result.stderr
    # Its line, a one-line hint and the demo: not the ~20 lines of ADNI instructions.
    error = result.stderr[result.stderr.index("error: ") :].strip().splitlines()
    assert len(error) == 3 and "cannot be downloaded automatically" not in result.stderr
    assert "Traceback" not in result.stderr
    assert "Compiling" not in result.stderr  # JAX_LOG_COMPILES logs every compile
    unknown = run_command(["alz_jax.main", "--config=convnext"], tmp_path, HOME=str(tmp_path))
    assert unknown.returncode == 2
    assert "--config=convnext: no such file" in unknown.stderr
    assert "convnext_t, convnext_t_resplit, demo" in unknown.stderr


def test_synthetic_command_writes_the_adni_layout(tmp_path):
    out = tmp_path / "synthetic"
    result = run_command(["alz_jax.synthetic", f"--out={out}", "--seed=4", "--train_subjects=2",
                          "--test_subjects=1"], tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    images = sum(c["images"] for split in ("train", "test") for c in summary[split].values())
    assert images == len(list(out.glob("AD_NC/*/*/*.jpeg"))) > 0
    assert (out / "meta_data_with_label.json").is_file()
