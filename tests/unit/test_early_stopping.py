"""Early stopping: decided on items training never sees, from the epochs' held-out error alone."""

from __future__ import annotations

import numpy as np
import pytest

from rqvae.config import ModelConfig, TrainConfig
from rqvae.errors import ConfigError
from rqvae.training.loop import heldout_split, stalled, train

MODEL = ModelConfig(input_dim=16, num_codebooks=2, codebook_size=16, hidden_channels=[32])


@pytest.mark.parametrize(("total", "cap", "eval_items", "n_train", "n_held"), [
    (1000, 10_000, 500, 900, 100),  # all items fit: a tenth is set aside
    (1000, 10_000, 50, 950, 50),  # ... but never more than eval_items
    (1000, 600, 300, 600, 300),  # beyond the training cap: the held-out items come from the rest
    (1000, 900, 300, 900, 100),  # ... as many as there are
])
def test_heldout_rows_are_disjoint_from_training_rows(total, cap, eval_items, n_train, n_held):
    cfg = TrainConfig(early_stop_patience=1, max_train_items=cap, eval_items=eval_items)
    pick, held = heldout_split(total, cfg, np.random.default_rng(0))
    assert (len(pick), len(held)) == (n_train, n_held)
    assert np.intersect1d(pick, held).size == 0
    assert (np.diff(pick) > 0).all() and (np.diff(held) > 0).all()
    assert pick.max() < total and held.max() < total


def test_too_few_items_to_hold_out_is_a_config_error():
    with pytest.raises(ConfigError, match="at least 10 items"):
        heldout_split(9, TrainConfig(early_stop_patience=1), np.random.default_rng(0))


def _history(*mse: float) -> list[dict]:
    return [{"recon_mse": m} for m in mse]


def test_stalled_counts_epochs_without_enough_progress_against_the_best_so_far():
    cfg = TrainConfig(early_stop_patience=2, early_stop_delta=0.01)
    assert not stalled(1.0, _history(), cfg)
    assert not stalled(1.0, _history(0.95, 0.90), cfg)  # 5% better each time
    assert not stalled(1.0, _history(0.95, 0.949), cfg)  # one slow epoch of the two allowed
    assert stalled(1.0, _history(0.95, 0.949, 0.948), cfg)  # two slow epochs in a row
    assert stalled(1.0, _history(0.95, 0.97, 0.96), cfg)  # worse, then not back below the best
    assert not stalled(1.0, _history(0.95, 0.949, 0.90), cfg)  # progress resets the count
    # creeping by less than the tolerance every epoch is not progress, even when the sum of it is
    assert stalled(1.0, _history(0.995, 0.990), cfg)


def _data() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.normal(size=(3000, 16)).astype(np.float32)


def test_training_stops_when_the_heldout_error_stalls():
    cfg = TrainConfig(epochs=6, batch_size=64, seed=2, early_stop_patience=1, early_stop_delta=0.5)
    result = train(_data(), MODEL, cfg, show_progress=False)
    # no epoch can halve the error: the first one is allowed, and then training stops
    assert result.metrics["epochs_run"] == 1
    assert result.metrics["stopped_early_after"] == 1
    assert result.metrics["eval_heldout"] is True
    assert result.metrics["n_train"] == 3000 - 300


def test_training_goes_on_exactly_while_each_epoch_beats_the_best_before_it():
    cfg = TrainConfig(epochs=4, batch_size=64, seed=2, early_stop_patience=1, early_stop_delta=0.0)
    result = train(_data(), MODEL, cfg, show_progress=False)
    mse = [result.metrics["init_recon_mse"]] + [h["recon_mse"] for h in result.history]
    ran = result.metrics["epochs_run"]
    assert ran == len(result.history) >= 1
    for epoch in range(1, ran):  # every epoch followed by another one made progress
        assert mse[epoch] < min(mse[:epoch])
    if result.metrics["stopped_early_after"] is not None:
        assert result.metrics["stopped_early_after"] == ran < 4
        assert mse[ran] >= min(mse[:ran])
    else:
        assert ran == 4


def test_without_patience_nothing_is_held_out():
    result = train(_data(), MODEL, TrainConfig(epochs=1, batch_size=64, seed=2), show_progress=False)
    assert result.metrics["n_train"] == 3000
    assert result.metrics["eval_heldout"] is False
    assert result.metrics["stopped_early_after"] is None


def test_epochs_that_make_the_heldout_error_worse_are_undone():
    # a learning rate far too high: training wrecks the residual k-means start on the held-out items
    cfg = TrainConfig(epochs=3, batch_size=64, seed=2, lr=0.5, early_stop_patience=2)
    result = train(_data(), MODEL, cfg, show_progress=False)
    curve = [result.metrics["init_recon_mse"]] + [h["recon_mse"] for h in result.history]
    assert min(curve[1:]) > curve[0]
    assert result.metrics["best_epoch"] == 0
    assert result.metrics["recon_mse"] == curve[0]  # the model kept is the initialisation's


def test_the_kept_model_is_the_best_epochs():
    cfg = TrainConfig(epochs=4, batch_size=64, seed=2, early_stop_patience=4)
    result = train(_data(), MODEL, cfg, show_progress=False)
    curve = [result.metrics["init_recon_mse"]] + [h["recon_mse"] for h in result.history]
    assert result.metrics["best_epoch"] == int(np.argmin(curve))
    assert result.metrics["recon_mse"] == pytest.approx(min(curve), rel=1e-6)
