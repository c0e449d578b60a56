"""Synthetic item embeddings shaped like the real 32-d competition feature, at any scale.

The real catalog (5.7M items) cannot ship with the repo, yet the pipeline must be exercised at that size
and residual quantisation needs something to find: so items are drawn hierarchically (popular and rare
coarse clusters, sub-clusters inside them, per-item noise), squashed coordinate-wise so values stay within
about +-0.35 like the real feature, and L2-normalised. Generation is vectorised per chunk and streamed to
Parquet, so memory depends on ``chunk_rows``, not on ``n``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.parquet as pq

from ..config import DEFAULT_USERS
from ..errors import ConfigError
from ..units import SECONDS_PER_DAY
from .fsutil import atomic_path
from .readers import ROW_GROUP_ROWS, embeddings_schema, embeddings_table

if TYPE_CHECKING:
    from .interactions import Interactions

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

SUB_CLUSTERS = 16  # sub-clusters per coarse cluster: the second residual level has work to do
BIAS_SCALE = 0.45  # shared offset: real embeddings are not centred (mean vector norm ~0.3)
SUB_SCALE = 0.35  # spread of sub-centres around their coarse centre (per coordinate)
NOISE_SCALE = 0.42  # median per-item noise: residual k-means at 3 x 256 then finds ~85% unique IDs at 100k
SQUASH = 0.9  # tanh gain: bounds coordinates like the real feature
POPULARITY_EXPONENT = 0.7  # Zipf-like cluster sizes, as in real catalogs
ID_BASE = 20_000_000_000  # real anonymous_cid values are 11-digit numbers
ITEMS_PER_CLUSTER = 1000  # default_clusters: about one coarse cluster per this many items


@dataclass(frozen=True)
class _Mixture:
    """Cluster geometry shared by all chunks (a few MiB even with thousands of clusters)."""

    sub_centres: np.ndarray  # [clusters * SUB_CLUSTERS, dim] float32
    noise: np.ndarray  # [clusters * SUB_CLUSTERS] float32, per-coordinate noise std
    popularity: np.ndarray  # [clusters] float64, sums to 1


def default_clusters(n: int) -> int:
    """About one coarse cluster per thousand items, between 16 and 2048."""
    return int(np.clip(n // ITEMS_PER_CLUSTER, 16, 2048))


def synth(
    out: str | Path,
    n: int,
    dim: int = 32,
    seed: int = 0,
    n_clusters: int | None = None,
    chunk_rows: int = 500_000,
    progress: Progress | None = None,
) -> Path:
    """Write ``n`` clustered unit vectors with unique non-contiguous int64 ids; deterministic per arguments.

    ``out`` ending in ``.parquet`` gives one file (written atomically); anything else a directory of
    ``part-NNNNN.parquet`` files with ``_SUCCESS`` written last, like the upstream snapshots.
    """
    if n <= 0 or dim < 2 or chunk_rows <= 0:
        raise ConfigError(
            f"need n > 0, dim >= 2 and chunk_rows > 0; got n={n}, dim={dim}, chunk_rows={chunk_rows}"
        )
    clusters = n_clusters if n_clusters is not None else default_clusters(n)
    if clusters < 1:
        raise ConfigError(f"n_clusters must be >= 1, got {clusters}")
    mixture = _build_mixture(seed, clusters, dim)
    base, stride = _id_layout(seed)
    chunks = _chunks(mixture, seed, n, chunk_rows, base, stride, progress)
    target = Path(out)
    log.info("synthesising %d x %d embeddings (%d clusters, seed %d) into %s", n, dim, clusters, seed, target)
    if target.suffix == ".parquet":
        _write_file(target, chunks, dim)
    else:
        _write_parts(target, chunks)
    return target


def _build_mixture(seed: int, clusters: int, dim: int) -> _Mixture:
    rng = np.random.default_rng([seed, 0])
    bias = rng.standard_normal(dim) * BIAS_SCALE
    coarse = bias + rng.standard_normal((clusters, dim))
    subs = (
        np.repeat(coarse, SUB_CLUSTERS, axis=0)
        + rng.standard_normal((clusters * SUB_CLUSTERS, dim)) * SUB_SCALE
    )
    noise = NOISE_SCALE * np.exp(0.35 * rng.standard_normal(clusters * SUB_CLUSTERS))
    weights = (np.arange(clusters) + 1.0) ** -POPULARITY_EXPONENT
    popularity = rng.permutation(weights / weights.sum())
    return _Mixture(subs.astype(np.float32), noise.astype(np.float32), popularity)


def _id_layout(seed: int) -> tuple[int, int]:
    """A seeded start and stride: ids are unique and increasing but have gaps, like a real catalog."""
    rng = np.random.default_rng([seed, 2])
    return ID_BASE + int(rng.integers(0, 10_000_000)), int(rng.integers(2, 5))


def _chunks(
    mixture: _Mixture, seed: int, n: int, chunk_rows: int, base: int, stride: int, progress: Progress | None
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for index, start in enumerate(range(0, n, chunk_rows)):
        stop = min(n, start + chunk_rows)
        yield _generate(mixture, np.random.default_rng([seed, 1, index]), start, stop, base, stride)
        if progress is not None:
            progress(stop, n)


def _generate(
    mixture: _Mixture, rng: np.random.Generator, start: int, stop: int, base: int, stride: int
) -> tuple[np.ndarray, np.ndarray]:
    rows = stop - start
    coarse = rng.choice(len(mixture.popularity), size=rows, p=mixture.popularity)
    sub = coarse * SUB_CLUSTERS + rng.integers(0, SUB_CLUSTERS, size=rows)
    vectors = rng.standard_normal((rows, mixture.sub_centres.shape[1]), dtype=np.float32)
    vectors *= mixture.noise[sub, None]
    vectors += mixture.sub_centres[sub]
    np.tanh(vectors * np.float32(SQUASH), out=vectors)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    offsets = rng.integers(0, stride, size=rows)
    ids = base + np.arange(start, stop, dtype=np.int64) * stride + offsets
    return ids, vectors


def _write_file(target: Path, chunks: Iterator[tuple[np.ndarray, np.ndarray]], dim: int) -> None:
    with atomic_path(target) as tmp, pq.ParquetWriter(tmp, embeddings_schema(dim)) as writer:
        for ids, vectors in chunks:
            writer.write_table(embeddings_table(ids, vectors), row_group_size=ROW_GROUP_ROWS)


def _write_parts(target: Path, chunks: Iterator[tuple[np.ndarray, np.ndarray]]) -> None:
    """Replace any previous snapshot's parts; ``_SUCCESS`` last tells readers the snapshot is complete."""
    target.mkdir(parents=True, exist_ok=True)
    for stale in [*target.glob("part-*.parquet"), target / "_SUCCESS"]:
        stale.unlink(missing_ok=True)
    for index, (ids, vectors) in enumerate(chunks):
        with atomic_path(target / f"part-{index:05d}.parquet") as tmp:
            pq.write_table(embeddings_table(ids, vectors), tmp, row_group_size=ROW_GROUP_ROWS)
    (target / "_SUCCESS").touch()


