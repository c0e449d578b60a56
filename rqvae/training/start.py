"""How a run starts: the collaborative signal, the model it trains, and its initial codebooks.

Without interactions the start is residual k-means on the sample's latent. With them the codebooks must cut
the *aligned* latent (fitted before the alignment, they would collapse codes), so the k-means comes after
:func:`rqvae.training.collaborative.fit_alignment_`; the k-means method is therefore an argument of
:func:`initialize`, not the model's attribute.
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
from ..modes import KMeansInit, Method
from .steps import evaluate

if TYPE_CHECKING:
    from ..io.interactions import Interactions
    from .collaborative import CollaborativeEmbeddings, CollaborativeLoss, ItemSequences
    from .sample import Sample

    Signal = tuple[ItemSequences, CollaborativeEmbeddings]

logger = logging.getLogger("rqvae.training.loop")  # the training run's log, whichever of its steps writes


def collaborative_signal(
    x: np.ndarray,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    interactions: Interactions | ItemSequences | None,
    item_ids: np.ndarray | None,
) -> Signal | None:
    """The logs as item sequences and their collaborative embeddings, or None for content-only training (no
    logs, weight 0 or rqkmeans)."""
    if interactions is None:
        return None
    if cfg.collaborative_weight <= 0 or model_cfg.method == Method.RQKMEANS:
        logger.info("interactions given but not used (collaborative_weight %s, method %s): content-only training",
                    cfg.collaborative_weight, model_cfg.method)
        return None
    from .collaborative import ItemSequences, collaborative_embeddings

    if isinstance(interactions, ItemSequences):
        sequences = interactions
        if sequences.n_items != x.shape[0]:
            raise ValueError(f"interactions were mapped onto {sequences.n_items} items, vectors have {x.shape[0]}")
    else:
        if item_ids is None or len(item_ids) != x.shape[0]:
            raise ValueError("training with interactions needs item_ids: the item id of every row of vectors")
        sequences = ItemSequences.from_interactions(interactions, np.asarray(item_ids))
    if sequences.n_events == 0:
        raise ValueError("none of the interactions is on an item of these vectors: check that item ids match")
    logger.info("collaborative training: weight %s, %d interactions of %d users on %d items", cfg.collaborative_weight,
                sequences.n_events, sequences.n_users, sequences.summary()["n_items_with_interactions"])
    latent = model_cfg.latent_dim or model_cfg.input_dim
    dim = max(1, min(cfg.collaborative_dim, latent // 4))  # most of the latent stays with the content
    return sequences, collaborative_embeddings(sequences, dim, seed=cfg.seed)


def build_model(model_cfg: ModelConfig, cfg: TrainConfig, signal: Signal | None, device: torch.device) -> RQVAE:
    """The model, its weights drawn from ``cfg.seed``; with the collaborative signal its hidden layer is the
    memory of warm items' behaviour."""
    torch.manual_seed(cfg.seed)
    architecture = model_cfg
    if signal is not None and cfg.collaborative_hidden:
        # about one hidden unit per warm item, up to collaborative_hidden, and at most 64 per input dimension
        # (32x the content model's width) to bound training and encoding cost
        warm = int(np.count_nonzero(signal[1].confidence))
        widths = [min(cfg.collaborative_hidden, 1 << max(6, (warm - 1).bit_length()), 64 * model_cfg.input_dim)]
        architecture = replace(model_cfg, hidden_channels=widths)
    return RQVAE.from_config(architecture, device=device)


def fit_initial_codebooks(model: RQVAE, sample: Sample, cfg: TrainConfig, signal: Signal | None,
                          rng: np.random.Generator) -> tuple[CollaborativeLoss | None, dict[str, Any]]:
    """Initialise the model on ``init_items`` rows of the sample: (the alignment term or None, init metrics).

    With the signal, the first codebooks are random items (``KMeansInit.NONE``, whose draws from ``gen`` the
    k-means after them follows), the alignment is fitted on that latent and the codebooks on the aligned one.
    """
    gen = torch.Generator().manual_seed(cfg.seed)
    init_idx = np.sort(rng.choice(sample.n, min(sample.n, cfg.init_items), replace=False))
    t0 = time.perf_counter()
    index = torch.from_numpy(init_idx).to(sample.x.device)
    init_x = sample.x[index]
    collab = None
    if signal is None:
        model.initialize(init_x, generator=gen)
    else:
        from .collaborative import fit_alignment_

        model.initialize(init_x, generator=gen, kmeans_method=KMeansInit.NONE)
        with torch.no_grad():
            collab = alignment(signal, sample.pick, model.encode_latent(init_x), None, cfg.collaborative_weight)
        fit_alignment_(model, init_x, index, collab, max_rows=2 * model.encoder.branch[-1].in_features)
        freeze_branches(model)
        with torch.no_grad():  # codebooks cut the aligned latent (fitted before, they would collapse codes)
            model.quantizer.init_from_data_(model.encode_latent(init_x), model.kmeans_method, model.kmeans_iters,
                                            gen)
    init_metrics = {**evaluate(model, sample.eval_x), "seconds": round(time.perf_counter() - t0, 3)}
    logger.info(
        "init (residual k-means): recon_mse %.6f unique %.4f usage %s",
        init_metrics["recon_mse"], init_metrics["unique_ratio"], init_metrics["usage"],
    )
    return collab, init_metrics


def alignment(signal: Signal, pick: np.ndarray | None, z: torch.Tensor, state: dict[str, torch.Tensor] | None,
              weight: float) -> CollaborativeLoss:
    """The alignment term for the training sample (``pick`` rows of the catalogue, None = all); ``state``: the
    basis and scale a checkpoint saved (fitted once, on the initial latent), else fitted on ``z``."""
    from .collaborative import CollaborativeLoss

    sequences, embeddings = signal
    loss = CollaborativeLoss(embeddings, pick, z, sequences.summary(), weight)
    if state is not None:
        loss.basis = state["basis"].to(loss.basis.device)
        loss.scale = float(state["scale"])
    return loss


def freeze_branches(model: RQVAE) -> None:
    """Keep the fitted memory as fitted: Adam moves each of a wide layer's weights by about its learning rate per
    step, which on 8192 hidden units swings the output far enough to collapse the codes (measured: unique-ID ratio
    0.0006 after one epoch). The linear paths and the codebooks keep training."""
    for part in (model.encoder.branch, model.decoder.branch):
        part.requires_grad_(False)
