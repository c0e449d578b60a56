"""How a run starts: the behaviour signal, the model it trains, and its initial codebooks.

Without interactions the model's input is the content vector and the start is residual k-means on the sample's
latent. With them (``collaborative_weight`` > 0) the input is content plus behaviour
(:mod:`rqvae.training.behaviour`): the model is built that much wider, keeps the behaviour it was fitted with,
and everything after the input (initialisation, epochs, encoding) is unchanged.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..config import ModelConfig, TrainConfig
from ..model import RQVAE
from .sample import fit_rows
from .steps import evaluate

if TYPE_CHECKING:
    from ..io.interactions import Interactions
    from .behaviour import Behaviour, FusedRows
    from .collaborative import ItemSequences
    from .sample import Sample

logger = logging.getLogger("rqvae.training.loop")  # the training run's log, whichever of its steps writes


def collaborative_signal(
    x: np.ndarray,
    cfg: TrainConfig,
    interactions: Interactions | ItemSequences | None,
    item_ids: np.ndarray | None,
) -> ItemSequences | None:
    """The logs as item sequences over the rows of ``x``, or None for content-only training (no logs, weight 0)."""
    if interactions is None:
        return None
    if cfg.collaborative_weight <= 0:
        logger.info("interactions given but not used (collaborative_weight 0): content-only training")
        return None
    from .collaborative import ItemSequences

    if item_ids is None or len(item_ids) != x.shape[0]:
        raise ValueError("training with interactions needs item_ids: the item id of every row of vectors")
    if isinstance(interactions, ItemSequences):
        sequences = interactions
        if sequences.n_items != x.shape[0]:
            raise ValueError(f"interactions were mapped onto {sequences.n_items} items, vectors have {x.shape[0]}")
    else:
        sequences = ItemSequences.from_interactions(interactions, np.asarray(item_ids))
    if sequences.n_events == 0:
        raise ValueError("none of the interactions is on an item of these vectors: check that item ids match")
    logger.info("collaborative training: weight %s, %d interactions of %d users on %d items", cfg.collaborative_weight,
                sequences.n_events, sequences.n_users, sequences.summary()["n_items_with_interactions"])
    return sequences


def behaviour_inputs(x: np.ndarray, item_ids: np.ndarray, sequences: ItemSequences, cfg: TrainConfig) -> FusedRows:
    """The model's inputs for every row of ``x``: content plus the behaviour fitted on ``sequences``."""
    from .behaviour import FusedRows, fit_behaviour
    from .collaborative import collaborative_embeddings

    factors = collaborative_embeddings(sequences, cfg.collaborative_dim, seed=cfg.seed)
    behaviour = fit_behaviour(x, np.asarray(item_ids, np.int64), sequences.item_counts(), factors.vectors,
                              cfg.collaborative_weight)
    behaviour.seconds = factors.seconds  # reported beside the training metrics
    return FusedRows(behaviour, item_ids, x)


def build_model(model_cfg: ModelConfig, cfg: TrainConfig, behaviour: Behaviour | None, device: torch.device) -> RQVAE:
    """The model, its weights drawn from ``cfg.seed``; with behaviour its input is content plus behaviour."""
    torch.manual_seed(cfg.seed)
    if behaviour is None:
        return RQVAE.from_config(model_cfg, device=device)
    model = RQVAE.from_config(replace(model_cfg, input_dim=behaviour.dim), device=device)
    model.behaviour = behaviour
    return model


def fit_initial_codebooks(model: RQVAE, sample: Sample, cfg: TrainConfig, rng: np.random.Generator
                          ) -> dict[str, Any]:
    """Initialise the model (input mean, linear paths, residual k-means) on ``init_items`` rows of the sample
    (weighted by traffic with interactions: :func:`rqvae.training.sample.fit_rows`); returns the initial metrics."""
    gen = torch.Generator().manual_seed(cfg.seed)
    init_idx = fit_rows(sample, cfg.init_items, rng)
    t0 = time.perf_counter()
    model.initialize(sample.x[torch.from_numpy(init_idx).to(sample.x.device)], generator=gen)
    init_metrics = {**evaluate(model, sample.eval_x), "seconds": round(time.perf_counter() - t0, 3)}
    logger.info(
        "init (residual k-means): recon_mse %.6f unique %.4f usage %s",
        init_metrics["recon_mse"], init_metrics["unique_ratio"], init_metrics["usage"],
    )
    return init_metrics
