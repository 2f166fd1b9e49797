"""Performance plumbing (no timings): the persistent compilation cache, the FLOP count, the
profiler's per-op breakdown and the `step` benchmark's report."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from alz_jax.host import profiling
from alz_jax.models import convnext
from tests.xla_flags import ONE_DEVICE_XLA_FLAGS

REPO = Path(__file__).resolve().parent.parent

_CACHED_RUN = """
from alz_jax.host import compilation_cache
print(compilation_cache.enable(min_compile_secs=0.0))
import jax, jax.numpy as jnp
print(float(jax.jit(lambda x: jnp.sin(x) @ x.T)(jnp.ones((64, 64))).sum()))
"""


def _run_python(code, env):
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env, check=True
    )
    return out.stdout.split()


def test_compilation_cache_is_on_by_default_and_reused(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "ALZ_JAX_COMPILE_CACHE"}
    env["HOME"] = os.fspath(tmp_path)  # the default folder is under ~
    first = _run_python(_CACHED_RUN, env)
    default = tmp_path / ".cache" / "alz_jax" / "xla"
    assert first[0] == os.fspath(default)
    entries = sorted(p.name for p in default.iterdir())
    assert entries, "the first run wrote no cache entry"
    second = _run_python(_CACHED_RUN, env)
    assert second == first
    assert sorted(p.name for p in default.iterdir()) == entries  # loaded, not compiled again
    moved = tmp_path / "elsewhere"
    env["ALZ_JAX_COMPILE_CACHE"] = os.fspath(moved)
    assert _run_python(_CACHED_RUN, env)[0] == os.fspath(moved) and any(moved.iterdir())
    env["ALZ_JAX_COMPILE_CACHE"] = "off"
    assert _run_python(_CACHED_RUN, env)[0] == "None"


def test_flops_match_the_published_convnext_t_count_and_xla_cost_analysis():
    tiny = convnext.ConvNeXtSpec(*convnext.SIZES["tiny"], in_chans=3, num_classes=1000)
    # 4.5 G multiply-adds per 224 px image (Liu et al. 2022, Table 1); 3x for training.
    assert convnext.forward_flops_per_image(tiny, 224) == pytest.approx(8.91e9, rel=0.005)
    assert convnext.train_flops_per_image(tiny, 224) == pytest.approx(26.73e9, rel=0.005)
    spec = convnext.ConvNeXtSpec((1, 2), (192, 384), in_chans=1, depthwise="xla")
    from alz_jax.core import steps

    model, params = steps.make_model(spec), convnext.init_params(spec, 0)
    images = jnp.zeros((4, 64, 64, 1))
    cost = jax.jit(model.apply).lower(params, images).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    # XLA also counts norms, GELU and adds: 5% more at this width (50% more at widths 16-32).
    ratio = cost["flops"] / 4 / convnext.forward_flops_per_image(spec, 64)
    assert 1.0 < ratio < 1.08


def test_op_breakdown_attributes_time_to_the_traced_ops(tmp_path):
    f = jax.jit(lambda a, b: jnp.tanh(a @ b).sum(axis=0))
    a, b = jnp.ones((512, 512)), jnp.ones((512, 512))
    compiled = f.lower(a, b).compile()
    compiled(a, b).block_until_ready()
    window = profiling.TraceWindow(tmp_path, start=1, steps=2)
    for step in range(4):
        window.before_step(step)
        out = compiled(a, b).block_until_ready()  # nothing from step 0 runs inside the window
        window.after_step(step, out)
    assert not window.active
    report = profiling.op_breakdown(tmp_path, compiled.as_text())
    shares = report["categories"]
    assert "matmul" in shares
    assert sum(c["ms"] for c in shares.values()) == pytest.approx(report["total_op_ms"], abs=0.5)
    assert sum(c["share"] for c in shares.values()) == pytest.approx(1.0, abs=0.01)
    matmuls = [op for op in report["top_ops"] if op["category"] == "matmul"]
    assert matmuls and matmuls[0]["calls"] == 2  # exactly the two steps inside the window


def test_step_benchmark_reports_the_step_main_builds():
    env = dict(os.environ, XLA_FLAGS=ONE_DEVICE_XLA_FLAGS)  # one device, as a user's run
    cmd = [sys.executable, "-m", "alz_jax.bench", "step", "--config=configs/demo.py", "--size=",
           "--res=32", "--batch=4", "--in_chans=1", "--steps=2"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    spec = convnext.ConvNeXtSpec((1, 1, 3, 1), (32, 64, 128, 256), in_chans=1)  # demo's model
    assert result["model_gflop_per_image"] == round(
        convnext.train_flops_per_image(spec, 32) / 1e9, 2
    )
    assert result["depthwise"] == "shift" and result["devices"] == 1
    assert len(result["step_s_all"]) == 2 and result["img_per_s"] == pytest.approx(
        4 / result["step_s"], rel=1e-3
    )
    assert result["compile_cache"] is None  # tests run with ALZ_JAX_COMPILE_CACHE=off


def test_huge_page_environment_respects_the_user_and_the_opt_out():
    from alz_jax.host import hostenv

    env = hostenv.huge_page_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "PATH": "/bin"})
    if env is None:
        pytest.skip("not Linux with glibc >= 2.35 and transparent huge pages")
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert env["PATH"] == "/bin"
    assert hostenv.huge_page_env({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) is None
    assert hostenv.huge_page_env({"ALZ_JAX_HUGE_PAGES": "off"}) is None


def test_entry_point_reexecutes_once_with_huge_page_malloc():
    from alz_jax.host import hostenv

    if hostenv.huge_page_env({}) is None:
        pytest.skip("not Linux with glibc >= 2.35 and transparent huge pages")
    code = (
        "import os; print('start', flush=True); from alz_jax.host import hostenv; "
        "hostenv.reexec_with_huge_pages(); print(os.environ['GLIBC_TUNABLES'])"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "ALZ_JAX_HUGE_PAGES")}
    out = _run_python(code, env)
    assert out == ["start", "start", "glibc.malloc.hugetlb=1"]  # ran twice, the second time set


# A ViT small enough to compile in seconds (config.model.arch), as tests/test_families.py's.
_TINY_VIT_CONFIG = """
from alz_jax.configs import convnext_t


