"""Users' own k-means as `kmeans_method`: their `kmeans(data, n_clusters, kmeans_iters) -> (codebook, labels)`
(numpy), torch or numpy in and out, a bare codebook, the historical two-argument form, and a clear error
naming both signatures for anything else."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rqvae import RQVAE
from rqvae.quantize.kmeans import fit_codebook


def users_kmeans(data, n_clusters, kmeans_iters):
    """The users' function: numpy in, (codebook, labels) numpy out, Lloyd from the first points."""
    assert isinstance(data, np.ndarray), type(data)
    centres = data[:n_clusters].copy()
    for _ in range(kmeans_iters):
        labels = ((data[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
        for k in range(n_clusters):
            if (labels == k).any():
                centres[k] = data[labels == k].mean(0)
    return centres, labels


def torch_kmeans(data: torch.Tensor, n_clusters: int, kmeans_iters: int) -> torch.Tensor:
    assert isinstance(data, torch.Tensor)
    return data[:n_clusters] + 0 * kmeans_iters


def numpy_two_arg(data: np.ndarray, k: int) -> np.ndarray:
    assert isinstance(data, np.ndarray)
    return data[-k:]


@pytest.fixture
def x() -> torch.Tensor:
    return torch.nn.functional.normalize(torch.randn(300, 8, generator=torch.Generator().manual_seed(0)), dim=1)


def test_each_accepted_form_fits_the_codebook(x):
    book = fit_codebook(x, 5, users_kmeans, iters=3)
    assert book.shape == (5, 8) and book.dtype == torch.float32
    assert torch.allclose(book, torch.from_numpy(users_kmeans(x.numpy(), 5, 3)[0]))
    assert torch.equal(fit_codebook(x, 4, torch_kmeans, iters=2), x[:4])
    assert torch.equal(fit_codebook(x, 4, numpy_two_arg, 20), x[-4:])
    assert torch.equal(fit_codebook(x, 4, lambda data, k: data[:k], 20), x[:4])  # today's form: torch in and out
    assert torch.equal(fit_codebook(x, 4, lambda data, k, iters: (data[:k], None), 20), x[:4])  # untyped 3-arg: numpy


def test_the_model_initialises_with_the_users_function(x):
    model = RQVAE(input_dim=8, num_codebooks=2, codebook_size=[6, 6], kmeans_method=users_kmeans, kmeans_iters=4,
                  device="cpu")
    model.initialize(x)
    assert model.initialized and model.encode(x).shape == (300, 2)
    assert model.config()["kmeans_method"] == "kmeans"  # a callable is not stored; it only seeded the codebooks


def test_anything_else_fails_naming_the_expected_signatures(x):
    with pytest.raises(TypeError, match=r"kmeans\(data, n_clusters, kmeans_iters\).*fn\(data, k\)"):
        fit_codebook(x, 3, lambda data: data, 20)
    with pytest.raises(TypeError, match=r"returned str.*kmeans\(data, n_clusters, kmeans_iters\)"):
        fit_codebook(x, 3, lambda data, k, iters: "codebook", 20)
    with pytest.raises(ValueError, match=r"shape \(2, 8\), expected \(3, 8\).*fn\(data, k\)"):
        fit_codebook(x, 3, users_kmeans_two_rows, 20)


def users_kmeans_two_rows(data, n_clusters, kmeans_iters):
    return data[:2], np.zeros(len(data), int)
