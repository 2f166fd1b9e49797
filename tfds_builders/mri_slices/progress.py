"""Progress lines for long phases: the one implementation, for the builder side and alz_jax.

A phase that can run for minutes on a large collection (the audit reading every image, the
near-duplicate search, the TFDS build, the test evaluation) counts its work with a `Progress`;
every `interval_s` seconds (10 by default) it logs one short line,

    Reading images: 4200/86437 (5%), 410 images/s, ETA 0:03:20

and, if it logged any, a last line with the total time when it ends. A phase shorter than the
interval logs nothing. Standard library only: the builder package imports no alz_jax, and
alz_jax uses this through `alz_jax.host.logs.Progress`.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

INTERVAL_S = 10.0
T = TypeVar("T")


def duration(seconds: float) -> str:
    """'0:03:20': whole seconds as H:MM:SS."""
    return str(datetime.timedelta(seconds=round(max(seconds, 0.0))))


def count(n: float) -> str:
    """A count for a line: exact below a million, else '12.3M'."""
    return f"{n:.0f}" if n < 1e6 else f"{n / 1e6:.1f}M"


def _rate(done: float, seconds: float, unit: str) -> str:
    per_s = done / seconds if seconds > 0 else 0.0
    return f"{per_s:.3g} {unit}/s" if per_s < 100 else f"{count(per_s)} {unit}/s"


class Progress:
    """Counts the work of one phase and logs `what: done/total (p%), rate unit/s, ETA h:mm:ss`
    every `interval_s` seconds (None: the module's INTERVAL_S, which tests lower); `log` and
    `clock` are replaceable for tests."""

    def __init__(
        self, what: str, total: int, unit: str = "images", interval_s: float | None = None,
        log: Callable[[str], None] | None = None, clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.what, self.total, self.unit = what, max(int(total), 0), unit
        self.interval_s = INTERVAL_S if interval_s is None else interval_s
        self._log = log or (lambda line: logging.info("%s", line))
        self._clock = clock
        self.done = 0
        self.lines = 0  # progress lines logged so far
        self._start = self._last = clock()

    def line(self) -> str:
        """The progress line for the count so far."""
        elapsed = self._clock() - self._start
        share = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        rate = _rate(self.done, elapsed, self.unit)
        text = f"{self.what}: {count(self.done)}/{count(self.total)}{share}, {rate}"
        if 0 < self.done < self.total:
            text += f", ETA {duration(elapsed * (self.total - self.done) / self.done)}"
        return text

    def update(self, n: int = 1) -> None:
        """Adds `n` units of work done; logs a line when `interval_s` has passed since the
        last one."""
        self.done += n
        now = self._clock()
        if now - self._last >= self.interval_s and self.done < self.total:
            self._last = now
            self.lines += 1
            self._log(self.line())

    def finish(self) -> None:
        """The last line ('what: 86437/86437 in 0:03:12, 450 images/s'), where the phase was long
        enough to log progress."""
        if self.lines:
            elapsed = self._clock() - self._start
            self._log(
                f"{self.what}: {count(self.done)}/{count(self.total)} in {duration(elapsed)}, "
                f"{_rate(self.done, elapsed, self.unit)}"
            )

    def track(self, items: Iterable[T]) -> Iterator[T]:
        """`items`, counting one unit per item, with the last line at the end."""
        for item in items:
            yield item
            self.update()
        self.finish()
