"""Exceptions with messages a user can act on, classified by whether a retry can help.

Bad input must fail loudly and name what is wrong plus a few offending item ids, so every reader,
validator and CLI command raises :class:`InputError` rather than returning something empty.

:class:`PermanentError` is the one base of failures that running the same step again cannot fix: the DAGs'
retry policy fails such a task at once and the CLI exits with code 2. Everything else (a lost worker, a full
disk, CUDA out of memory, an I/O error) is transient and keeps the normal retries. The pipeline's own
permanent classes (failed validation, bad snapshot, path outside the roots, refused publish, stale
evaluation) live beside the code that raises them in ``include/`` and derive from this base.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

SAMPLE_IDS = 5


class RQVAEError(Exception):
    """Base class of this library's errors."""


class PermanentError(RQVAEError):
    """A failure a retry cannot help: the same input, params or files would fail the same way again."""


class ConfigError(PermanentError, ValueError):
    """Bad params or config values (a ValueError too, for callers that catch that)."""


class InputError(PermanentError, ValueError):
    """Input data that cannot be used: names the problem, the count and sample item ids.

    The CLI maps it to exit code 2; the pipeline fails the task without retries.
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


class ModelLoadError(PermanentError):
    """A model directory that is missing, incompatible or tampered with: loading it again gives the same."""


def _plain(value: object) -> object:
    """Turn numpy scalars into Python ones so messages read `[3, 7]`, not `[np.int64(3), ...]`."""
    item = getattr(value, "item", None)
    return item() if callable(item) else value
