"""Stage `wait_for_embeddings`: which snapshot this run processes, every folder it will touch, and whether the
snapshot is complete yet.

The folders are resolved here once and travel in the `RunInfo` XCom, so no later task works a root out again:
the data set's namespace (`embeddings_root` param) decides the embeddings, work, publish and interactions
folders alike, and the run's own work folder is private to its run id (include.layout.RunFolder).
"""

from __future__ import annotations

from datetime import datetime

from include import snapshot
from include.layout import RunFolder
from include.results import RunInfo
from include.settings import Roots, dataset_roots


def run_info(configured: Roots, namespace: str | None, snapshot_name: str, run_id: str) -> RunInfo:
    """The folders of one run of `snapshot_name` in the data set `namespace` (empty: the configured roots)."""
    roots = dataset_roots(configured, namespace)
    interactions_dir = roots.interactions / snapshot_name
    return RunInfo(
        snapshot=snapshot_name,
        snapshot_dir=str(roots.embeddings / snapshot_name),
        work_dir=str(RunFolder.for_run(roots.work, snapshot_name, run_id).root),
        publish_root=str(roots.publish),
        interactions_dir=str(interactions_dir),
        interactions_name=interactions_dir.relative_to(configured.interactions).as_posix(),
    )


def wait_for_embeddings(
    configured: Roots,
    namespace: str | None,
    snapshot_param: str | None,
    logical_date: datetime | None,
    run_after: datetime | None,
    run_id: str,
) -> tuple[bool, RunInfo]:
    """(is the snapshot complete, the run's folders): the sensor pokes this until the first is True."""
    name = snapshot.resolve_snapshot(snapshot_param, logical_date, run_after)
    run = run_info(configured, namespace, name, run_id)
    return snapshot.snapshot_ready(run["snapshot_dir"]), run
