"""Progress reporting that suits both a terminal and a log file.

On a terminal a single status line is redrawn in place; elsewhere (Airflow task logs, CI) a plain log line is
emitted at most every ``interval`` seconds (env ``RQVAE_PROGRESS_INTERVAL_S`` overrides it) and when the work is
done, so long runs say where they stand without flooding the log.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import TextIO

logger = logging.getLogger("rqvae.progress")


def format_seconds(seconds: float) -> str:
    """Compact h/m/s rendering for ETAs."""
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class Progress:
    """Counts work done out of a total and reports rate and ETA."""

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "items",
        *,
        enabled: bool = True,
        interval: float = 10.0,
        stream: TextIO | None = None,
    ) -> None:
        self.total = max(0, int(total))
        self.desc = desc
        self.unit = unit
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        # RQVAE_PROGRESS_INTERVAL_S sets the log-line period off a terminal (e.g. shorter for a short job's log).
        self.interval = 0.2 if self.tty else float(os.environ.get("RQVAE_PROGRESS_INTERVAL_S", interval))
        self.done = 0
        self.start = time.perf_counter()
        self._last = self.start

    def update(self, n: int) -> None:
        self.done += int(n)
        now = time.perf_counter()
        if self.enabled and (now - self._last >= self.interval or self.done >= self.total):
            self._last = now
            self._emit(final=False)

    def line(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        return (
            f"{self.desc}: {self.done:,}/{self.total:,} {self.unit} ({pct:.0f}%), "
            f"{rate:,.0f} {self.unit}/s, elapsed {format_seconds(elapsed)}, ETA {format_seconds(eta)}"
        )

    def _emit(self, final: bool) -> None:
        if self.tty:
            self.stream.write("\r" + self.line() + ("\n" if final else ""))
            self.stream.flush()
        elif not final:
            logger.info("%s", self.line())

    def close(self) -> None:
        if self.enabled and self.tty:
            self._emit(final=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
