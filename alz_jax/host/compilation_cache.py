"""JAX's persistent compilation cache, on by default: a second run of the same step loads the
compiled executable instead of compiling it again (docs/performance.md).

The folder is `$ALZ_JAX_COMPILE_CACHE` if set, else `~/.cache/alz_jax/xla`; setting it to `off`
turns the cache off. It can be moved or deleted at any time (it is only a cache); on a cluster,
point it at storage every host sees, or leave it per host.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import jax

ENV_VAR = "ALZ_JAX_COMPILE_CACHE"
DEFAULT_DIR = Path("~/.cache/alz_jax/xla")


def cache_dir() -> Path | None:
    """The cache folder this process uses, or None when the cache is off."""
    value = os.environ.get(ENV_VAR, "").strip()
    if value.lower() in ("off", "0", "none", "false"):
        return None
    return Path(value or DEFAULT_DIR).expanduser()


def enable(min_compile_secs: float = 1.0) -> Path | None:
    """Turns the persistent cache on (after jax.distributed is initialised, before the first
    compile), unless it is off or this is a multi-process CPU run; returns the folder.
    Executables that took at least `min_compile_secs` to compile are kept."""
    directory = cache_dir()
    if directory is None:
        return None
    if jax.process_count() > 1 and jax.default_backend() == "cpu":
        # Processes would reach their first collective far apart (one loading, another
        # compiling), past the CPU collectives' 30 s start-up timeout.
        logging.info("Persistent compilation cache off: multi-process run on CPU")
        return None
    directory.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", os.fspath(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_secs)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    logging.info("Persistent compilation cache: %s (%s=off to disable)", directory, ENV_VAR)
    return directory
