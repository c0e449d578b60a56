"""Model options beyond the users' constructor: rqkmeans, the rotation trick, last-level balancing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rqvae import RQVAE
from rqvae.config import ModelConfig, TrainConfig
from rqvae.io.checkpoint import load_model, save_model
from rqvae.quantize.metrics import code_metrics
from rqvae.quantize.quantizer import rotate_onto
from rqvae.training.loop import train
from tests.unit.test_model import clustered


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return clustered(4000, 16, seed=4, centres=12)


def test_rqkmeans_is_residual_kmeans_without_training(x: np.ndarray) -> None:
    cfg = ModelConfig(input_dim=16, num_codebooks=2, codebook_size=32, method="rqkmeans")
    result = train(x, cfg, TrainConfig(epochs=3, seed=0), show_progress=False)
    assert result.history == [] and result.metrics["steps"] == 0
    model = result.model
    xt = torch.from_numpy(x)
    with torch.no_grad():
        # identity encoder: the latent is the centred input, so codes are residual k-means codes of x
        assert torch.allclose(model.encode_latent(xt), xt - model.input_mean, atol=1e-6)
    assert result.metrics["recon_mse"] == pytest.approx(result.metrics["init_recon_mse"])


def test_rotation_trick_returns_q_and_passes_a_rotated_gradient() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(64, 8, generator=g, requires_grad=True)
    q = torch.randn(64, 8, generator=g)
    out = rotate_onto(z, q)
    assert torch.allclose(out, q, atol=1e-5)
    grad = torch.randn(64, 8, generator=g)
    out.backward(grad)
    assert z.grad is not None and not torch.allclose(z.grad, grad)  # not the identity of straight-through
    # the Jacobian is a scaled rotation: it preserves norms up to ||q|| / ||z||
    scale = (q.norm(dim=1) / z.detach().norm(dim=1))
    assert torch.allclose(z.grad.norm(dim=1), grad.norm(dim=1) * scale, rtol=1e-4)


def test_rotation_trained_model_round_trips(x: np.ndarray, tmp_path) -> None:
    cfg = ModelConfig(input_dim=16, num_codebooks=2, codebook_size=16, gradient="rotation")
    model = train(x, cfg, TrainConfig(epochs=1, batch_size=256), show_progress=False).model
    loaded = load_model(save_model(model, tmp_path / "m"))
    assert loaded.quantizer.gradient == "rotation"
    assert torch.equal(loaded.encode(torch.from_numpy(x)), model.encode(torch.from_numpy(x)))


def test_last_level_balance_spreads_codes_and_is_saved(x: np.ndarray, tmp_path) -> None:
    base = ModelConfig(input_dim=16, num_codebooks=2, codebook_size=16, method="rqkmeans")
    plain = train(x, base, TrainConfig(seed=1), show_progress=False).model
    balanced_cfg = ModelConfig(**{**base.to_dict(), "last_level_balance": 0.3})
    balanced = train(x, balanced_cfg, TrainConfig(seed=1), show_progress=False).model
    xt = torch.from_numpy(x)
    p_plain = code_metrics(plain.encode(xt).numpy(), [16, 16])["perplexity"][1]
    p_bal = code_metrics(balanced.encode(xt).numpy(), [16, 16])["perplexity"][1]
    assert p_bal > p_plain
    assert float(balanced.quantizer.last_level_bias.abs().sum()) > 0
    loaded = load_model(save_model(balanced, tmp_path / "b"))
    assert torch.equal(loaded.encode(xt), balanced.encode(xt))  # the penalty travels with the model
    # still a per-item function: batch composition does not matter
    assert torch.equal(balanced.encode(xt[:7]), balanced.encode(xt)[:7])


def test_unknown_options_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown method"):
        ModelConfig(input_dim=4, method="magic")
    with pytest.raises(ValueError, match="unknown gradient"):
        RQVAE(4, [4], 4, 2, 4, device="cpu", gradient="magic")
