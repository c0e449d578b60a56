"""Which snapshot a run processes, and whether its input is complete.

A snapshot is a `YYYY-MM-DD` folder `{embeddings_root}/{snapshot}/` that an upstream job fills and then
marks complete with an empty `_SUCCESS` file; reading before the marker would train on half a catalog.
The date comes from the `snapshot` param when given (manual re-runs of an old day), else the run's
`logical_date`, else its `run_after`: in Airflow 3 manual and asset-triggered runs may have no logical date.
"""

from __future__ import annotations

import logging
import re
from datetime import date, datetime
from pathlib import Path

from rqvae.errors import PermanentError

log = logging.getLogger(__name__)

SUCCESS_MARKER = "_SUCCESS"
SNAPSHOT_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class SnapshotError(PermanentError, ValueError):
    """A snapshot name that is not a real `YYYY-MM-DD` date, or a run with no date to fall back on."""


def parse_snapshot(value: str) -> str:
    """Return `value` if it is a valid `YYYY-MM-DD` calendar date; folder names must sort by date."""
    text = str(value).strip()
    if not SNAPSHOT_PATTERN.match(text):
        raise SnapshotError(f"snapshot {value!r} is not in the YYYY-MM-DD format (e.g. 2026-11-26)")
    try:
        date.fromisoformat(text)
    except ValueError as err:
        raise SnapshotError(f"snapshot {value!r} is not a calendar date: {err}") from err
    return text


def resolve_snapshot(
    param: str | None,
    logical_date: datetime | None = None,
    run_after: datetime | None = None,
) -> str:
    """The snapshot of a run: the param if set, else the logical date, else `run_after` (UTC dates)."""
    if param is not None and str(param).strip():
        return parse_snapshot(str(param))
    for moment in (logical_date, run_after):
        if moment is not None:
            return moment.date().isoformat()
    raise SnapshotError("no snapshot param, logical_date or run_after to take the snapshot date from")


def data_entries(snapshot_dir: str | Path) -> list[Path]:
    """Files and folders of a snapshot that hold data: not the marker, not hidden (tmp / in-progress)."""
    folder = Path(snapshot_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.name != SUCCESS_MARKER and not p.name.startswith((".", "_")))


def snapshot_ready(snapshot_dir: str | Path) -> bool:
    """True when the folder has its `_SUCCESS` marker and at least one data entry."""
    folder = Path(snapshot_dir)
    ready = (folder / SUCCESS_MARKER).is_file() and bool(data_entries(folder))
    log.info("snapshot %s ready: %s", folder, ready)
    return ready
