"""Epoch checkpoints: written after every epoch, read back by a rerun with the same data and config.

A checkpoint holds everything the next epoch depends on (weights, optimiser and scheduler state, history, early
stopping's best weights), so a resumed run ends where an uninterrupted one ends.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..io.checkpoint import save_model
from ..io.fsutil import remove_leftovers, replace_dir, temp_path
from ..model import RQVAE

if TYPE_CHECKING:
    from .steps import Run

logger = logging.getLogger("rqvae.training.loop")  # the training run's log, whichever of its steps writes

CHECKPOINT_DIR = "checkpoint"


def save_checkpoint(ckpt: Path, model: RQVAE, opt, sched, epoch: int, meta: dict[str, Any],
                    best: dict[str, torch.Tensor] | None = None) -> None:
    """Model weights (safetensors) + optimiser state (tensors only) + progress, swapped in atomically."""
    remove_leftovers(ckpt)  # what an epoch killed mid-save left beside the checkpoint
    tmp = temp_path(ckpt)
    try:
        save_model(model, tmp)
        state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
        if best is not None:  # early stopping's best weights so far: a resumed run can still go back to them
            state["best"] = best
        torch.save(state, tmp / "optimizer.pt")
        (tmp / "progress.json").write_text(json.dumps({**meta, "epoch": epoch}))
        replace_dir(tmp, ckpt)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def try_resume(ckpt: Path, model: RQVAE, opt, sched, meta: dict[str, Any]) -> dict[str, Any] | None:
    """Load a checkpoint written for the same data and config; None when there is none that fits."""
    progress = ckpt / "progress.json"
    if not progress.is_file():
        return None
    saved = json.loads(progress.read_text())
    if {k: saved.get(k) for k in meta} != meta:
        logger.warning("ignoring checkpoint %s: it was written for other data or another config", ckpt)
        return None
    from ..io.checkpoint import load_model

    state = load_model(ckpt).state_dict()
    model.load_state_dict(state)
    extra = torch.load(ckpt / "optimizer.pt", map_location=model.device, weights_only=True)
    opt.load_state_dict(extra["optimizer"])
    sched.load_state_dict(extra["scheduler"])
    saved["best_state"] = extra.get("best")
    return saved


def resume_run(run: Run, saved: dict[str, Any]) -> None:
    """Continue ``run`` after the checkpoint's epoch (weights and optimiser are loaded by :func:`try_resume`):
    its history, init metrics and early stopping's best weights."""
    run.start_epoch, run.history, run.init_metrics = saved["epoch"] + 1, saved["history"], saved["init"]
    run.best = saved["best_state"]
    logger.info("resuming from checkpoint after epoch %d/%d", saved["epoch"], run.epochs)
