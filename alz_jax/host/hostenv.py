"""Host memory set-up for CPU training: large allocations backed by transparent huge pages.

XLA:CPU allocates its buffers afresh at every step, and glibc serves each large one with new
4 KiB pages from the kernel: the ConvNeXt-T train step (batch 16, 224 px) took ~785,000 minor
page faults per step, ~2,500 with huge pages, and ran 20-25% faster (docs/performance.md).
glibc reads its malloc tunables only at start-up, so the training entry points re-execute
themselves once with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (glibc >= 2.35, Linux, and only
when transparent huge pages are not disabled). `ALZ_JAX_HUGE_PAGES=off` turns this off.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
from pathlib import Path

ENV_VAR = "ALZ_JAX_HUGE_PAGES"
TUNABLE = "glibc.malloc.hugetlb"
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def huge_page_env(environ: dict[str, str] | None = None) -> dict[str, str] | None:
    """The environment to re-execute with, or None when nothing is to change: off by request,
    not Linux with glibc >= 2.35, huge pages disabled by the kernel, or the tunable already set
    (by us or by the user, whose value wins)."""
    environ = dict(os.environ if environ is None else environ)
    if environ.get(ENV_VAR, "").lower() in ("off", "0", "false") or sys.platform != "linux":
        return None
    libc, version = platform.libc_ver()
    try:
        recent = tuple(int(p) for p in version.split(".")[:2]) >= (2, 35)
    except ValueError:
        recent = False
    if libc != "glibc" or not recent:
        return None
    try:
        if "[never]" in THP_SETTING.read_text():
            return None
    except OSError:
        return None
    tunables = environ.get("GLIBC_TUNABLES", "")
    if TUNABLE in tunables:
        return None
    environ["GLIBC_TUNABLES"] = ":".join(t for t in (tunables, f"{TUNABLE}=1") if t)
    return environ


def reexec_with_huge_pages() -> None:
    """Re-executes this Python process, same interpreter, arguments and working directory, with
    huge-page malloc, if `huge_page_env` says so; returns only when nothing changes. Call it
    first thing in an entry point, before any large allocation."""
    environ = huge_page_env()
    if environ is None:
        return
    logging.info("Restarting with GLIBC_TUNABLES=%s (%s=off to skip)", environ["GLIBC_TUNABLES"],
                 ENV_VAR)  # fmt: skip
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ)
