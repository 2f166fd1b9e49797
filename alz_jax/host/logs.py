"""Readable logs: our INFO lines and the metrics, without the libraries' routine chatter; and
progress lines for long phases (`Progress`, the builder package's one implementation)."""

from __future__ import annotations

import contextlib
import logging

from absl import logging as absl_logging

from alz_jax.tfds_builders.mri_slices import progress

# Every long phase counts its work with this and logs `what: done/total (p%), rate, ETA` lines
# every `progress.INTERVAL_S` seconds (tfds_builders/mri_slices/progress.py).
Progress = progress.Progress
duration = progress.duration


def progress_interval_s() -> float:
    """Seconds between two progress lines (tests lower `progress.INTERVAL_S`)."""
    return progress.INTERVAL_S


# Libraries whose INFO lines describe their own routine work (checkpoint I/O, data set files).
_QUIET = ("/orbax/", "/tensorflow_datasets/", "/grain/", "/jax/_src/", "/etils/")


# Known-spurious warnings: TFDS warns that a version folder has no dataset_info.json when a
# builder is opened on the folder it is about to build, and prints a custom builder config
# whole (a line of ~600 characters; our own lines name the layout, classes and folder).
_SPURIOUS = (
    ("/tensorflow_datasets/", "has no dataset_info.json"),
    ("/tensorflow_datasets/", "Using custom data configuration"),
)


def _spurious(record: logging.LogRecord) -> bool:
    return any(where in record.pathname and text in record.getMessage()
               for where, text in _SPURIOUS)  # fmt: skip


class _LibraryInfoFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _spurious(record):
            return False
        if record.levelno >= logging.WARNING:
            return True
        return not any(part in record.pathname for part in _QUIET)


class _SpuriousFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not _spurious(record)


# TFDS logs through absl's logger also in processes that never call setup() (Grain's workers
# open the data set there), whose handlers lack the filter above: filter at the logger too.
# absl's own (get_absl_logger): a logging.getLogger("absl") made before absl.logging is
# imported would be a plain Logger, which absl then adopts, and every absl log line would name
# absl's wrapper as its caller, escaping the library filter above.
absl_logging.get_absl_logger().addFilter(_SpuriousFilter())


def setup() -> None:
    """INFO logging for alz_jax and CLU's metric lines; library INFO chatter is dropped."""

    # Where TFDS is installed: the train step and `bench step` run on hosts without it
    # (tests/test_light_imports.py).
    with contextlib.suppress(ImportError):
        import tensorflow_datasets as tfds  # noqa: PLC0415

        tfds.disable_progress_bar()
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    for handler in root.handlers or [logging.StreamHandler()]:
        if not any(isinstance(f, _LibraryInfoFilter) for f in handler.filters):
            handler.addFilter(_LibraryInfoFilter())
        if handler not in root.handlers:
            root.addHandler(handler)
