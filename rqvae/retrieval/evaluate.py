"""Judge ID sets downstream: train the same small retriever on each, on the same split, and compare.

All ID sets are cut to the items they have in common, so each has the same catalogue and the same split
(interactions with other items are dropped and counted): any difference then comes from the IDs alone. The
split's protocol (RetrievalConfig.protocol) decides which events are tested: each user's last one, or the last
20% of them (see rqvae.io.interactions).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict

import numpy as np

from ..errors import InputError
from ..io.interactions import Interactions
from ..options import plain
from .cache import RunCache, run_key
from .data import PreparedSplit, Sequences, prepare_split, test_events
from .index import PrefixIndex
from .report import METRICS, RetrievalReport
from .tokens import IdTable
from .train import RetrievalConfig, RunResult, run_summary, train_and_score

logger = logging.getLogger(__name__)


def common_items(id_sets: Mapping[str, IdTable]) -> np.ndarray:
    """Sorted item ids present in every ID set."""
    if not id_sets:
        raise ValueError("need at least one ID set")
    items = None
    for table in id_sets.values():
        items = table.item_ids if items is None else np.intersect1d(items, table.item_ids)
    return np.unique(items)


def eval_users(n_users: int, max_users: int, seed: int) -> np.ndarray:
    """Positions of the evaluated users: all, or a seeded sample of ``max_users`` (sorted)."""
    if max_users <= 0 or max_users >= n_users:
        return np.arange(n_users)
    return np.sort(np.random.default_rng(seed).choice(n_users, max_users, replace=False))


def cold_mask(prepared: PreparedSplit, users: np.ndarray, threshold: int) -> np.ndarray:
    """[T] bool per test event of the ``users``: its item has fewer than ``threshold`` training interactions (over
    all users)."""
    split = prepared.split
    test = split.items[test_events(split, users)[1]]
    items, counts = np.unique(split.train_items, return_counts=True)
    if len(items) == 0:
        return np.ones(len(test), bool)
    pos = np.minimum(np.searchsorted(items, test), len(items) - 1)
    n = np.where(items[pos] == test, counts[pos], 0)
    return n < threshold


def evaluate_id_sets(
    id_sets: Mapping[str, IdTable],
    interactions: Interactions,
    config: RetrievalConfig | None = None,
    seeds: Sequence[int] | None = None,
    cache: RunCache | None = None,
) -> RetrievalReport:
    """Train and score one retriever per (ID set, seed); the first set is the default baseline of the report.

    ``cache``: finished runs are stored there and reused when IDs, split, users, config and seed are the same.
    """
    cfg = config or RetrievalConfig()
    seeds = list(seeds) if seeds is not None else [cfg.seed]
    if not seeds:
        raise ValueError("need at least one seed")
    items = common_items(id_sets)
    if len(items) == 0:
        raise InputError("the ID sets have no item in common")
    tables = {name: t if len(t) == len(items) else t.restrict(items) for name, t in id_sets.items()}
    for name, table in id_sets.items():
        if len(table) != len(items):
            logger.warning("ID set %r: %d of its %d items are not in every set; evaluated without them",
                           name, len(table) - len(items), len(table))
    prepared = prepare_split(interactions, items, cfg.protocol, cfg.min_interactions)
    users = eval_users(len(prepared.split), cfg.max_users, cfg.seed)
    cold = cold_mask(prepared, users, cfg.cold_threshold)
    groups = test_events(prepared.split, users)[0]
    info = {
        "n_interactions": prepared.n_interactions,
        "dropped_interactions": prepared.dropped_interactions,
        "dropped_users": prepared.dropped_users,
        "n_split_users": len(prepared.split),
        "n_items": len(items),
        "n_train_interactions": int(prepared.split.n_train.sum()),
        "n_test_events": len(groups),
    }
    per_event: dict[str, dict[str, np.ndarray]] = {}
    runs: dict[str, list[dict]] = {}
    for name, table in tables.items():
        t0 = time.perf_counter()
        seqs = Sequences(prepared.split, table, cfg.history)
        index = PrefixIndex(table)
        results = [_run(seqs, index, table, prepared, users, cfg, seed, cache) for seed in seeds]
        per_event[name] = {m: np.stack([r.metrics[m] for r in results]) for m in METRICS}
        runs[name] = [{"seed": s, **run_summary(r)} for s, r in zip(seeds, results, strict=True)]
        logger.info("ID set %r: %d seed(s) in %.1fs; recall@10 %.4f, NLL %.4f", name, len(seeds),
                    time.perf_counter() - t0, per_event[name]["recall@10"].mean(), per_event[name]["nll"].mean())
    _, groups = np.unique(groups, return_inverse=True)  # the index into the evaluated users of each event
    return RetrievalReport(list(tables), seeds, prepared.split.users[users], groups, cold, per_event, runs, info,
                           plain(asdict(cfg)), cfg.protocol.value)


def _run(seqs: Sequences, index: PrefixIndex, table: IdTable, prepared: PreparedSplit, users: np.ndarray,
         cfg: RetrievalConfig, seed: int, cache: RunCache | None) -> RunResult:
    """One (ID set, seed) run, from the cache when it holds it."""
    if cache is None:
        return train_and_score(seqs, index, table.item_ids, users, cfg, seed)
    key = run_key(table, prepared, users, asdict(cfg), seed)
    hit = cache.get(key)
    if hit is not None:
        logger.info("retriever seed %d: reused the cached run %s", seed, key[:12])
        return hit
    result = train_and_score(seqs, index, table.item_ids, users, cfg, seed)
    cache.put(key, result)
    return result
