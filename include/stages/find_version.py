"""Stage `find_version`: which published version the evaluation judges, and every folder that goes with it.

The version comes from the triggering `semantic_ids` asset event, else the `version` param, else `latest`
of the data set; it must lie inside the publish root, since an event's extra or a form field must not point
the evaluation at arbitrary folders.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from include.settings import Roots, resolve_under
from include.version_ref import VersionRef
from include.versions import MANIFEST, Version, latest_version, previous_version

log = logging.getLogger(__name__)


def find_version(roots: Roots, version_path: str | None, namespace: str | None = None) -> VersionRef:
    """The version to evaluate: `version_path` (from the asset event or the form), else `latest`.

    The path must lie inside the publish root: an asset event's extra or a form field must not point the
    evaluation at arbitrary folders. `namespace` (the main DAG's `embeddings_root` param) selects the data
    set whose `latest` is taken when no path is given.
    """
    from include.snapshot import parse_snapshot

    publish_base = resolve_under(roots.publish, namespace) if namespace else roots.publish
    if version_path:
        version = resolve_under(roots.publish, version_path)
    else:
        latest = latest_version(publish_base)
        if latest is None:
            raise FileNotFoundError(f"nothing published under {publish_base} yet: no version to evaluate")
        version = latest.path
    snapshot = parse_snapshot(version.name)
    if not Version(version).is_complete():
        raise FileNotFoundError(f"{version} is not a published version (no {MANIFEST})")
    rel = version.parent.relative_to(roots.publish)
    previous = previous_version(version.parent, snapshot)
    ref = VersionRef(
        snapshot=snapshot,
        version_path=str(version),
        publish_root=str(version.parent),
        previous_path=str(previous.path) if previous else None,
        interactions_dir=str(roots.interactions / rel / snapshot),
        embeddings_dir=str(roots.embeddings / rel / snapshot),
        work_embeddings=str(roots.work / rel / snapshot / _run_folder(version) / "embeddings.parquet"),
        eval_dir=str(roots.work / rel / "evaluation" / snapshot),
    )
    log.info("find_version: %s (previous: %s; interactions %s)", version, ref.previous_path, ref.interactions_dir)
    return ref


def _run_folder(version: Path) -> str:
    """The work folder of the run that published the version (`{snapshot}/{run}/`); `.` for versions published
    before run folders (their work folder was `{snapshot}/` itself)."""
    name = (Version(version).read_manifest().get("work") or {}).get("run_folder")
    return "." if not name or name == version.name else str(name)


def triggering_version(events: Any) -> str | None:
    """The `version_path` of the newest `semantic_ids` event that triggered the run (None for a manual run).

    Several publishes queued before the scheduler creates the run arrive as one run: the newest snapshot is
    evaluated, and the others are named in the log so they can be evaluated with the `version` param.
    """
    found: list[tuple[str, str]] = []
    for asset_events in (events or {}).values():
        for event in asset_events:
            extra = getattr(event, "extra", None) or {}
            if extra.get("version_path"):
                found.append((str(extra.get("snapshot", "")), str(extra["version_path"])))
    if not found:
        return None
    found.sort()
    for _, path in found[:-1]:
        log.warning("also published, not evaluated by this run: %s (trigger with version=%s)", path, path)
    return found[-1][1]
