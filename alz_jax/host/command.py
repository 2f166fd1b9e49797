"""What every `python -m alz_jax.<command>` shares: its start-up and its common flags.

A command defines its flags at module level (the shared ones through the `define_*` functions
here, its own with absl) and ends with `command.run(main)`, which

- resolves `--config` before absl reads it: a file path as given, else a config of the
  project's `configs` package by name (`--config=convnext_t`) or by its path inside the
  project (`--config=configs/convnext_t.py` from any folder); `--config.x.y=...` overrides
  work as ml_collections documents them, and one that names no field of the config (a typo)
  prints `error: ...` with ml_collections' suggestion and exits with status 2;
- then, in absl's main: re-executes with huge-page malloc (host/hostenv.py), sets up logging,
  starts JAX's distributed runtime (host/distributed.py) and the persistent compilation cache,
  and runs the command, where a UserError (or a data-layout error) prints `error: ...` and exits
  with status 2. Commands that run no JAX computation pass `jax_runtime=False`: logging and the
  user-error exit only (`bench` starts the runtime itself, for the benchmarks that need it).

A flag error (a required flag missing, an unknown flag, a bad value) is a user error too: one
`error: ...` line with a pointer to --help (and to `make demo` for a newcomer), exit status 2.
--help and --helpfull print every flag, --helpshort only the command's own; all three exit 0
(absl's exit 1, and its --help is its --helpshort).
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Callable
from pathlib import Path

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from alz_jax.host import compilation_cache, distributed, hostenv, logs
from alz_jax.host.errors import UserError, exit_on_user_error

# The flags defined by the define_* functions below belong to the command that calls them (its
# --helpshort lists them), not to this module.
flags.disclaim_key_flags()

# The configs package, alz_jax.configs: the repository's configs/ in a checkout or an editable
# install, site-packages/alz_jax/configs in a regular one. Found without importing it.
CONFIGS_DIR = Path(importlib.util.find_spec("alz_jax.configs").origin).parent
CHECKPOINT_HELP = "Checkpoint: best, latest or a step number."
WEIGHTS = ("selected", "raw", "ema", "swa")


def available_configs() -> list[str]:
    """Names of the configs in the project's configs package."""
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.py") if not p.stem.startswith("_"))


def find_config(value: str) -> str | None:
    """The config file `value` names: an existing file as given, else a config of the configs
    package by name or by its path inside the project (from any folder), with any `:argument`
    kept; None if there is none."""
    path_text, colon, argument = value.partition(":")
    path = Path(path_text).expanduser()
    if path.is_file():
        return value
    # By name: `NAME`, `NAME.py` or `configs/NAME.py`; another folder's path is never replaced.
    if path.parent not in (Path(), Path("configs")) or path.suffix not in ("", ".py"):
        return None
    candidate = CONFIGS_DIR / f"{path.stem}.py"
    if path.stem.startswith("_") or not candidate.is_file():
        return None
    return f"{candidate}{colon}{argument}"


def resolve_config(value: str) -> str:
    """`find_config`, or a UserError saying what exists."""
    found = find_config(value)
    if found is None:
        raise UserError(
            f"--config={value}: no such file, and no config of that name in {CONFIGS_DIR} "
            f"(there: {', '.join(available_configs())})."
        )
    return found


