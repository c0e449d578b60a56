"""Stage `publish`: make a validated snapshot visible to consumers, atomically and without going backwards.

The layout it writes (`latest`, the `{snapshot}` pointers, the stored copies under `.versions/` and every file
inside a version) is described and named in include.versions; this module owns how it changes.

Consumers either see the previous version or the complete new one, whatever instruction a kill lands on:
a copy is written into a hidden staging folder, moved under `.versions/` once complete, and made visible by
renaming a fresh symlink over `{snapshot}` (one atomic pointer swap); `latest` is switched the same way.
Nothing a pointer names is ever renamed or deleted, so neither `{snapshot}` nor `latest` can dangle; the
superseded copy of a re-published snapshot is kept one generation (a reader or a run building on it may be
mid-way) and deleted by the publish after. A backfill of old days publishes their versions but leaves
`latest` on the newest snapshot. A file lock serialises publishers, so two runs finishing together cannot
interleave the compare-and-switch. `serving` is not moved here (rqvae.ids.promotion moves it once a version
passes the downstream gate), but the stored copy it names is never deleted.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from include.files import read_json, write_json_atomic
from include.layout import FINISHED_MARKER, RunFolder
from include.params import RunOptions
from include.results import Encoded, Loaded, Published, RunInfo, Trained
from include.snapshot import parse_snapshot
from include.version_extras import add_extras
from include.versions import (
    LATEST,
    LATEST_JSON,
    MANIFEST,
    MODEL_CONFIG,
    SEMANTIC_IDS,
    SERVING,
    VERSIONS,
    Version,
    copy_named_by,
    publish_lock,
    read_latest,
)
from rqvae.errors import PermanentError
from rqvae.io.fsutil import sha256_file, sha256_tree
from rqvae.io.published import swap_link

log = logging.getLogger(__name__)

KEEP_SUPERSEDED = 1  # superseded copies of a snapshot kept for readers and runs still using them
SKIPPED_MODEL_PARTS = ("checkpoint",)  # optimizer state for resuming: large and useless to consumers


class PublishError(PermanentError, RuntimeError):
    """Publishing was refused: an artifact is missing or its validation did not pass.

    Permanent: the run's own work folder does not change between tries. Transient publish failures (a full
    disk, an I/O error while copying or renaming) stay the OSErrors they are and keep the normal retries; the
    publish lock blocks rather than failing when busy.
    """


def publish(
    run: RunInfo,
    options: RunOptions,
    *,
    loaded: Loaded | None,
    trained: Trained | None,
    encoded: Encoded | None,
    run_id: str | None = None,
    dag_id: str | None = None,
    params: dict[str, Any] | None = None,
) -> Published:
    """Publish `{run["work_dir"]}` as version `{run["publish_root"]}/{snapshot}/` and move `latest` if not older.

    `loaded`, `trained`, `encoded`: the results of load_embeddings, train_rqvae and resolve_collisions, whose
    counts and metrics go into the manifest (None: not known, e.g. a work folder prepared by other means; the
    manifest then takes what the validation reports say). `options.export_json` adds semantic_id_dict.json.
    `run_id`, `dag_id`, `params`: the Airflow run that published (None outside Airflow). Returns
    `{version_path, latest, moved_latest, manifest, n_items}`.
    """
    if run["publish_root"] is None:
        raise PublishError(f"cannot publish {run['work_dir']}: the run has no publish root")
    snapshot, work_dir, publish_root = run["snapshot"], run["work_dir"], run["publish_root"]
    export_json = options.export_json
    snapshot = parse_snapshot(snapshot)
    folder = RunFolder(Path(work_dir))
    root = Path(publish_root)
    _check_ready(folder)
    root.mkdir(parents=True, exist_ok=True)

    with publish_lock(root):
        _remove_leftovers(root, snapshot)
        token = f"{datetime.now(UTC):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}"  # sorts by publish time
        staging = root / f".staging-{snapshot}-{token[-8:]}"
        try:
            manifest = _stage(staging, folder, snapshot, export_json, run_id, dag_id, params or {},
                              loaded or {}, trained or {}, encoded or {})
            stored = _store(staging, root, snapshot, token)
        finally:
            if staging.exists():
                shutil.rmtree(staging)
        version = _link_snapshot(root, snapshot, stored)
        latest, moved = _move_latest(root, snapshot, run_id)
        _drop_copies(root, snapshot)
    # the run is finished: include.layout.prune_runs may now delete its folder
    write_json_atomic(folder.root / FINISHED_MARKER, {"snapshot": snapshot, "run_id": run_id, "copy": token})
    log.info("publish: %s -> copy %s (latest -> %s, moved: %s)", version, token, latest, moved)
    return Published(
        version_path=str(version),
        latest=latest,
        moved_latest=moved,
        manifest=str(version / MANIFEST),
        n_items=manifest["counts"]["n_items"],
    )


def _check_ready(folder: RunFolder) -> None:
    """Refuse to publish anything that did not pass both validation suites."""
    needed = [folder.semantic_ids, folder.model_dir / MODEL_CONFIG, folder.input_report, folder.codes_report]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise PublishError(f"cannot publish {folder.root}: missing {missing}; run the upstream tasks first")
    for report in (folder.input_report, folder.codes_report):
        if not read_json(report).get("success"):
            raise PublishError(f"cannot publish {folder.root}: validation report {report} did not pass")


def _stage(
    staging: Path,
    folder: RunFolder,
    snapshot: str,
    export_json: bool,
    run_id: str | None,
    dag_id: str | None,
    params: dict[str, Any],
    load: Loaded | dict[str, Any],
    train: Trained | dict[str, Any],
    encode: Encoded | dict[str, Any],
) -> dict[str, Any]:
    """Fill the staging folder; the manifest is written last, so a complete manifest means a complete copy."""
    import pyarrow.parquet as pq

    from rqvae.io.idfile import merge_semantic_ids, semantic_id_parts

    version = Version(staging)
    staging.mkdir()
    n_parts = len(semantic_id_parts(folder.semantic_ids))
    merge_semantic_ids(folder.semantic_ids, version.semantic_ids)  # consumers get one file
    shutil.copytree(folder.model_dir, version.model_dir, ignore=shutil.ignore_patterns(*SKIPPED_MODEL_PARTS))
    version.validation_dir.mkdir()
    for report in (folder.input_report, folder.codes_report):
        shutil.copy2(report, version.validation_dir / report.name)
    n_json = None
    if export_json:
        from rqvae.io.idfile import write_json_dict

        n_json = write_json_dict(version.semantic_ids, version.json_dict)
    extras = add_extras(staging, folder, snapshot, train, encode)  # item hashes, churn, collisions, report/

    _make_readable(staging)
    metadata = pq.ParquetFile(version.semantic_ids).metadata
    model_checksum, _ = sha256_tree(version.model_dir)
    input_report = read_json(folder.input_report)
    codes_report = read_json(folder.codes_report)
    files = {
        p.relative_to(staging).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p, tagged=True)}
        for p in sorted(staging.rglob("*"))
        if p.is_file()
    }
    manifest = {
        "snapshot": snapshot,
        "version": snapshot,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "airflow": {"dag_id": dag_id, "run_id": run_id},
        "work": {"run_folder": folder.root.name},  # the run's own work folder (include.layout)
        "counts": {
            "n_items": metadata.num_rows,
            "n_input_items": load.get("n_items", input_report.get("n_items")),
            "dim": load.get("dim", input_report.get("dim")),
            "json_items": n_json,
            "encode_shards": int(encode.get("n_shards", n_parts)),
            "id_parts": n_parts,  # one per shard, or per level-1 group when resolved out of core
        },
        "config": {"model": read_json(folder.model_dir / MODEL_CONFIG), "params": params},
        "metrics": {"train": train.get("metrics", {}), "encode": encode, "codes": codes_report.get("metrics", {})},
        "validation": {"input": _brief(input_report), "codes": _brief(codes_report)},
        **extras,
        "checksums": {
            "input": load.get("checksum") or sha256_file(folder.embeddings, tagged=True),
            "model": model_checksum,
            "semantic_ids": files[SEMANTIC_IDS]["sha256"],
        },
        "files": files,
    }
    write_json_atomic(version.manifest, manifest)
    return manifest


def _make_readable(folder: Path) -> None:
    """Published files are for every consumer: temp-file writers create them 0600, copies keep that mode."""
    folder.chmod(0o755)
    for path in folder.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _brief(report: dict[str, Any]) -> dict[str, Any]:
    """The validation summary the manifest keeps (the full reports are copied beside it)."""
    return {k: report.get(k) for k in ("suite", "success", "evaluated", "failed", "seconds")}


def _store(staging: Path, root: Path, snapshot: str, token: str) -> Path:
    """Move the complete staging folder to its immutable place; nothing names it yet."""
    holder = root / VERSIONS / snapshot / token
    holder.mkdir(parents=True)
    for folder in (holder.parent.parent, holder.parent, holder):
        folder.chmod(0o755)
    os.rename(staging, holder / snapshot)
    return holder / snapshot


def _link_snapshot(root: Path, snapshot: str, stored: Path) -> Path:
    """Make `{root}/{snapshot}` name the stored copy; returns that path (what consumers are given)."""
    link = root / snapshot
    target = stored.relative_to(root)
    if link.is_dir() and not link.is_symlink():
        _convert_folder(root, snapshot, target)
    else:
        swap_link(link, target)
    return link


def _convert_folder(root: Path, snapshot: str, target: Path) -> None:
    """Replace a version folder published before copies were immutable by a symlink to the new copy.

    A folder cannot be swapped for a symlink in one rename, so while its name is missing `latest` (when it
    names this snapshot) points straight at the new copy; `_move_latest` then points it back at the name.
    """
    if read_latest(root) == snapshot:
        swap_link(root / LATEST, target)  # `.versions/{snapshot}/{copy}/{snapshot}`: still named {snapshot}
    aside = root / f".old-{snapshot}-{uuid.uuid4().hex[:8]}"
    os.rename(root / snapshot, aside)
    swap_link(root / snapshot, target)
    shutil.rmtree(aside)
    log.info("converted %s from a folder into a pointer to %s", snapshot, target)


def _move_latest(root: Path, snapshot: str, run_id: str | None) -> tuple[str, bool]:
    """Point `latest` at `snapshot` unless it already points to a newer one; returns (latest, moved)."""
    current = read_latest(root)
    if current is not None and current > snapshot:
        log.info("latest stays at %s: %s is older (a backfill)", current, snapshot)
        return current, False
    swap_link(root / LATEST, snapshot)
    write_json_atomic(
        root / LATEST_JSON,
        {
            "snapshot": snapshot,
            "path": snapshot,
            "run_id": run_id,
            "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    )
    return snapshot, True


def _drop_copies(root: Path, snapshot: str) -> None:
    """Delete the stored copies of `snapshot` no pointer names: all but the newest `KEEP_SUPERSEDED` older than
    the current one, and any newer one (a publish killed before linking it). The copy `serving` names is never
    deleted: consumers read it until a promotion moves them on. We hold the publish lock."""
    parent = root / VERSIONS / snapshot
    if not parent.is_dir():
        return
    current = copy_named_by(root / snapshot)
    named = {current, copy_named_by(root / LATEST), copy_named_by(root / SERVING)}
    copies = sorted(p for p in parent.iterdir() if p.name not in named)
    older = [p for p in copies if current is not None and p.name < current]
    for copy in [*older[: max(0, len(older) - KEEP_SUPERSEDED)], *(p for p in copies if p not in older)]:
        log.info("removing stored copy %s (superseded or never linked)", copy)
        shutil.rmtree(copy)


def _remove_leftovers(root: Path, snapshot: str) -> None:
    """Clean up after a publish killed half way (we hold the lock, so no other publisher is mid-way).

    A pre-immutable version folder moved aside whose pointer never arrived is moved back first: it is complete
    and `latest` may name it. Then staging folders, moved-aside copies, temp pointers and unnamed stored copies
    are deleted.
    """
    final = root / snapshot
    for old in sorted(root.glob(f".old-{snapshot}-*")):
        if not os.path.lexists(final) and (old / MANIFEST).is_file():
            log.warning("restoring %s: an interrupted publish had moved it aside", final)
            os.rename(old, final)
            continue
        log.warning("removing leftover %s from an interrupted publish", old)
        shutil.rmtree(old)
    for leftover in root.glob(f".staging-{snapshot}-*"):
        log.warning("removing leftover %s from an interrupted publish", leftover)
        shutil.rmtree(leftover)
    for pointer in [*root.glob(".*.link-*"), *root.glob(f".{LATEST_JSON}.tmp-*")]:
        log.warning("removing leftover %s from an interrupted pointer switch", pointer.name)
        pointer.unlink()
    _drop_copies(root, snapshot)
