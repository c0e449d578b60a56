"""Training: residual k-means initialisation, then minibatch AdamW with warm-up and cosine decay.

Each epoch ends with an evaluation on a fixed sample (recon MSE, per-level usage, unique-ID ratio), a log line
with an ETA, and a checkpoint; a rerun with the same data and config resumes after the last finished epoch.
Epoch permutations are seeded by (seed, epoch), so a resumed run follows the same path as an uninterrupted one.

:func:`train` is the driver; its steps live beside it: the rows (:mod:`.sample`), the start
(:mod:`.start`), the epochs (:mod:`.steps`), early stopping (:mod:`.early_stop`) and checkpoints
(:mod:`.resume`).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..config import ModelConfig, TrainConfig
from ..io.checkpoint import save_model
from ..io.fsutil import remove_leftovers
from ..io.readers import EmbeddingRows
from ..model import RQVAE, resolve_device
from ..modes import KMeansInit
from .early_stop import heldout_split, is_best, restore_best, should_stop, stalled, weights
from .resume import CHECKPOINT_DIR, resume_run, try_resume
from .resume import save_checkpoint as _save_checkpoint  # looked up here each epoch: tests interrupt a run with it
from .sample import fit_rows, prepare_sample, training_source
from .start import behaviour_inputs, build_model, collaborative_signal, fit_initial_codebooks
from .steps import Run, evaluate, run_epoch

if TYPE_CHECKING:
    from ..io.interactions import Interactions
    from .collaborative import ItemSequences
    from .sample import Sample

__all__ = ["CHECKPOINT_DIR", "TrainResult", "evaluate", "heldout_split", "stalled", "train"]

REFIT_STREAM = 7  # the refit's rows come from their own random stream, (seed, REFIT_STREAM)
# Items the refit's k-means runs on. Fewer than the initialisation's: on 1M x 32 (4 x 256) a refit on 65,536 items
# brought the unique-ID ratio back to residual k-means's (0.8481 vs 0.8482; 131,072 items: 0.8411), MSE 0.99x.
REFIT_ITEMS = 65_536
# Fewer steps than this leave the codes as spread as the initial k-means left them (100k x 32: 25 steps, the refit
# never kept), so no refit is tried: it would cost a k-means and change nothing.
REFIT_MIN_STEPS = 100


@dataclass
class TrainResult:
    model: RQVAE
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    resumed_from_epoch: int


def train(
    vectors: np.ndarray | EmbeddingRows,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig | None = None,
    out_dir: str | Path | None = None,
    *,
    show_progress: bool = True,
    interactions: Interactions | ItemSequences | None = None,
    item_ids: np.ndarray | None = None,
) -> TrainResult:
    """Train an RQVAE on vectors [N, D]; write the model directory to out_dir when given.

    ``vectors`` may be an :class:`rqvae.io.readers.EmbeddingRows`: then only the rows training uses are read (the
    sample of ``max_train_items`` and the held-out rows), with the same draws, so the model is the same.

    ``interactions`` (with ``item_ids``, the item of each row of vectors) make the model's input content plus
    behaviour (:mod:`rqvae.training.behaviour`), the behaviour block weighted by ``train_cfg.collaborative_weight``;
    without them, or with weight 0, training is exactly the content-only one. Pass only logs the model may learn
    from: when its IDs are to be evaluated on users' later events, the training part of the evaluation's split
    (``split_events(...).train_interactions()``).
    """
    cfg = train_cfg or TrainConfig()
    source = training_source(vectors, model_cfg, cfg, interactions)
    sequences = collaborative_signal(source, cfg, interactions, item_ids)
    fused = behaviour_inputs(source, item_ids, sequences, cfg) if sequences is not None else None
    rng = np.random.default_rng(cfg.seed)  # every row draw, in a fixed order: sample, evaluation, initialisation
    device = resolve_device(cfg.device)
    sample = prepare_sample(source if fused is None else fused, model_cfg, cfg, rng, device, sequences)
    model = build_model(model_cfg, cfg, None if fused is None else fused.behaviour, device)
    run = Run.plan(model, sample, model_cfg, cfg, device)
    ckpt = Path(out_dir) / CHECKPOINT_DIR if out_dir is not None else None
    saved = try_resume(ckpt, run.model, run.opt, run.sched, sample.meta) if ckpt is not None else None
    if saved is not None:
        resume_run(run, saved)
    else:
        run.init_metrics = fit_initial_codebooks(run.model, sample, cfg, rng)
    run.begin()
    for epoch in range(run.start_epoch, run.epochs + 1):
        if should_stop(cfg, run.init_metrics, run.history, epoch, run.epochs):
            run.stopped_after = epoch - 1
            break
        run.history.append(run_epoch(run, epoch, show_progress))
        if run.best is not None and is_best(run.init_metrics, run.history):
            run.best = weights(run.model)
        if ckpt is not None:
            _save_checkpoint(ckpt, run.model, run.opt, run.sched, epoch, run.progress(), run.best)
    metrics = finalise(run, model_cfg, out_dir, ckpt)
    return TrainResult(run.model, run.history, metrics, resumed_from_epoch=run.start_epoch - 1)


@torch.no_grad()
def refit_codebooks(model: RQVAE, sample: Sample, cfg: TrainConfig) -> bool:
    """Residual k-means again, on the trained latent of REFIT_ITEMS rows of the sample (drawn from their own
    seeded generator, so the run's other draws do not move; weighted by traffic as the initial fit), kept only
    when it spreads the items over more IDs on the evaluation rows; returns whether it was kept.

    Why: many training steps pull items onto fewer codewords (1M x 32: unique-ID ratio 0.835 against residual
    k-means's 0.848), and the refit spreads the codewords over the items again (0.848). After a few steps (100k
    items: 25) the codes are still spread and a refit on a sample would cost more than it gives, so it is not kept.
    """
    books = [book.detach().clone() for book in model.quantizer.codebooks]
    before = evaluate(model, sample.eval_x)["unique_ratio"]
    rows = fit_rows(sample, REFIT_ITEMS, np.random.default_rng([cfg.seed, REFIT_STREAM]))
    latent = model.encode_latent(sample.x[torch.from_numpy(rows).to(sample.x.device)])
    model.quantizer.init_from_data_(latent, KMeansInit.KMEANS, model.kmeans_iters,
                                    torch.Generator().manual_seed(cfg.seed))
    after = evaluate(model, sample.eval_x)["unique_ratio"]
    if after > before:
        return True
    for book, old in zip(model.quantizer.codebooks, books, strict=True):
        book.data.copy_(old)
    return False


def finalise(run: Run, model_cfg: ModelConfig, out_dir: str | Path | None, ckpt: Path | None) -> dict[str, Any]:
    """The model as published: early stopping's best weights, the last-level balance fitted, the final metrics;
    written to ``out_dir`` (the checkpoint then removed: the run is done) when given."""
    model, cfg, init = run.model, run.cfg, run.init_metrics
    best_epoch = restore_best(model, run.best, init, run.history) if run.best is not None else None
    model.eval()
    refitted = (cfg.refit_codebooks and run.step >= REFIT_MIN_STEPS and best_epoch != 0
                and refit_codebooks(model, run.sample, cfg))
    if model_cfg.last_level_balance > 0:
        with torch.no_grad():
            model.quantizer.fit_last_level_balance_(model.encode_latent(run.sample.eval_x),
                                                    model_cfg.last_level_balance)
    # nothing moved since the initial evaluation when no step was taken (rqkmeans) and no balance was fitted
    unchanged = (run.step == 0 or best_epoch == 0) and model_cfg.last_level_balance <= 0 and not refitted
    final = {k: v for k, v in init.items() if k != "seconds"} if unchanged else evaluate(model, run.sample.eval_x)
    metrics = {
        **final,
        "n_train": run.sample.n,
        "epochs": run.epochs,
        "epochs_run": len(run.history),
        "stopped_early_after": run.stopped_after,
        "best_epoch": best_epoch,
        "refitted": refitted,
        "eval_heldout": run.sample.held is not None,
        "method": model_cfg.method,
        "steps": run.step,
        "device": run.device.type,
        "autocast_bf16": run.use_amp,
        "step_threads": run.used_threads,  # torch threads of the optimisation steps (None: no step was taken)
        "init_seconds": init.get("seconds"),
        "train_seconds": round(time.perf_counter() - run.t_start, 3),
        "init_recon_mse": init["recon_mse"],
        "init_unique_ratio": init["unique_ratio"],
    }
    behaviour = getattr(model, "behaviour", None)
    if behaviour is not None:
        metrics["collaborative"] = {"used": True, "weight": cfg.collaborative_weight,
                                    "dim": behaviour.dim - behaviour.content_dim,
                                    "n_items_with_events": len(behaviour.item_ids),
                                    "embedding_seconds": round(behaviour.seconds, 3)}
    if out_dir is not None:
        save_model(model, out_dir, extra={"train": cfg.to_dict(), "metrics": metrics})
        shutil.rmtree(ckpt, ignore_errors=True)
        remove_leftovers(ckpt)
    return metrics
