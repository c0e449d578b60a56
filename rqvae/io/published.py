"""The pointers of a publish root and the lock that serialises their changes: the part of the published layout a
process outside the pipeline needs (the `rqvae promote` CLI, a serving process choosing which version to load).

A publish root (one per data-set namespace) holds::

    latest, latest.json     the newest complete version: moved by publish, never backwards
    serving, serving.json   the version consumers read: moved by promotion only (rqvae.ids.promotion)
    promotions.jsonl        one line per move of `serving`, append-only
    {snapshot}              symlink -> .versions/{snapshot}/{copy}/{snapshot}: the immutable stored copy
    .publish.lock           held by whoever changes a pointer or adds files to a version

These names are spelled here, in the library, because the CLI must work without the pipeline package
(`include/` is not part of the installed distribution and the library never imports it); include.versions
re-exports them and owns the rest of the layout. A pointer is switched by renaming a fresh symlink over it, so
a reader sees the old target or the new one, never neither. Standard library only: the Airflow API server
imports this (through the UI plugin) at start.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .fsutil import temp_path

LATEST = "latest"
LATEST_JSON = "latest.json"
SERVING = "serving"
SERVING_JSON = "serving.json"
PROMOTIONS = "promotions.jsonl"
PROMOTION_PENDING = ".serving.pending.json"  # a promotion's record while its swap is under way (the journal)
VERSIONS = ".versions"  # the immutable stored copies the `{snapshot}` symlinks name
LOCK_FILE = ".publish.lock"
ALIASES = (LATEST, SERVING)  # pointers that share the root with the versions' names

# inside a version: the two files a promotion reads
MANIFEST = "manifest.json"  # written last by publish: a version with a manifest is complete
EVALUATION = "evaluation.json"  # the downstream verdict, added by the evaluation DAG


@contextmanager
def publish_lock(publish_root: str | Path) -> Iterator[None]:
    """An exclusive advisory lock on `{root}/.publish.lock`, held while versions and pointers change (publish,
    promotion) or files are added to a version (record_evaluation)."""
    with open(Path(publish_root) / LOCK_FILE, "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def swap_link(link: Path, target: Path | str) -> None:
    """Point `link` at `target` with one rename over it: readers see the old target or the new, never neither."""
    tmp = temp_path(link, "link")  # `.{name}.link-{8 hex}`: hidden, and found again by the next writer
    os.symlink(target, tmp)
    os.replace(tmp, link)


def read_pointer(publish_root: str | Path, name: str, json_name: str) -> str | None:
    """The snapshot a pointer names (`latest`, `serving`); None when there is none or its file is unreadable.

    The symlink is read first (it is what switches atomically); `{json_name}` serves file systems without
    symlinks. A pointer naming a stored copy (`.versions/{snapshot}/{copy}/{snapshot}`) ends in the snapshot too.
    """
    root = Path(publish_root)
    link = root / name
    if link.is_symlink():
        return Path(os.readlink(link)).name
    try:
        pointer = json.loads((root / json_name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(pointer, dict) and pointer.get("snapshot"):
        return str(pointer["snapshot"])
    return None


def copy_named_by(link: Path) -> str | None:
    """The `{copy}` a pointer (`{snapshot}`, `latest`, `serving`) names as `.versions/{snapshot}/{copy}/{snapshot}`,
    else None (a pointer to a name, a plain folder, or nothing)."""
    parts = Path(os.readlink(link)).parts if link.is_symlink() else ()
    return parts[-2] if len(parts) >= 4 and parts[-4] == VERSIONS else None
