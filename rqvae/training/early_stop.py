"""Early stopping: the held-out split it decides on, the decision itself, and the best weights it goes back to.

The decision is taken before each epoch from the history alone, so a resumed run stops where an uninterrupted
one would; the best weights so far travel in the checkpoint for the same reason.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from ..config import TrainConfig
from ..errors import ConfigError
from ..model import RQVAE

logger = logging.getLogger("rqvae.training.loop")  # the training run's log, whichever of its steps writes


def heldout_split(total: int, cfg: TrainConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, held-out rows) for early stopping, both sorted and disjoint.

    Items beyond the training sample cap are held out for free; otherwise up to a tenth of the items (at most
    ``eval_items``) are set aside, so the stopping decision never rests on items the model was fitted to.
    """
    if total < 10:
        raise ConfigError(f"early stopping needs at least 10 items to hold some out, got {total}")
    if total > cfg.max_train_items:
        pick = np.sort(rng.choice(total, cfg.max_train_items, replace=False))
        rest = np.ones(total, dtype=bool)
        rest[pick] = False
        spare = np.flatnonzero(rest)
        return pick, np.sort(rng.choice(spare, min(len(spare), cfg.eval_items), replace=False))
    held = np.sort(rng.choice(total, min(cfg.eval_items, total // 10), replace=False))
    keep = np.ones(total, dtype=bool)
    keep[held] = False
    return np.flatnonzero(keep), held


def stalled(init_mse: float, history: list[dict[str, Any]], cfg: TrainConfig) -> bool:
    """True when the last ``early_stop_patience`` epochs each failed to lower the best held-out recon MSE so
    far (the initialisation's included) by ``early_stop_delta`` relative."""
    best, without = init_mse, 0
    for record in history:
        mse = record["recon_mse"]
        without = 0 if mse < best * (1 - cfg.early_stop_delta) else without + 1
        best = min(best, mse)
    return without >= cfg.early_stop_patience


def should_stop(cfg: TrainConfig, init_metrics: dict[str, Any], history: list[dict[str, Any]], epoch: int,
                epochs: int) -> bool:
    """Whether to stop before ``epoch``: checked before the epoch, so a resumed run decides the same way."""
    if not cfg.early_stop_patience or not stalled(init_metrics["recon_mse"], history, cfg):
        return False
    logger.info("early stop after epoch %d/%d: held-out recon MSE improved < %.2g%% in %d epoch(s)",
                epoch - 1, epochs, 100 * cfg.early_stop_delta, cfg.early_stop_patience)
    return True


def weights(model: RQVAE) -> dict[str, torch.Tensor]:
    """A copy of the model's state (the optimiser moves the tensors in place)."""
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def is_best(init_metrics: dict[str, Any], history: list[dict[str, Any]]) -> bool:
    """Whether the last epoch has the lowest held-out recon MSE so far (the initialisation included)."""
    return history[-1]["recon_mse"] < min(r["recon_mse"] for r in [init_metrics, *history[:-1]])


def restore_best(model: RQVAE, best: dict[str, torch.Tensor], init_metrics: dict[str, Any],
                 history: list[dict[str, Any]]) -> int:
    """Go back to the weights of the lowest held-out recon MSE when a later epoch was worse; its epoch (0: init)."""
    curve = [init_metrics["recon_mse"], *(r["recon_mse"] for r in history)]
    best_epoch = int(np.argmin(curve))
    if best_epoch != len(history):  # a later epoch was worse on the held-out items: keep the best weights
        model.load_state_dict(best)
        logger.info("keeping the weights of epoch %d (held-out recon MSE %.6f)", best_epoch, curve[best_epoch])
    return best_epoch
