"""synth: clustered unit vectors with unique catalog-like ids, deterministic and readable by rqvae.io.readers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from rqvae.io.readers import read_embeddings
from rqvae.io.synth import synth
from rqvae.io.validate import check_embeddings


def test_single_file_properties(tmp_path: Path) -> None:
    out = synth(tmp_path / "emb.parquet", 5000, dim=32, seed=3)
    assert out == tmp_path / "emb.parquet" and not list(tmp_path.glob("*.tmp*"))
    emb = read_embeddings(out)
    assert (len(emb), emb.dim) == (5000, 32)
    check_embeddings(emb.ids, emb.vectors, expected_dim=32)  # unique ids, finite, non-zero
    np.testing.assert_allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-5)
    assert np.abs(emb.vectors).max() < 0.5
    steps = np.diff(emb.ids)
    assert steps.min() >= 1 and steps.max() > 1  # unique, increasing, not contiguous
    assert emb.ids.min() > 10**10


def test_clustered_structure(tmp_path: Path) -> None:
    emb = read_embeddings(synth(tmp_path / "emb.parquet", 4000, seed=0))
    sims = emb.vectors[:300] @ emb.vectors.T
    sims[np.arange(300), np.arange(300)] = -1.0
    nearest = sims.max(axis=1)
    assert np.median(nearest) > 0.85  # items have close neighbours ...
    assert np.median(sims) < 0.5  # ... but most pairs are far apart
    assert len(np.unique(np.round(emb.vectors, 4), axis=0)) == 4000  # and items are distinct


def test_deterministic_per_seed(tmp_path: Path) -> None:
    a = read_embeddings(synth(tmp_path / "a.parquet", 3000, dim=16, seed=7, chunk_rows=1000))
    b = read_embeddings(synth(tmp_path / "b.parquet", 3000, dim=16, seed=7, chunk_rows=1000))
    c = read_embeddings(synth(tmp_path / "c.parquet", 3000, dim=16, seed=8, chunk_rows=1000))
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.vectors, b.vectors)
    assert not np.array_equal(a.vectors, c.vectors)


def test_directory_parts_success_marker_and_progress(tmp_path: Path) -> None:
    snapshot = tmp_path / "2025-01-01"
    snapshot.mkdir()
    (snapshot / "part-00009.parquet").write_bytes(b"stale")
    calls: list[tuple[int, int]] = []
    synth(
        snapshot,
        2500,
        dim=8,
        seed=1,
        chunk_rows=1000,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert sorted(p.name for p in snapshot.iterdir()) == [
        "_SUCCESS",
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    assert calls == [(1000, 2500), (2000, 2500), (2500, 2500)]
    assert [pq.ParquetFile(p).metadata.num_rows for p in sorted(snapshot.glob("part-*"))] == [1000, 1000, 500]
    single = read_embeddings(synth(tmp_path / "one.parquet", 2500, dim=8, seed=1, chunk_rows=1000))
    parts = read_embeddings(snapshot)
    np.testing.assert_array_equal(parts.ids, single.ids)
    np.testing.assert_array_equal(parts.vectors, single.vectors)


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n > 0"):
        synth(tmp_path / "x.parquet", 0)
    with pytest.raises(ValueError, match="n_clusters"):
        synth(tmp_path / "x.parquet", 10, n_clusters=0)
    assert not (tmp_path / "x.parquet").exists()
