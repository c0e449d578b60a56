"""Exceptions with messages a user can act on.

Bad input must fail loudly and name what is wrong plus a few offending item ids, so every reader,
validator and CLI command raises :class:`InputError` rather than returning something empty.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

SAMPLE_IDS = 5


class RQVAEError(Exception):
    """Base class of this library's errors."""


class InputError(RQVAEError, ValueError):
    """Input data that cannot be used: names the problem, the count and sample item ids.

    The CLI maps it to exit code 2; the pipeline lets it fail the task.
    """

    def __init__(
        self,
        problem: str,
        sample_ids: Iterable[object] = (),
        count: int | None = None,
        path: str | Path | None = None,
    ) -> None:
        self.problem = problem
        self.sample_ids = [_plain(i) for i in list(sample_ids)[:SAMPLE_IDS]]
        self.count = count
        self.path = str(path) if path is not None else None
        parts = [problem]
        if count is not None:
            parts.append(f"({count} item{'s' if count != 1 else ''})")
        if self.sample_ids:
            parts.append(f"; sample item ids: {self.sample_ids}")
        if self.path:
            parts.append(f"; in {self.path}")
        super().__init__(" ".join(parts).replace(" ;", ";"))


class ModelLoadError(RQVAEError):
    """A model directory that is missing, incompatible or tampered with."""


def _plain(value: object) -> object:
    """Turn numpy scalars into Python ones so messages read `[3, 7]`, not `[np.int64(3), ...]`."""
    item = getattr(value, "item", None)
    return item() if callable(item) else value
