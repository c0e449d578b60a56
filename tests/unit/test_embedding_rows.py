"""Training reads only the rows it samples: the same model as from the whole matrix, without holding N rows."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from rqvae.config import ModelConfig, TrainConfig
from rqvae.errors import InputError
from rqvae.io.readers import EmbeddingRows, embeddings_table, read_embeddings
from rqvae.io.synth import synth
from rqvae.training.loop import train


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rows")
    data = read_embeddings(synth(folder / "src.parquet", 3000, dim=8, seed=2))
    path = folder / "embeddings.parquet"
    pq.write_table(embeddings_table(data.ids, data.vectors), path, row_group_size=700)
    return path, data


def test_take_returns_exactly_the_asked_rows_across_batches(artifact):
    path, data = artifact
    rows = EmbeddingRows(path, batch_rows=256)
    assert rows.shape == (3000, 8) and len(rows) == 3000
    pick = np.sort(np.random.default_rng(0).choice(3000, 500, replace=False))
    assert np.array_equal(rows.take(pick), data.vectors[pick])
    assert np.array_equal(rows.take(), data.vectors)
    assert np.array_equal(rows.take(np.array([0, 2999])), data.vectors[[0, 2999]])
    with pytest.raises(ValueError, match="sorted"):
        rows.take(np.array([5, 3]))
    np.save(path.with_suffix(".npy"), data.vectors)
    np.save(path.with_name("embeddings_ids.npy"), data.ids)
    with pytest.raises(InputError, match="Parquet"):
        EmbeddingRows(path.with_suffix(".npy"))


@pytest.mark.parametrize("patience", [0, 1])
def test_training_on_sampled_rows_gives_the_model_of_the_whole_matrix(artifact, patience):
    """max_train_items < N (and, with early stopping, the held-out rows): identical draws, identical weights."""
    path, data = artifact
    model_cfg = ModelConfig(input_dim=8, num_codebooks=2, codebook_size=[16, 16])
    cfg = TrainConfig(epochs=2, batch_size=256, max_train_items=1000, init_items=1000, eval_items=400, seed=4,
                      early_stop_patience=patience)
    whole = train(data.vectors, model_cfg, cfg, show_progress=False)
    lazy = train(EmbeddingRows(path, batch_rows=256), model_cfg, cfg, show_progress=False)
    assert whole.metrics["n_train"] == lazy.metrics["n_train"] == 1000
    for (name, a), (_, b) in zip(whole.model.state_dict().items(), lazy.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert whole.metrics["recon_mse"] == lazy.metrics["recon_mse"]