def resolve_config_argv(argv: list[str]) -> list[str]:
    """`argv` with the value of --config (`--config=X` or `--config X`) resolved."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--":
            break
        if arg.startswith(("--config=", "-config=")):
            name, _, value = arg.partition("=")
            out[i] = f"{name}={resolve_config(value)}"
        elif arg in ("--config", "-config") and i + 1 < len(out):
            out[i + 1] = resolve_config(out[i + 1])
    return out


def load_config(value: str) -> ml_collections.ConfigDict:
    """`get_config()` of a config file or name (unlocked), found as --config finds it."""
    path, colon, argument = resolve_config(value).partition(":")
    spec = importlib.util.spec_from_file_location("config_config", path)  # config_flags' name
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*([argument] if colon else []))


# ---- The shared flags. ----


def define_config(
    default: str | None = None, help_string: str = "Training config.", required: bool = True
) -> flags.FlagHolder:
    """--config: a config file, or a name in the configs package (convnext_t, demo, ...);
    overridable field by field with --config.x.y=value."""
    if default is not None:
        default = find_config(default) or default
    names = ", ".join(available_configs())
    holder = config_flags.DEFINE_config_file(
        "config", default, f"{help_string} A .py file or one of: {names}.", lock_config=True
    )
    if required and default is None:
        flags.mark_flag_as_required("config")
    return holder


def config_file() -> Path:
    """The file --config was loaded from (after resolution, without any `:argument`)."""
    filename = config_flags.get_config_filename(flags.FLAGS["config"])
    return Path(filename.partition(":")[0])


def define_workdir(
    help_string: str, required: bool = True, default: str | None = None
) -> flags.FlagHolder:
    """--workdir: a local folder or a gs:// URL."""
    return flags.DEFINE_string("workdir", default, help_string, required=required)


def default_workdir() -> str:
    """runs/<config name>: where a training run goes when --workdir is not given."""
    return f"runs/{config_file().stem}"


def define_checkpoint() -> flags.FlagHolder:
    """--checkpoint: best, latest or a step number."""
    return flags.DEFINE_string("checkpoint", "best", CHECKPOINT_HELP)


def define_weights() -> flags.FlagHolder:
    """--weights: selected (those that won the checkpoint's validation), raw, ema or swa."""
    return flags.DEFINE_enum(
        "weights", "selected", list(WEIGHTS),
        "Weights; 'selected': those that won the checkpoint's validation.",
    )  # fmt: skip


def define_distributed() -> None:
    """--coordinator_address, --num_processes, --process_id, --local_device_ids (idempotent)."""
    distributed.define_flags()
    flags.adopt_module_key_flags(distributed)


# ---- Start-up. ----

# ml_collections' modules whose KeyError/AttributeError/IndexError, met while absl parses the
# flags, mean that a --config.x.y override names no field of the config.
_OVERRIDE_WALKERS = ("ml_collections.config_flags.config_path",)


def _raised_walking_an_override(error: BaseException) -> bool:
    """Whether `error` came from resolving a --config.x.y path (not from a config file's code)."""
    frame_modules = []
    tb = error.__traceback__
    while tb is not None:
        frame_modules.append(tb.tb_frame.f_globals.get("__name__", ""))
        tb = tb.tb_next
    return any(m in _OVERRIDE_WALKERS for m in frame_modules) and frame_modules[-1].startswith(
        "ml_collections."
    )


def _error_text(error: BaseException) -> str:
    """The message inside ml_collections' (possibly nested) exception, e.g.
    "'learning_rat'\nDid you mean \"learning_rate\" instead of \"learning_rat\"?"."""
    while error.args and isinstance(error.args[0], BaseException):
        error = error.args[0]
    return str(error.args[0]) if error.args else str(error)


def config_override_error(error: BaseException, argv: list[str]) -> str:
    """One line for an override that names no config field: the flag, the missing field, and
    ml_collections' suggestion when it has one."""
    text = _error_text(error)
    suggestion = re.search(r'Did you mean "([^"]+)"', text)
    key = re.match(r"'([^']+)'", text)
    overrides = [a.split("=", 1)[0].lstrip("-") for a in argv
                 if a.startswith(("--config.", "-config."))]  # fmt: skip
    flag = next(
        (o for o in overrides if key and key[1] in o.split(".")[1:]),
        overrides[0] if len(overrides) == 1 else None,
    )
    where = f"--{flag}" if flag else "a --config.* override"
    if key:
        parts = flag.split(".") if flag else []
        parent = ".".join(parts[: parts.index(key[1])]) if key[1] in parts else "config"
        detail = f"{parent} has no field {key[1]!r}"
    else:
        detail = " ".join(text.split())  # ml_collections' message, on one line
    hint = f'did you mean "{suggestion[1]}"?' if suggestion else "check the spelling."
    return (
        f"{where}: {detail}; {hint} The fields are those of the --config file "
        "(overrides can't add new ones)."
    )


