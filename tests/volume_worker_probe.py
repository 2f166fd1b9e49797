"""What a slicing worker process has imported (tests/test_volume_build.py): a module of its own,
importing nothing, so that pickling the probe brings nothing into the worker."""

import sys


def imported(name: str) -> bool:
    """Whether module `name` is imported in this process."""
    return name in sys.modules
