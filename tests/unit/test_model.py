"""Correctness of the RQVAE: each test pins a behaviour the public baseline got wrong."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rqvae import RQVAE
from rqvae.config import ModelConfig, TrainConfig
from rqvae.training.loop import train


def clustered(n: int, dim: int, seed: int = 0, centres: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, dim))
    x = c[rng.integers(0, centres, n)] + 0.3 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> torch.Tensor:
    return torch.from_numpy(clustered(3000, 16))


@pytest.fixture(scope="module")
def trained(data: torch.Tensor) -> RQVAE:
    cfg = ModelConfig(input_dim=16, num_codebooks=3, codebook_size=32, hidden_channels=[32])
    return train(data.numpy(), cfg, TrainConfig(epochs=2, batch_size=256, seed=1), show_progress=False).model


def test_forward_contract(trained: RQVAE, data: torch.Tensor) -> None:
    trained.train()
    x_hat, ids, recon, vq, total = trained(data[:50])
    assert x_hat.shape == (50, 16)
    assert ids.shape == (50, 3) and ids.dtype == torch.int64
    assert torch.isclose(total, recon + vq)
    per_level = trained._get_codebook(data[:50])
    assert len(per_level) == 3
    assert all(t.dtype == torch.int64 and t.shape == (50,) for t in per_level)
    assert torch.equal(torch.stack(per_level, 1), trained.encode(data[:50]))


def test_ids_do_not_depend_on_batch_size_order_or_companions(trained: RQVAE, data: torch.Tensor) -> None:
    trained.eval()
    reference = trained.encode(data)
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(3))
    shuffled = torch.cat([trained.encode(chunk) for chunk in data[perm].split(7)])
    assert torch.equal(shuffled, reference[perm])
    single = torch.cat([trained.encode(data[i : i + 1]) for i in range(0, 200)])
    assert torch.equal(single, reference[:200])
    # companions: the same item next to very different items keeps its codes
    noise = torch.nn.functional.normalize(torch.randn(64, 16), dim=1)
    mixed = trained.encode(torch.cat([data[:10], noise]))[:10]
    assert torch.equal(mixed, reference[:10])


def test_train_mode_forward_never_refits_codebooks(trained: RQVAE, data: torch.Tensor) -> None:
    trained.train()
    before = [b.detach().clone() for b in trained.quantizer.codebooks]
    trained(data[:100])
    trained(data[1000:1400])
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, trained.quantizer.codebooks, strict=True))
    # and the codes of an item are the same in train and eval mode
    codes_train = trained(data[:100]).semantic_ids
    trained.eval()
    assert torch.equal(codes_train, trained.encode(data[:100]))


def test_encoder_receives_gradient(data: torch.Tensor) -> None:
    model = RQVAE(16, [32], 16, 2, 16, device="cpu")
    model.initialize(data[:1000])
    model.train()
    model(data[:256]).total_loss.backward()
    skip = model.encoder.skip.weight.grad
    branch = [p.grad for p in model.encoder.branch.parameters()]
    assert skip is not None and float(skip.abs().sum()) > 0
    assert all(g is not None for g in branch) and float(sum(g.abs().sum() for g in branch)) > 0
    books = [b.grad for b in model.quantizer.codebooks]
    assert all(g is not None and float(g.abs().sum()) > 0 for g in books)


def test_subtracted_vector_is_the_selected_codeword(trained: RQVAE, data: torch.Tensor) -> None:
    q = trained.quantizer
    with torch.no_grad():
        out = q(trained.encode_latent(data[:300]))
    for level in range(q.num_levels - 1):
        chosen = q.codebook(level)[out.codes[:, level]]
        assert torch.allclose(out.residuals[level + 1], out.residuals[level] - chosen, atol=1e-6)
    assert torch.allclose(out.quantized, q.lookup(out.codes), atol=1e-6)


def test_decode_codes_matches_forward_reconstruction(trained: RQVAE, data: torch.Tensor) -> None:
    trained.eval()
    with torch.no_grad():
        out = trained(data[:128])
    assert torch.allclose(trained.decode_codes(out.semantic_ids), out.x_hat, atol=1e-5)


def test_shared_codebook_is_one_codebook(data: torch.Tensor) -> None:
    model = RQVAE(16, [32], 16, 3, 32, shared_codebook=True, device="cpu")
    model.initialize(data[:1000])
    assert len(model.quantizer.codebooks) == 1
    assert model.quantizer.codebook(0) is model.quantizer.codebook(2)
    assert sum(1 for k in model.state_dict() if "codebooks" in k) == 1
    with pytest.raises(ValueError, match="shared_codebook"):
        RQVAE(16, [32], 16, 2, [32, 64], shared_codebook=True, device="cpu")


def test_batches_smaller_than_the_codebook(data: torch.Tensor) -> None:
    model = RQVAE(16, [32], 16, 2, 256, device="cpu")
    model.train()
    out = model(data[:10])  # lazily initialises from a 10-item batch
    assert out.semantic_ids.shape == (10, 2)
    model.eval()
    assert model.encode(data[:3]).shape == (3, 2)


def test_dead_codes_are_reseeded_from_residuals(data: torch.Tensor) -> None:
    model = RQVAE(16, [32], 16, 2, 16, device="cpu")
    model.initialize(data[:1000])
    q = model.quantizer
    with torch.no_grad():
        q.codebooks[0].data[3] = 100.0  # far from all data: never selected
    z = model.encode_latent(data[:500]).detach()
    counts = torch.zeros(2, 16, dtype=torch.long)
    for level in range(2):
        counts[level] = torch.bincount(q.assign(z)[:, level], minlength=16)
    assert counts[0, 3] == 0
    n = q.reseed_dead_codes_(counts, q.residuals_of(z), torch.Generator().manual_seed(0))
    assert n >= 1
    assert float(q.codebooks[0].data[3].abs().max()) < 10.0
    assert float((z - q.codebooks[0].data[3]).abs().amax(1).min()) < 1e-6  # it is now a real residual


def test_training_is_reproducible_with_a_seed(data: torch.Tensor) -> None:
    cfg = ModelConfig(input_dim=16, num_codebooks=2, codebook_size=16, hidden_channels=[16])
    runs = [
        train(data.numpy(), cfg, TrainConfig(epochs=1, batch_size=256, seed=s), show_progress=False).model
        for s in (5, 5, 6)
    ]
    a, b, c = (r.state_dict() for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_decoder_has_no_final_relu() -> None:
    x = torch.from_numpy(clustered(2000, 8, seed=2))
    assert float(x.min()) < -0.2
    model = RQVAE(8, [16], 8, 2, 16, device="cpu")
    model.initialize(x)
    model.eval()
    x_hat = model.decode_codes(model.encode(x))
    assert float(x_hat.min()) < -0.2
    assert not isinstance(model.decoder.branch[-1], torch.nn.ReLU)


def test_training_improves_on_its_kmeans_start_and_the_refit_spreads_codes_again(data: torch.Tensor) -> None:
    """Steps lower the recon MSE; the final refit (refit_codebooks) is kept only when it spreads the items over
    more IDs than the trained codebooks do, so the IDs never get fewer; the epochs before it are the same."""
    cfg = ModelConfig(input_dim=16, num_codebooks=2, codebook_size=16, hidden_channels=[32])
    budget = {"epochs": 6, "batch_size": 128, "lr": 1e-3, "seed": 0}  # 6 x 24 steps: over REFIT_MIN_STEPS
    trained = train(data.numpy(), cfg, TrainConfig(**budget, refit_codebooks=False), show_progress=False)
    assert trained.metrics["recon_mse"] < trained.metrics["init_recon_mse"]
    assert [h["epoch"] for h in trained.history] == [1, 2, 3, 4, 5, 6] and not trained.metrics["refitted"]
    refitted = train(data.numpy(), cfg, TrainConfig(**budget), show_progress=False)
    same_epochs = [{k: v for k, v in h.items() if k != "seconds"} for h in refitted.history] == [
        {k: v for k, v in h.items() if k != "seconds"} for h in trained.history]
    assert same_epochs  # the refit comes after the epochs
    assert refitted.metrics["unique_ratio"] >= trained.metrics["unique_ratio"]
    if refitted.metrics["refitted"]:
        assert refitted.metrics["unique_ratio"] > trained.metrics["unique_ratio"]
    else:
        assert refitted.metrics["recon_mse"] == trained.metrics["recon_mse"]
    wide = ModelConfig(input_dim=16, num_codebooks=2, codebook_size=[32, 64], hidden_channels=[32])
    spread = train(data.numpy(), wide, TrainConfig(**budget), show_progress=False)  # this one is kept
    kept = train(data.numpy(), wide, TrainConfig(**budget, refit_codebooks=False), show_progress=False)
    assert spread.metrics["refitted"] and spread.metrics["unique_ratio"] > kept.metrics["unique_ratio"]


def test_default_architecture_follows_the_users_rule(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("INFO", logger="rqvae.model"):
        model = RQVAE(32, None, None, 4, [256] * 4, device="cpu")
    assert model.latent_dim == 8 and model.hidden_channels == [16, 8]
    assert "latent 8" in caplog.text
    small = RQVAE(6, None, None, 2, 8, device="cpu")
    assert small.latent_dim == 4 and small.hidden_channels == [6]


def test_compressing_latent_starts_from_pca() -> None:
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(24, 4)))[0]
    x = torch.from_numpy((rng.normal(size=(2000, 4)) @ basis.T).astype(np.float32))
    model = RQVAE(24, [32], 4, 2, 64, device="cpu")
    model.initialize(x)
    with torch.no_grad():
        z = model.encode_latent(x)
        back = model.decoder(z) + model.input_mean
    assert torch.allclose(back, x, atol=1e-4)  # data in a 4-d subspace survives a 4-d latent exactly


@pytest.mark.parametrize("bad", [{"distances_method": "manhattan"}, {"kmeans_method": "spectral"}])
def test_unknown_modes_are_refused_with_the_valid_ones(bad: dict, data: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="expected one of"):
        model = RQVAE(16, [16], 16, 2, 16, device="cpu", **bad)
        model.initialize(data[:200])


@pytest.mark.parametrize("k", [16, 256, 8192])
def test_packed_search_returns_a_nearest_codeword(k: int) -> None:
    from rqvae.quantize.search import Distance, nearest_codeword, search_table

    g = torch.Generator().manual_seed(k)
    book, r = torch.randn(k, 8, generator=g), torch.randn(3000, 8, generator=g)
    idx = nearest_codeword(r, *search_table(book, Distance.L2))
    exact = torch.cdist(r.double(), book.double()) ** 2
    chosen = exact.gather(1, idx.unsqueeze(1)).squeeze(1)
    best = exact.min(1).values
    assert bool(((chosen - best) <= 1e-4 * best.clamp_min(1e-6)).all())
    assert float((idx == exact.argmin(1)).float().mean()) > 0.99


def test_parallel_encode_equals_single_block_encode(trained: RQVAE) -> None:
    x = torch.from_numpy(clustered(20_000, 16, seed=9))
    trained.eval()
    whole = trained.encode(x)  # thread-pool path on multi-core CPUs
    blocks = torch.cat([trained.quantizer.assign(trained.encode_latent(b)) for b in x.split(997)])
    assert torch.equal(whole, blocks)


def test_gpu_sized_search_blocks_give_the_cpu_blocks_codes(trained: RQVAE) -> None:
    """A GPU searches in blocks of GPU_SEARCH_CHUNK rows: the block size must not change a single code."""
    from rqvae.quantize.quantizer import GPU_SEARCH_CHUNK, SEARCH_CHUNK

    z = trained.encode_latent(torch.from_numpy(clustered(GPU_SEARCH_CHUNK + 3001, 16, seed=5)))
    small = trained.quantizer.assign(z, chunk=SEARCH_CHUNK)
    assert torch.equal(trained.quantizer.assign(z, chunk=GPU_SEARCH_CHUNK), small)
    assert torch.equal(trained.quantizer.assign(z), small)  # a CPU tensor gets the CPU block size


def test_initialized_follows_the_buffer_without_reading_it(data: torch.Tensor) -> None:
    """`initialized` is a Python bool kept in step with the saved buffer (a GPU read would wait for the queue):
    set by initialize, replaced by any state dict loaded, through the model or the quantizer alone; and the
    model still pickles (torch.save of a whole model)."""
    import io
    import pickle

    model = RQVAE(16, [16], 16, 2, 8, device="cpu")
    blank = {k: v.clone() for k, v in model.state_dict().items()}
    blank_quantizer = {k: v.clone() for k, v in model.quantizer.state_dict().items()}
    assert not model.initialized
    model.initialize(data[:500])
    trained = {k: v.clone() for k, v in model.state_dict().items()}
    assert model.initialized and bool(model.quantizer.initialized)
    model.load_state_dict(blank)
    assert not model.initialized
    with pytest.raises(RuntimeError, match="not initialised"):
        model.eval().encode(data[:10])
    model.load_state_dict(trained)
    assert model.initialized
    model.quantizer.load_state_dict(blank_quantizer)
    assert not model.initialized
    model.load_state_dict(trained)
    copy = pickle.loads(pickle.dumps(model))
    assert copy.initialized and torch.equal(copy.encode(data[:50]), model.encode(data[:50]))
    buffer = io.BytesIO()
    torch.save(model, buffer)
    assert buffer.tell() > 0


def test_gpu_search_blocks_stay_within_their_memory_budget() -> None:
    from rqvae.quantize.quantizer import GPU_SEARCH_BYTES, GPU_SEARCH_CHUNK, SEARCH_CHUNK, search_chunk

    cuda = torch.device("cuda")  # only its type is read: no GPU needed
    assert search_chunk(torch.device("cpu"), 256) == SEARCH_CHUNK
    assert search_chunk(cuda, 256) == GPU_SEARCH_CHUNK
    for k in (4096, 65_536):
        rows = search_chunk(cuda, k)
        assert SEARCH_CHUNK <= rows < GPU_SEARCH_CHUNK and rows * k * 4 <= max(GPU_SEARCH_BYTES, SEARCH_CHUNK * k * 4)


@pytest.mark.parametrize("threads", [1, 2])
def test_encode_with_errors_matches_encode_and_decode(trained: RQVAE, threads: int) -> None:
    """The fused pass (block by block, on the pool when there are threads) gives encode()'s codes and the
    reconstruction error decode_codes() gives, and leaves torch's thread count as it found it."""
    x = torch.from_numpy(clustered(20_000, 16, seed=11))
    trained.eval()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        codes, errors = trained.encode_with_errors(x)
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    assert torch.equal(codes, trained.encode(x))
    expected = ((trained.decode_codes(codes) - x) ** 2).double().mean(1)
    assert errors.dtype == torch.float64 and errors.shape == (20_000,)
    torch.testing.assert_close(errors, expected, rtol=1e-5, atol=1e-9)