# After a flag error: where the flags are described, and where a newcomer starts.
FLAGS_POINTER = "--help lists this command's flags; new here? Try `make demo` first, see README.md."


def flag_error(error: flags.Error) -> str:
    """One line for absl's flag error: the required flags missing, or absl's message."""
    # absl's required-flag validator says "Flag --NAME must have a value other than None.", one
    # line per missing flag.
    missing = re.findall(r"Flag --(\S+) must have a value other than None", str(error))
    if missing:
        names = " and ".join(f"--{name}" for name in dict.fromkeys(missing))
        verb = "is" if len(set(missing)) == 1 else "are"
        return f"{names} {verb} required. {FLAGS_POINTER}"
    text = " ".join(str(error).split()).replace(" ?", "?")  # absl: "Did you mean: config ?"
    return f"{text}{'' if text.endswith(('.', '?')) else '.'} {FLAGS_POINTER}"


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
    """absl's flag parsing, with any flag error, and a --config.x.y override that names no
    field (ml_collections raises it deep in absl's parser, where it would end a long traceback),
    turned into one `error: ...` line and exit status 2."""
    try:
        return flag_values(argv)
    except flags.Error as e:
        print(f"error: {flag_error(e)}", file=sys.stderr)
        sys.exit(2)
    except (KeyError, AttributeError, IndexError) as e:
        if not _raised_walking_an_override(e):
            raise
        print(f"error: {config_override_error(e, argv)}", file=sys.stderr)
        sys.exit(2)


class _HelpFlag(flags.BooleanFlag):
    """--help, --helpshort or --helpfull: the command's usage on stdout, then exit status 0."""

    def __init__(self, name: str, short_name: str | None, help_string: str, full: bool):
        super().__init__(
            name, False, help_string, short_name=short_name, allow_override=True,
            allow_hide_cpp=True,
        )  # fmt: skip
        self.full = full

    def parse(self, argument: str) -> None:
        """Prints the usage and exits 0 when the flag is given."""
        if self._parse(argument):
            app.usage(shorthelp=not self.full, writeto_stdout=True)
            other = "--helpshort: this command's flags only" if self.full else (
                "--help: every flag, absl's and logging's too")  # fmt: skip
            print(other + ".")
            sys.exit(0)


def define_help_flags() -> None:
    """Replaces absl's help flags (which exit 1, and whose --help is --helpshort) with ones that
    exit 0: --help (-?) and --helpfull print every flag, --helpshort the command's own."""
    app.define_help_flags()  # absl's first, so that app.run defines none after these
    for name, short_name, help_string, full in (
        ("help", "?", "show every flag", True),
        ("helpfull", None, "show every flag", True),
        ("helpshort", None, "show only this command's flags", False),
    ):
        flags.DEFINE_flag(_HelpFlag(name, short_name, help_string, full), module_name=app.__name__)


def start_jax_runtime() -> None:
    """JAX's distributed runtime (one process or many) and the persistent compilation cache;
    before the first computation."""
    distributed.initialize_from_flags()
    compilation_cache.enable()


def run(
    main: Callable[[list[str]], None], *, jax_runtime: bool = True, huge_pages: bool | None = None
) -> None:
    """Runs a command's `main(argv)` with absl (argv: the program name and the positional
    arguments) after the common start-up; see the module docstring. `huge_pages` defaults to
    `jax_runtime` (a command that starts the runtime itself may still want training's memory
    set-up)."""
    if jax_runtime:
        define_distributed()
    define_help_flags()
    with exit_on_user_error():
        sys.argv[:] = resolve_config_argv(sys.argv)  # config_flags reads overrides there

    def start(argv: list[str]) -> None:
        if jax_runtime if huge_pages is None else huge_pages:
            hostenv.reexec_with_huge_pages()
        logs.setup()
        with exit_on_user_error():
            if jax_runtime:
                start_jax_runtime()
            main(argv)

    app.run(start, flags_parser=parse_flags)
