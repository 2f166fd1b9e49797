"""What `pip install .` installs: configs/ and tfds_builders/ inside the alz_jax package
(alz_jax.configs, alz_jax.tfds_builders), nothing else at the top of site-packages, and the
imports that make that work (the import graph of `lint-imports` cannot follow the mapping)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The folders that install under alz_jax, and their installed names.
MAPPED = {
    "alz_jax": "alz_jax",
    "configs": "alz_jax.configs",
    "tfds_builders": "alz_jax.tfds_builders",
}
FACADE = "alz_jax.tfds_builders.mri_slices.api"


def _package_folders() -> set[str]:
    """Installed names of every folder with an __init__.py under the mapped folders."""
    names = set()
    for folder, installed in MAPPED.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            names.add(".".join([installed, *parts]))
    return names


def test_pyproject_lists_every_package_folder_under_its_installed_name():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["package-dir"] == {v: k for k, v in MAPPED.items()}
    assert set(setuptools["packages"]) == _package_folders()


def _imports(path: Path, package: str) -> list[str]:
    """Absolute names of the modules `path` imports (relative imports resolved in `package`)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module
            names.append(module)
            names += [f"{module}.{a.name}" for a in node.names]
    return names


def _project_imports():
    """(file, its installed package, the modules it imports) for every project and test file."""
    for folder, installed in {**MAPPED, "tests": "tests"}.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.parent.relative_to(ROOT / folder).parts
            yield path, ".".join([installed, *parts]), _imports(path, ".".join([installed, *parts]))


def test_nothing_imports_the_top_level_names_that_are_no_longer_installed():
    wrong = [
        f"{path.relative_to(ROOT)}: {name}"
        for path, _, names in _project_imports()
        for name in names
        if name.split(".")[0] in ("configs", "tfds_builders")
    ]
    assert wrong == []


def test_the_builder_stands_alone_and_alz_jax_uses_it_through_its_facade():
    """The builder imports nothing of alz_jax outside itself; alz_jax's data layer and audit
    command import only its facade; nothing of alz_jax imports the old shim package."""
    problems = []
    for path, package, names in _project_imports():
        rel = path.relative_to(ROOT)
        for name in names:
            if package.startswith("alz_jax.tfds_builders"):
                if name.startswith("alz_jax.") and not name.startswith("alz_jax.tfds_builders"):
                    problems.append(f"{rel} imports {name}")
            elif package.startswith("alz_jax.configs"):
                if name.startswith("alz_jax.") and not name.startswith("alz_jax.configs"):
                    problems.append(f"{rel} imports {name}")
            elif package.startswith("alz_jax"):
                if name.startswith("alz_jax.tfds_builders.adni"):
                    problems.append(f"{rel} imports the shim {name}")
                facade_only = rel.as_posix() in (
                    "alz_jax/data/dataset.py", "alz_jax/data/data_spec.py", "alz_jax/audit.py"
                )  # fmt: skip
                inner = name.startswith("alz_jax.tfds_builders.mri_slices.")
                if facade_only and inner and not name.startswith(FACADE):
                    problems.append(f"{rel} imports {name}, not the facade")
    assert problems == []


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory) -> Path:
    """The project built as a wheel by pip, offline (no build isolation, no dependencies)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-w", str(out), str(ROOT)],
        check=True, cwd=out, capture_output=True,
    )  # fmt: skip
    (wheel,) = out.glob("alz_jax-*.whl")
    return wheel


def test_the_wheel_holds_configs_and_builders_inside_alz_jax_only(built_wheel):
    names = zipfile.ZipFile(built_wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"alz_jax"}
    (top_level,) = [n for n in names if n.endswith("top_level.txt")]
    assert zipfile.ZipFile(built_wheel).read(top_level).decode().split() == ["alz_jax"]
    for folder in ("configs", "tfds_builders"):
        expected = {
            f"alz_jax/{p.relative_to(ROOT).as_posix()}" for p in (ROOT / folder).rglob("*.py")
        }
        assert expected <= set(names), sorted(expected - set(names))


def test_an_installed_wheel_finds_its_configs_and_registers_the_builder(built_wheel, tmp_path):
    """From another folder, with only the installed files: --config by name and by the
    repository's path, a config importing another, and TFDS finding the builder by name."""
    site = tmp_path / "site"
    zipfile.ZipFile(built_wheel).extractall(site)
    check = (
        "import alz_jax, tensorflow_datasets as tfds\n"
        "from alz_jax.host import command\n"
        "from alz_jax.tfds_builders import mri_slices\n"
        "assert alz_jax.__file__.startswith(SITE), alz_jax.__file__\n"
        "assert str(command.CONFIGS_DIR) == SITE + '/alz_jax/configs', command.CONFIGS_DIR\n"
        "for value in ('stages_demo', 'configs/stages_demo.py'):\n"
        "    assert command.find_config(value) == SITE + '/alz_jax/configs/stages_demo.py'\n"
        "assert command.load_config('stages_demo').model.name == 'simple_cnn'\n"
        "builder = mri_slices.Builder  # imported on first use\n"
        "assert tfds.builder_cls('adni') is builder\n"
        "import sys\n"
        "assert not {m.split('.')[0] for m in sys.modules} & {'configs', 'tfds_builders'}\n"
        "print('ok')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run(
        [sys.executable, "-c", f"SITE = {str(site)!r}\n{check}"],
        check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"
