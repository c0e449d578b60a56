"""The published-version layout: where `publish` puts a version, and how every reader finds one.

Under a publish root (one per data-set namespace)::

    latest                 symlink -> {snapshot} (relative); the newest snapshot published, never older
    latest.json            the same pointer as a file, for readers that cannot follow symlinks
    serving                symlink -> .versions/{snapshot}/{copy}/{snapshot}: the version consumers read, moved
                           only by promotion (rqvae.ids.promotion) to a copy that passed the downstream gate
    serving.json           the same pointer as a file, with the promotion that set it
    promotions.jsonl       one line per move of `serving` (who, when, from, to, reason, verdict, kind)
    {snapshot}             symlink -> .versions/{snapshot}/{copy}/{snapshot}: the version as published
    .versions/{snapshot}/{copy}/{snapshot}/
                           one immutable stored copy per publish ({copy}: publish time + random id)
    .publish.lock          serialises publishers, promotions and record_evaluation's writes into a version

Inside a version (`Version`): semantic_ids.parquet, model/, manifest.json (written last: a version with a
manifest is complete), validation/, item_hashes.parquet, serving_index/, migration.parquet,
retired_ids.parquet, collision_audit.parquet, report/, semantic_id_dict.json (optional), and later
evaluation.json + report/evaluation.png from the evaluation DAG.

Every name is spelled here and nowhere else, except those of the root's pointers, its lock and the two files a
promotion reads: they are the library's (rqvae.io.published, re-exported here), because the `rqvae promote` CLI
must move `serving` without the pipeline package. include.stages.publish writes this layout (atomically, under
the lock); incremental mode, lineage, the report, the evaluation DAG and the UI plugin read it through this
module. Standard library only: the Airflow API server imports the UI plugin, and with it this module, at start.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from include.snapshot import parse_snapshot
from rqvae.io.published import EVALUATION, LATEST, LATEST_JSON, MANIFEST, VERSIONS, read_pointer
from rqvae.io.published import LOCK_FILE as LOCK_FILE  # re-exported: the publish root's names, one spelling
from rqvae.io.published import PROMOTIONS as PROMOTIONS
from rqvae.io.published import SERVING as SERVING
from rqvae.io.published import SERVING_JSON as SERVING_JSON
from rqvae.io.published import copy_named_by as copy_named_by
from rqvae.io.published import publish_lock as publish_lock

# inside a version (MANIFEST and EVALUATION come from rqvae.io.published)
SEMANTIC_IDS = "semantic_ids.parquet"
MODEL_DIR = "model"
MODEL_CONFIG = "config.json"  # rqvae.io.checkpoint.CONFIG_NAME, repeated so readers need not import torch
VALIDATION_DIR = "validation"
JSON_DICT = "semantic_id_dict.json"
ITEM_HASHES = "item_hashes.parquet"  # item_id, emb_hash: what an incremental run compares
SERVING_INDEX = "serving_index"
MIGRATION = "migration.parquet"
RETIRED_IDS = "retired_ids.parquet"
COLLISION_AUDIT = "collision_audit.parquet"
REPORT_DIR = "report"
REPORT_INDEX = "index.html"
EVALUATION_PLOT = "evaluation.png"  # in report/


@dataclass(frozen=True)
class Version:
    """One version folder (a published `{snapshot}`, its stored copy, or publish's staging folder)."""

    path: Path

    @property
    def name(self) -> str:
        """The snapshot (a stored copy and a staging folder's content are named after it too)."""
        return self.path.name

    @property
    def semantic_ids(self) -> Path:
        return self.path / SEMANTIC_IDS

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL_DIR

    @property
    def model_config(self) -> Path:
        return self.model_dir / MODEL_CONFIG

    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST

    @property
    def validation_dir(self) -> Path:
        return self.path / VALIDATION_DIR

    @property
    def json_dict(self) -> Path:
        return self.path / JSON_DICT

    @property
    def item_hashes(self) -> Path:
        return self.path / ITEM_HASHES

    @property
    def serving_index(self) -> Path:
        return self.path / SERVING_INDEX

    @property
    def migration(self) -> Path:
        return self.path / MIGRATION

    @property
    def retired_ids(self) -> Path:
        return self.path / RETIRED_IDS

    @property
    def collision_audit(self) -> Path:
        return self.path / COLLISION_AUDIT

    @property
    def report_dir(self) -> Path:
        return self.path / REPORT_DIR

    @property
    def report_index(self) -> Path:
        return self.report_dir / REPORT_INDEX

    @property
    def evaluation(self) -> Path:
        return self.path / EVALUATION

    @property
    def evaluation_plot(self) -> Path:
        return self.report_dir / EVALUATION_PLOT

    def is_complete(self) -> bool:
        """Whether the manifest is there: publish writes it last, so the rest is there too."""
        return self.manifest.is_file()

    def read_manifest(self) -> dict[str, Any]:
        return json.loads(self.manifest.read_text(encoding="utf-8"))

    def read_model_config(self) -> dict[str, Any]:
        """The model directory's config.json as stored (rqvae.io.checkpoint.read_config also checks its format)."""
        return json.loads(self.model_config.read_text(encoding="utf-8"))

    def codebook_sizes(self) -> list[int]:
        return [int(k) for k in self.read_model_config()["model"]["codebook_size"]]

    def stored(self) -> Version:
        """The stored copy the name points to: stays the same files if the snapshot is re-published meanwhile."""
        return Version(self.path.resolve())


def version_for(publish_root: str | Path, snapshot: str) -> Version:
    """`{publish_root}/{snapshot}` (whether or not it is published yet)."""
    return Version(Path(publish_root) / parse_snapshot(snapshot))


def read_latest(publish_root: str | Path) -> str | None:
    """The snapshot `latest` names; None before the first publish or when the pointer file is unreadable.

    The symlink is read first (switched atomically); `latest.json` serves file systems without symlinks.
    """
    return read_pointer(publish_root, LATEST, LATEST_JSON)


def latest_version(publish_root: str | Path) -> Version | None:
    """The version `latest` names (by name: `.stored()` pins its files), or None before the first publish."""
    name = read_latest(publish_root)
    return Version(Path(publish_root) / name) if name is not None else None


def _is_snapshot(name: str) -> bool:
    try:
        return parse_snapshot(name) == name
    except ValueError:
        return False


def list_versions(publish_root: str | Path) -> list[Version]:
    """The complete published versions of a root, oldest first: `{snapshot}` entries holding a manifest.

    Hidden entries (stored copies, staging folders, leftovers) and `latest` are not versions.
    """
    root = Path(publish_root)
    if not root.is_dir():
        return []
    found = [
        Version(entry)
        for entry in root.iterdir()
        if not entry.name.startswith(".") and _is_snapshot(entry.name) and entry.is_dir()
    ]
    return sorted((v for v in found if v.is_complete()), key=lambda v: v.name)


def previous_version(publish_root: str | Path, snapshot: str) -> Version | None:
    """The newest published version older than `snapshot`: what this one replaces for consumers."""
    older = [v for v in list_versions(publish_root) if v.name < snapshot]
    return older[-1] if older else None


def stored_copy_as_name(parts: tuple[str, ...]) -> tuple[str, ...]:
    """Path parts under a publish root with each stored copy `.versions/{snapshot}/{copy}/{snapshot}` read as
    `{snapshot}`: the one hidden folder a version name resolves into (any other hidden part is kept)."""
    out: list[str] = []
    i = 0
    while i < len(parts):
        at_copy = parts[i] == VERSIONS and i + 3 < len(parts) and parts[i + 1] == parts[i + 3]
        if at_copy and not parts[i + 2].startswith("."):
            i += 3
        out.append(parts[i])
        i += 1
    return tuple(out)
