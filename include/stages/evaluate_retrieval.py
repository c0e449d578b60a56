"""Stage `evaluate_retrieval`: judge a published version by what its IDs are for.

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
from dataclasses import replace
from pathlib import Path
from typing import Any

from include.files import write_json_atomic
from include.results import Evaluated
from include.version_ref import VersionRef, version_embeddings
from include.versions import Version
from rqvae.config import RetrieverOptions
from rqvae.modes import Protocol

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


def evaluate_retrieval(ref: VersionRef, options: RetrieverOptions) -> Evaluated:
    """Train and score the retriever on every ID set; write `{eval_dir}/result.json`; return a small summary.

    `options` (the evaluation form's Retriever section) sets RetrievalConfig's protocol, epochs and max_users (its
    other fields keep their defaults) and how many seeds, counted from RetrievalConfig's seed, are averaged. With
    the temporal protocol and `also_leave_one_out`, the same ID sets are also judged leave-one-out (TIGER's
    protocol), reported beside; the gate reads `paired`, the protocol's own. The baselines use this version's
    L x K.
    """
    from rqvae.io.idfile import read_semantic_ids
    from rqvae.io.interactions import read_interactions
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
    runs = tuple(config.seed + s for s in range(seeds))
    report = evaluate_id_sets(sets, interactions, config, seeds=runs)
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
        "protocol": config.protocol.value,  # the gate judges with this one
        "retrieval": report.to_dict(baseline="this"),
        "paired": _paired(report),
    }
    if options.also_leave_one_out and config.protocol != Protocol.LEAVE_ONE_OUT:
        loo = evaluate_id_sets(sets, interactions, replace(config, protocol=Protocol.LEAVE_ONE_OUT), seeds=runs)
        result["leave_one_out"] = {"retrieval": loo.to_dict(baseline="this"), "paired": _paired(loo)}
    result["seconds"] = round(time.perf_counter() - started, 1)
    path = write_json_atomic(Path(ref.eval_dir) / RESULT, result)
    log.info("evaluate_retrieval: %s in %.1fs", path, result["seconds"])
    return Evaluated(result=str(path), sets=list(sets), seconds=result["seconds"])


def _paired(report: Any) -> dict[str, dict[str, Any]]:
    """This version against each peer, and the instrument check, with each pair's detectable difference."""
    names = set(report.names)
    return {f"{a}-{b}": {**{m: report.paired(a, b, m).to_dict() for m in PAIRED_METRICS}, "mde": report.mde(a, b)}
            for a, b in PAIRS if a in names and b in names}


def _isin(values: Any, pool: Any) -> Any:
    import numpy as np

    return np.isin(values, pool)
