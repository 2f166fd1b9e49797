"""Workdir and data-dir paths that may be local or on cloud storage (gs://), through etils epath.

GCS objects can't be appended to or renamed atomically the way local files can, so the few places
that append or replace go through `append_text` and `write_text_atomic`, which do the right thing
on each.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

from etils import epath


def is_url(path: str | os.PathLike) -> bool:
    """True for gs://, s3:// and other URL paths (not local files)."""
    return "://" in os.fspath(path)


def path(value: str | os.PathLike) -> epath.Path:
    """An epath.Path for a local path (with ~ expanded) or a URL such as gs://bucket/run."""
    text = os.fspath(value)
    return epath.Path(text if is_url(text) else os.path.expanduser(text))


@contextlib.contextmanager
def local_file(source: epath.Path) -> Iterator[str]:
    """A local file name with the content of `source`: the file itself, or for object storage a
    temporary copy (for readers that need a file name, e.g. safetensors' memory map)."""
    if not is_url(source):
        yield os.fspath(source)
        return
    with tempfile.NamedTemporaryFile(suffix=source.suffix) as tmp:
        tmp.write(source.read_bytes())
        tmp.flush()
        yield tmp.name


def write_text_atomic(target: epath.Path, text: str) -> None:
    """Writes `text` to `target` so that a reader never sees half a file: locally through a
    temporary file and a rename; on object storage an object write is already all-or-nothing."""
    if is_url(target):
        target.write_text(text)
        return
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, target)


def append_text(target: epath.Path, text: str) -> None:
    """Appends `text` to `target` (object storage has no append: the object is rewritten)."""
    if is_url(target):
        old = target.read_text() if target.exists() else ""
        target.write_text(old + text)
        return
    with open(target, "a") as f:
        f.write(text)