def synth_interactions(
    item_ids: np.ndarray, vectors: np.ndarray, n_users: int = DEFAULT_USERS, events: int = 30, step: int = 50,
    seed: int = 0,
) -> Interactions:
    """Users who browse neighbouring items: a behaviour signal tied to content, for demos and tests.

    Items are ordered along a random direction of the embedding space; each user starts at a random item
    and moves up to ``step`` places along that order per event, so consecutive items are similar and a
    retriever with content-aware IDs should predict the next one better than with random IDs.
    """
    from .interactions import Interactions

    ids = np.asarray(item_ids, np.int64)
    if len(ids) < 2 or n_users < 1 or events < 3 or step < 1:
        raise ConfigError(f"need >= 2 items, n_users >= 1, events >= 3, step >= 1; got {len(ids)}, {n_users}, "
                         f"{events}, {step}")
    rng = np.random.default_rng(seed)
    direction = rng.standard_normal(np.asarray(vectors).shape[1]).astype(np.float32)
    order = ids[np.argsort(np.asarray(vectors, np.float32) @ direction, kind="stable")]
    moves = rng.integers(-step, step + 1, size=(n_users, events))
    moves[:, 0] = rng.integers(0, len(ids), size=n_users)
    positions = np.mod(np.cumsum(moves, axis=1), len(ids))
    users = np.repeat(np.arange(1, n_users + 1, dtype=np.int64), events)
    times = 1_700_000_000 + rng.integers(0, SECONDS_PER_DAY, size=n_users)[:, None] + 60 * np.arange(events)[None, :]
    return Interactions.from_arrays(users, order[positions].reshape(-1), times.reshape(-1))
