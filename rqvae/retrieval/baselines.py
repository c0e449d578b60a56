"""Reference ID sets: random codes (the floor any useful ID set must clear) and the project's own models.

Random IDs carry no item similarity at all, so a retriever can only memorise them item by item; an instrument
that cannot tell them from k-means IDs cannot judge smaller differences either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..config import AUTO_DEVICE
from ..ids.collisions import resolve_collisions
from ..modes import CollisionMode, Method
from ..quantize.metrics import code_metrics
from .tokens import IdTable


def random_ids(item_ids: np.ndarray, codebook_size: Sequence[int], seed: int = 0) -> IdTable:
    """Uniform random codes per level, made unique by the project's dedup digit."""
    ids = np.asarray(item_ids, np.int64)
    rng = np.random.default_rng(seed)
    sizes = [int(k) for k in codebook_size]
    codes = np.column_stack([rng.integers(0, k, len(ids)) for k in sizes]).astype(np.int32)
    dedup = resolve_collisions(ids, codes, sizes, CollisionMode.DEDUP).dedup
    return IdTable(ids, codes, dedup, tuple(sizes))


def model_ids(item_ids: np.ndarray, vectors: np.ndarray, model_config: Any, train_config: Any = None, *,
              interactions: Any = None) -> tuple[IdTable, dict[str, float]]:
    """Train ``rqvae.train`` with these configs on the vectors, encode them, dedup collisions the default way.

    ``interactions`` (only the part a tokenizer may learn from) adds the collaborative signal, with
    ``train_config.collaborative_weight``. Returns the IDs and ``recon_mse`` / ``unique_ratio`` (of the codes
    before dedup) to report beside them.
    """
    import torch

    from ..encoding.encode import encode_array
    from ..training.loop import train

    vectors = np.ascontiguousarray(vectors, np.float32)
    ids = np.asarray(item_ids, np.int64)
    result = train(vectors, model_config, train_config, show_progress=False, interactions=interactions,
                   item_ids=ids if interactions is not None else None)
    codes = encode_array(result.model, vectors, item_ids=ids)
    inputs = result.model.inputs(ids, vectors)  # what the model reconstructs (content, or content plus behaviour)
    with torch.no_grad():
        x_hat = result.model.decode_codes(torch.from_numpy(codes).long().to(result.model.device)).cpu().numpy()
    sizes = list(result.model.codebook_size)
    table = IdTable(ids, codes, resolve_collisions(ids, codes, sizes, CollisionMode.DEDUP).dedup, tuple(sizes))
    metrics = {"recon_mse": float(np.mean((inputs - x_hat) ** 2)),
               "unique_ratio": code_metrics(codes, sizes)["unique_ratio"]}
    return table, metrics


def rqkmeans_ids(item_ids: np.ndarray, vectors: np.ndarray, codebook_size: Sequence[int], seed: int = 0,
                 device: str = AUTO_DEVICE) -> IdTable:
    """Residual k-means IDs at the same L x K (``ModelConfig(method="rqkmeans")``: no learned encoder)."""
    from ..config import ModelConfig, TrainConfig

    sizes = [int(k) for k in codebook_size]
    cfg = ModelConfig(input_dim=vectors.shape[1], num_codebooks=len(sizes), codebook_size=sizes, method=Method.RQKMEANS)
    return model_ids(item_ids, vectors, cfg, TrainConfig(seed=seed, device=device))[0]
