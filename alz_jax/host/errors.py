"""Errors a user can fix; the command-line entry points print them without a traceback."""

import contextlib
import sys
from collections.abc import Iterator

from absl import app

# Light: the `adni` package imports its TFDS builder only on first use, so the training core
# (which imports this module) runs without TFDS and TensorFlow.
from alz_jax.tfds_builders.mri_slices.layouts.base import LayoutError


class UserError(Exception):
    """A problem with the user's input (config, data, workdir); the message says how to fix it."""


@contextlib.contextmanager
def exit_on_user_error() -> Iterator[None]:
    """In a command's main: a UserError or LayoutError (or absl's UsageError, which absl would
    answer with the whole usage text and status 1) prints `error: ...` and exits with 2."""
    try:
        yield
    except (UserError, LayoutError, app.UsageError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def check_fields(section: str, checks: list[tuple[str, object, bool, str]]) -> None:
    """Raises a UserError for the first failed (field, value, ok, expected) check, named as
    `config.<section>.<field> = value: expected ...`; `section` may be empty (top-level fields)."""
    for field, value, ok, expected in checks:
        if not ok:
            name = f"{section}.{field}" if section else field
            raise UserError(f"config.{name} = {value!r}: expected {expected}.")
