"""k-means initialisers and the semantic-ID metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rqvae.quantize.kmeans import balanced_assign, fit_codebook, kmeans, nearest
from rqvae.quantize.metrics import assign_dedup, code_metrics, pack_codes


def blobs(n_per: int = 200, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    x = centres.repeat_interleave(n_per, 0) + 0.1 * torch.randn(4 * n_per, 2, generator=g)
    return x, centres


def test_kmeans_finds_well_separated_centres() -> None:
    x, centres = blobs()
    found = kmeans(x, 4, iters=10, generator=torch.Generator().manual_seed(0))
    idx, dist = nearest(centres, found)
    assert sorted(idx.tolist()) == [0, 1, 2, 3]
    assert float(dist.max()) < 0.05


def test_balanced_kmeans_gives_equal_cluster_sizes() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.cat([torch.randn(900, 2, generator=g), torch.randn(100, 2, generator=g) + 8])  # skewed
    centres = fit_codebook(x, 10, "bkmeans", iters=5, generator=g)
    sizes = torch.bincount(balanced_assign(x, centres), minlength=10)
    assert sizes.max() <= 100 and sizes.sum() == 1000
    plain = torch.bincount(nearest(x, fit_codebook(x, 10, "kmeans", 5, g))[0], minlength=10)
    assert plain.max() > sizes.max()  # plain k-means is not balanced on this data


def test_callable_and_random_methods() -> None:
    x, _ = blobs()
    calls = []

    def first_k(data: torch.Tensor, k: int) -> torch.Tensor:
        calls.append(k)
        return data[:k]

    assert torch.equal(fit_codebook(x, 3, first_k, 20), x[:3]) and calls == [3]
    assert fit_codebook(x, 5, "none", 20, generator=torch.Generator().manual_seed(0)).shape == (5, 2)
    with pytest.raises(ValueError, match="expected"):
        fit_codebook(x, 3, lambda data, k: data[:2], 20)
    with pytest.raises(ValueError, match="unknown kmeans_method"):
        fit_codebook(x, 3, "spectral", 20)


def test_fewer_points_than_centres() -> None:
    x, _ = blobs(n_per=2)
    assert fit_codebook(x, 64, "kmeans", 20, generator=torch.Generator().manual_seed(0)).shape == (64, 2)


def test_code_metrics_on_a_known_table() -> None:
    codes = np.array([[0, 1], [0, 1], [0, 2], [3, 1]])
    m = code_metrics(codes, [4, 4])
    assert m["n_items"] == 4
    assert m["unique_ratio"] == pytest.approx(3 / 4)
    assert m["collision_rate"] == pytest.approx(2 / 4)
    assert m["max_bucket"] == 2
    assert m["usage"] == [pytest.approx(2 / 4), pytest.approx(2 / 4)]
    p0 = np.array([3, 1]) / 4
    assert m["perplexity"][0] == pytest.approx(np.exp(-(p0 * np.log(p0)).sum()), rel=1e-4)


def test_pack_codes_is_injective_and_falls_back_for_huge_spaces() -> None:
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, size=(5000, 4))
    keys = pack_codes(codes, [256] * 4)
    assert len(np.unique(keys)) == len(np.unique(codes, axis=0))
    big = rng.integers(0, 2**20, size=(100, 4))
    assert len(np.unique(pack_codes(big, [2**20] * 4))) == len(np.unique(big, axis=0))


def test_dedup_numbers_items_of_a_tuple_by_item_id() -> None:
    ids = np.array([50, 10, 30, 20, 40])
    codes = np.array([[1, 1], [1, 1], [2, 0], [1, 1], [2, 0]])
    dedup = assign_dedup(ids, codes, [4, 4])
    assert dedup.tolist() == [2, 0, 0, 1, 1]
    full = np.column_stack([codes, dedup])
    assert len(np.unique(full, axis=0)) == len(ids)


def test_progressive_kmeans_keeps_high_dimensional_clusters_even() -> None:
    # near-isotropic 96-d data: plain Lloyd from k-means++ seeds leaves very uneven clusters
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6000, 96, generator=g) * torch.linspace(2.0, 0.5, 96)
    k = 64

    def perplexity(centres: torch.Tensor) -> float:
        p = torch.bincount(nearest(x, centres)[0], minlength=k).double() / len(x)
        p = p[p > 0]
        return float(torch.exp(-(p * p.log()).sum()))

    def sse(centres: torch.Tensor) -> float:
        return float(nearest(x, centres)[1].sum())

    plain = fit_codebook(x, k, "kmeans", 20, torch.Generator().manual_seed(0))
    prog = fit_codebook(x, k, "progressive", 20, torch.Generator().manual_seed(0))
    assert prog.shape == (k, 96)
    assert perplexity(prog) > perplexity(plain)
    assert sse(prog) <= sse(plain) * 1.01


def test_progressive_kmeans_early_stages_on_a_subsample_lose_no_accuracy(monkeypatch) -> None:
    import rqvae.quantize.kmeans as km

    g = torch.Generator().manual_seed(4)
    x = torch.randn(20_000, 48, generator=g) * torch.linspace(2.0, 0.5, 48)
    k = 32

    def sse(centres: torch.Tensor) -> float:
        return float(nearest(x, centres)[1].sum())

    monkeypatch.setattr(km, "EARLY_ITEMS", 10**9)  # every stage on all points
    full = fit_codebook(x, k, "progressive", 20, torch.Generator().manual_seed(0))
    monkeypatch.setattr(km, "EARLY_ITEMS", 1024)
    assert km.early_items(k) == 64 * k < len(x)  # the early stages now see 2,048 of the 20,000 points
    sub = fit_codebook(x, k, "progressive", 20, torch.Generator().manual_seed(0))
    assert not torch.equal(sub, full)
    assert sse(sub) <= sse(full) * 1.01
