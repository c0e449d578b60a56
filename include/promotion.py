"""The pipeline's side of promotion: a form's or a page's version path resolved inside the publish root, the
`Promoted` result the tasks hand on, and the extra of the `semantic_ids_serving` asset event.

The moves themselves (the verdict, the rules, the atomic swap, the log) are the library's, rqvae.ids.promotion,
so the `rqvae promote` CLI and a serving process share them without Airflow; this module only adds what the
DAGs and the UI page know and the library does not: the configured publish root and its data-set namespaces.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from include.results import Promoted
from include.settings import resolve_under
from rqvae.ids.promotion import Outcome, UnknownVersion
from rqvae.io.published import SERVING


def resolve_version(publish_root: str | Path, version: str | None) -> tuple[Path, str]:
    """(the publish root folder of its namespace, the snapshot) of `version`, a path relative to the configured
    publish root such as `2026-11-30` or `movielens/2026-11-30`. UnknownVersion when empty; a path leaving the
    root raises PathOutsideRootError (both permanent: the form's value stays the same on a retry)."""
    text = str(version or "").strip().strip("/")
    if not text:
        raise UnknownVersion("no version given: name a published version, e.g. 2026-11-30 or movielens/2026-11-30")
    path = resolve_under(publish_root, text)
    if path == resolve_under(publish_root, ""):
        raise UnknownVersion(f"{version!r} names the publish root itself, not a version")
    return path.parent, path.name


def promoted(publish_root: str | Path, folder: Path, snapshot: str, outcome: Outcome) -> Promoted:
    """The task result of a promotion of `{folder}/{snapshot}` (`folder`: the namespace's publish root)."""
    record = outcome.record or {}
    version = (folder / snapshot).relative_to(resolve_under(publish_root, "")).as_posix()
    return Promoted(
        moved=outcome.moved,
        version=version,
        snapshot=snapshot,
        publish_root=str(folder),
        serving=outcome.serving,
        verdict=outcome.verdict,
        kind=record.get("kind"),
        forced=bool(record.get("forced", False)),
        message=outcome.message,
    )


def event_extra(result: Promoted) -> dict[str, Any]:
    """The `semantic_ids_serving` event's extra: which version consumers should load now, and why it may be."""
    return {
        "version": result["version"],
        "snapshot": result["snapshot"],
        "verdict": str(result["verdict"]),
        "kind": str(result["kind"]) if result["kind"] is not None else None,
        "forced": result["forced"],
        "serving_path": str(Path(result["publish_root"]) / SERVING),
    }
