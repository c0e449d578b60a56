"""Stage `has_interactions`: whether the version's day has a complete interactions snapshot. When it has not,
the DAG short-circuits: every later task is skipped and the run still succeeds (nothing to judge with)."""

from __future__ import annotations

import logging

from include.version_ref import VersionRef

log = logging.getLogger(__name__)


def has_interactions(ref: VersionRef) -> bool:
    """Whether the version's day has a complete interactions snapshot; says so in the log when it has not."""
    from include.snapshot import snapshot_ready

    if snapshot_ready(ref.interactions_dir):
        return True
    log.warning(
        "no interactions snapshot for %s: %s has no _SUCCESS marker; downstream evaluation skipped (write "
        "user_id, item_id, timestamp Parquet parts and _SUCCESS there, then clear has_interactions)",
        ref.snapshot, ref.interactions_dir,
    )
    return False