def get_config():
    config = convnext_t.get_config()
    config.model.name = "vit_s16"
    config.model.arch = {"embed_dim": 16, "depth": 2, "num_heads": 2, "patch_size": 8}
    return config
"""


def test_step_benchmark_builds_and_names_any_model_family(tmp_path):
    from alz_jax.models import registry

    config = tmp_path / "tiny_vit.py"
    config.write_text(_TINY_VIT_CONFIG)
    env = dict(os.environ, XLA_FLAGS=ONE_DEVICE_XLA_FLAGS)
    cmd = [sys.executable, "-m", "alz_jax.bench", "step", f"--config={config}", "--model=vit_s16",
           "--res=32", "--batch=2", "--in_chans=1", "--steps=1"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    arch = {"embed_dim": 16, "depth": 2, "num_heads": 2, "patch_size": 8}
    spec = registry.spec_from_name("vit_s16", arch, in_chans=1, num_classes=2, image_size=32)
    assert (result["model"], result["family"]) == ("vit_s16", "vit")
    assert result["architecture"]["depth"] == 2 and result["depthwise"] is None  # arch kept
    assert result["params"] == registry.count_params(spec)
    assert result["model_flop_per_image"] == 3 * registry.forward_flops_per_image(spec, 32)
    achieved = result["model_flop_per_image"] * 2 / result["step_s"]
    assert result["achieved_gflop_per_s"] == pytest.approx(achieved / 1e9, rel=0.01, abs=0.01)


def _load_torch_reference():
    import importlib.util

    path = REPO / "alz_jax" / "reference" / "torch_reference.py"
    spec = importlib.util.spec_from_file_location("torch_reference_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_torch_reference_and_compare_take_every_model_name():
    import dataclasses

    from alz_jax import bench
    from alz_jax.host import command
    from alz_jax.models import registry

    reference = _load_torch_reference()  # without PyTorch: it imports torch with the model
    assert "torch" not in sys.modules
    assert set(reference.MODELS) == set(registry.NAMES)
    for name in registry.NAMES:
        assert reference.parse_args([f"--model={name}", "--batch=2"]).model == name
    assert reference.parse_args([]).model == "convnext_tiny"
    assert reference.parse_args(["--variant=small"]).model == "convnext_small"
    with pytest.raises(SystemExit):
        reference.parse_args(["--model=vit_s16", "--variant=tiny"])
    fields = {f.name: "" for f in dataclasses.fields(bench.Settings)}
    args = bench.Settings(**fields | {
        "config": "convnext_t.py", "base_config": command.load_config("convnext_t"),
        "model": "resnet50", "size": "tiny", "batch": 4, "res": 64, "in_chans": 3,
        "dtype": "float32", "steps": 2, "torch_python": "torch-python", "reference": "ref.py",
    })  # fmt: skip
    name, torch_cmd, jax_cmd = bench.compare_commands(args)
    assert name == "resnet50" and "--model=resnet50" in torch_cmd and "--model=resnet50" in jax_cmd
    same = ["--batch=4", "--res=64", "--in_chans=3", "--dtype=float32", "--steps=2"]
    assert all(a in torch_cmd and a in jax_cmd for a in same)
    assert "--classes=2" in torch_cmd and "--drop_path_rate=0.1" in torch_cmd
    tiny = dataclasses.replace(args, model="")  # --size, as before: the same config as --model
    assert bench.compare_commands(tiny)[0] == "convnext_tiny"
    assert bench.config_hash(bench.step_config(tiny)) == bench.config_hash(
        bench.step_config(dataclasses.replace(args, model="convnext_tiny"))
    )


def test_step_spec_is_the_resolved_config_with_the_benchmarks_settings():
    """`bench step` resolves the config as `main` does and replaces only what its flags set."""
    import dataclasses

    from alz_jax import bench
    from alz_jax.host import command
    from alz_jax.models import registry
    from alz_jax.run import specs

    config = command.load_config("convnext_t")
    fields = {f.name: "" for f in dataclasses.fields(bench.Settings)}
    args = bench.Settings(**fields | {
        "config": "convnext_t.py", "base_config": config, "model": "resnet50", "size": "tiny",
        "batch": 8, "res": 64, "in_chans": 3, "dtype": "bfloat16", "step_impl": "shard_map",
        "depthwise": "xla", "steps": 1,
    })  # fmt: skip
    run, resolved = bench.step.step_spec(args), specs.resolve(config)
    model = config.model
    assert run.model == registry.spec_from_name(
        "resnet50", in_chans=3, num_classes=model.num_classes, drop_path_rate=model.drop_path_rate,
        head_dropout=model.head_dropout, dtype="bfloat16", param_dtype=model.param_dtype,
    )  # fmt: skip
    assert (run.batch_size, run.pipeline.image_size, run.pipeline.mix.prob) == (8, 64, 0.0)
    assert run.step == dataclasses.replace(resolved.step, impl="shard_map")
    kept = ("seed", "data", "optim", "averages", "checkpoint", "evaluation", "train", "warmup")
    assert all(getattr(run, name) == getattr(resolved, name) for name in kept)
    convnext = dataclasses.replace(args, model="", dtype="float32")  # the config's, at --size
    assert bench.step.step_spec(convnext).model == dataclasses.replace(
        resolved.model, in_chans=3, depthwise="xla"
    )
