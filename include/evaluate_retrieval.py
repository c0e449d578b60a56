"""Stages `find_version` and `evaluate_retrieval`: judge a published version by what its IDs are for.

Proxies (reconstruction MSE, codebook usage) do not say whether a generative recommender retrieves better
with these IDs. The evaluation trains the same small retriever (``rqvae.retrieval``) on the same users'
histories with four ID sets side by side and compares them per user:

- ``this``: the version's IDs;
- ``rqkmeans``: residual k-means at the same L x K on the same embeddings (the baseline a learned tokenizer
  must beat to be worth its training time);
- ``random``: random codes at the same L x K (the floor: shows that the instrument can tell IDs apart);
- ``previous``: the previous published version's IDs, when there is one.

All sets are evaluated on one split: interactions on items that every set covers, so per-user differences
are paired. Intermediate files go to `{work_root}/{namespace}/evaluation/{snapshot}/`, never into the
published version; `record_evaluation` copies the outcome there.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from include.files import write_json_atomic
from include.published import MANIFEST, Version, latest_version, previous_version
from include.results import Evaluated, VersionFound
from include.settings import Roots, resolve_under
from rqvae.config import RetrieverOptions
from rqvae.fsutil import sha256_file

log = logging.getLogger(__name__)

RESULT = "result.json"
PAIRED_METRICS = ("recall@10", "ndcg@10", "nll")
# this version against each peer, and the instrument check: can it tell residual k-means from random IDs?
PAIRS = (("this", "rqkmeans"), ("this", "previous"), ("this", "random"), ("rqkmeans", "random"))
SET_LABELS = {
    "this": "this version",
    "rqkmeans": "residual k-means (same L x K)",
    "random": "random IDs",
    "previous": "previous version",
}


@dataclass(frozen=True)
class VersionRef:
    """Everything the evaluation derives from one published version folder (small, for XCom)."""

    snapshot: str
    version_path: str
    publish_root: str
    previous_path: str | None
    interactions_dir: str
    embeddings_dir: str
    work_embeddings: str
    eval_dir: str

    def to_dict(self) -> VersionFound:
        return VersionFound(**asdict(self))

    @classmethod
    def from_dict(cls, found: VersionFound) -> VersionRef:
        """The ref back from `find_version`'s XCom."""
        return cls(**found)


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


def interactions_ready(ref: VersionRef) -> bool:
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


def version_item_ids(ref: VersionRef) -> Any:
    """Item ids of the version (the items with an embedding in its snapshot)."""
    import pyarrow.parquet as pq

    return pq.read_table(Version(Path(ref.version_path)).semantic_ids, columns=["item_id"]).column(0).to_numpy()


def version_embeddings(ref: VersionRef) -> Any:
    """The embeddings the version was trained on: the work artifact if its checksum matches the manifest, else
    the snapshot folder (the work folder may have been re-run or cleaned since)."""
    from rqvae.readers import read_embeddings

    manifest = Version(Path(ref.version_path)).read_manifest()
    expected = (manifest.get("checksums") or {}).get("input")
    work = Path(ref.work_embeddings)
    if expected and work.is_file() and sha256_file(work, tagged=True) == expected:
        return read_embeddings(work)
    source = Path(ref.embeddings_dir)
    if not source.exists():
        raise FileNotFoundError(
            f"cannot rebuild the residual k-means baseline of {ref.snapshot}: neither the work artifact {work} "
            f"(matching the manifest's input checksum) nor the embeddings snapshot {source} is available"
        )
    log.info("work artifact %s missing or changed since publish: reading the snapshot %s", work, source)
    return read_embeddings(source)


def evaluate_retrieval(ref: VersionRef, options: RetrieverOptions | None = None) -> Evaluated:
    """Train and score the retriever on every ID set; write `{eval_dir}/result.json`; return a small summary.

    `options` (default: the evaluation form's defaults) sets RetrievalConfig's epochs and max_users (its other
    fields keep their defaults) and how many seeds, counted from RetrievalConfig's seed, are averaged. The
    baselines use this version's L x K.
    """
    options = options or RetrieverOptions()
    from rqvae.idfile import read_semantic_ids
    from rqvae.interactions import read_interactions
    from rqvae.retrieval import IdTable, RetrievalConfig, evaluate_id_sets, random_ids, rqkmeans_ids

    started = time.perf_counter()
    version = Version(Path(ref.version_path))
    ids_checksum = version.read_manifest()["checksums"]["semantic_ids"]  # before reading the IDs
    sizes = version.codebook_sizes()
    sets = {"this": IdTable(*read_semantic_ids(version.semantic_ids), codebook_sizes=tuple(sizes))}
    config = RetrievalConfig(**options.retrieval_fields())
    seeds = options.seeds
    embeddings = version_embeddings(ref)
    sets["rqkmeans"] = rqkmeans_ids(embeddings.ids, embeddings.vectors, sizes, seed=config.seed)
    sets["random"] = random_ids(sets["this"].item_ids, sizes, seed=config.seed)
    if ref.previous_path:
        previous = Version(Path(ref.previous_path))
        sets["previous"] = IdTable(
            *read_semantic_ids(previous.semantic_ids), codebook_sizes=tuple(previous.codebook_sizes())
        )
    interactions = read_interactions(ref.interactions_dir)
    common = sets["this"].item_ids
    for table in sets.values():
        common = common[_isin(common, table.item_ids)]
    n_events = len(interactions)
    interactions = interactions.restrict_items(common)
    log.info(
        "evaluate_retrieval: %d ID sets %s, %d of %d events on items every set covers, %d seed(s)",
        len(sets), list(sets), len(interactions), n_events, seeds,
    )
    report = evaluate_id_sets(sets, interactions, config, seeds=tuple(config.seed + s for s in range(seeds)))
    result = {
        "snapshot": ref.snapshot,
        "version_path": ref.version_path,
        "semantic_ids_sha256": ids_checksum,
        "previous": Path(ref.previous_path).name if ref.previous_path else None,
        "interactions": ref.interactions_dir,
        "codebook_size": sizes,
        "labels": {name: SET_LABELS[name] for name in sets},
        "n_events": n_events,
        "n_events_used": len(interactions),
        "seconds": round(time.perf_counter() - started, 1),
        "retrieval": report.to_dict(baseline="this"),
        "paired": {
            f"{a}-{b}": {m: report.paired(a, b, m).to_dict() for m in PAIRED_METRICS}
            for a, b in PAIRS
            if a in sets and b in sets
        },
    }
    path = write_json_atomic(Path(ref.eval_dir) / RESULT, result)
    log.info("evaluate_retrieval: %s in %.1fs", path, result["seconds"])
    return Evaluated(result=str(path), sets=list(sets), seconds=result["seconds"])


def _isin(values: Any, pool: Any) -> Any:
    import numpy as np

    return np.isin(values, pool)
