"""Training: residual k-means initialisation, then minibatch AdamW with warm-up and cosine decay.

Each epoch ends with an evaluation on a fixed sample (recon MSE, per-level usage, unique-ID ratio), a log line
with an ETA, and a checkpoint; a rerun with the same data and config resumes after the last finished epoch.
Epoch permutations are seeded by (seed, epoch), so a resumed run follows the same path as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .checkpoint import save_model
from .config import ModelConfig, TrainConfig
from .metrics import code_metrics
from .model import RQVAE, resolve_device
from .progress import Progress, format_seconds

if TYPE_CHECKING:
    from .collaborative import CollaborativeLoss, ItemSequences
    from .interactions import Interactions

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
_EVAL_BATCH = 65_536


@dataclass
class TrainResult:
    model: RQVAE
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    resumed_from_epoch: int


def _fingerprint(x: np.ndarray) -> str:
    """Cheap identity of the training data: shape plus a hash of its first and last rows."""
    digest = hashlib.sha256(f"{x.shape}".encode())
    digest.update(np.ascontiguousarray(x[:1024]).tobytes())
    digest.update(np.ascontiguousarray(x[-1024:]).tobytes())
    return digest.hexdigest()


def _lr_lambda(total_steps: int, warmup_frac: float):
    warmup = max(1, int(total_steps * warmup_frac))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


@torch.no_grad()
def evaluate(model: RQVAE, x: torch.Tensor) -> dict[str, Any]:
    """Recon MSE and code metrics of model on x (in eval mode; batch-independent by construction)."""
    was_training = model.training
    model.eval()
    codes, sq_err = [], 0.0
    for start in range(0, x.shape[0], _EVAL_BATCH):
        xb = x[start : start + _EVAL_BATCH].to(model.device, torch.float32)
        c = model.encode(xb)
        sq_err += float(((model.decode_codes(c) - xb) ** 2).double().sum())
        codes.append(c.cpu())
    model.train(was_training)
    metrics = code_metrics(torch.cat(codes).numpy(), model.codebook_size)
    metrics["recon_mse"] = sq_err / (x.shape[0] * x.shape[1])
    return metrics


def _optimizer(model: RQVAE, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on codebooks (it would pull codewords toward the origin)."""
    books = list(model.quantizer.parameters())
    book_ids = {id(p) for p in books}
    nets = [p for p in model.parameters() if id(p) not in book_ids]
    return torch.optim.AdamW(
        [{"params": nets, "weight_decay": cfg.weight_decay}, {"params": books, "weight_decay": 0.0}], lr=cfg.lr
    )


def _save_checkpoint(ckpt: Path, model: RQVAE, opt, sched, epoch: int, meta: dict[str, Any]) -> None:
    """Model weights (safetensors) + optimiser state (tensors only) + progress, swapped in atomically."""
    tmp = ckpt.with_name(ckpt.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_model(model, tmp)
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, tmp / "optimizer.pt")
    (tmp / "progress.json").write_text(json.dumps({**meta, "epoch": epoch}))
    old = ckpt.with_name(ckpt.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if ckpt.exists():
        os.replace(ckpt, old)
    os.replace(tmp, ckpt)
    shutil.rmtree(old, ignore_errors=True)


def _try_resume(ckpt: Path, model: RQVAE, opt, sched, meta: dict[str, Any]) -> dict[str, Any] | None:
    """Load a checkpoint written for the same data and config; None when there is none that fits."""
    progress = ckpt / "progress.json"
    if not progress.is_file():
        return None
    saved = json.loads(progress.read_text())
    if {k: saved.get(k) for k in meta} != meta:
        logger.warning("ignoring checkpoint %s: it was written for other data or another config", ckpt)
        return None
    from .checkpoint import load_model

    state = load_model(ckpt).state_dict()
    model.load_state_dict(state)
    extra = torch.load(ckpt / "optimizer.pt", map_location=model.device, weights_only=True)
    opt.load_state_dict(extra["optimizer"])
    sched.load_state_dict(extra["scheduler"])
    return saved


def train(
    vectors: np.ndarray,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig | None = None,
    out_dir: str | Path | None = None,
    *,
    show_progress: bool = True,
    interactions: Interactions | ItemSequences | None = None,
    item_ids: np.ndarray | None = None,
) -> TrainResult:
    """Train an RQVAE on vectors [N, D]; write the model directory to out_dir when given.

    ``interactions`` (with ``item_ids``, the item of each row of vectors) adds the collaborative term of
    :mod:`rqvae.collaborative`, weighted by ``train_cfg.collaborative_weight``; without them, or with weight 0,
    training is exactly the content-only one. Pass only logs the model may learn from: when its IDs are to be
    evaluated on users' last items, the training part of the split (``LeaveOneOut.train_interactions()``).
    """
    cfg = train_cfg or TrainConfig()
    x_np = np.ascontiguousarray(vectors, dtype=np.float32)
    if x_np.ndim != 2 or x_np.shape[1] != model_cfg.input_dim:
        raise ValueError(f"vectors must be [N, {model_cfg.input_dim}], got {x_np.shape}")
    collab = _collaborative(x_np, model_cfg, cfg, interactions, item_ids)
    rng = np.random.default_rng(cfg.seed)
    if x_np.shape[0] > cfg.max_train_items:
        pick = np.sort(rng.choice(x_np.shape[0], cfg.max_train_items, replace=False))
        x_np = x_np[pick]
    n = x_np.shape[0]
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    x_all = torch.from_numpy(x_np).to(device)
    model = RQVAE(**model_cfg.model_kwargs(), device=device)
    opt = _optimizer(model, cfg)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = 0 if model_cfg.method == "rqkmeans" else (cfg.max_steps or cfg.epochs * steps_per_epoch)
    epochs = math.ceil(total_steps / steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total_steps, cfg.warmup_frac))
    eval_x = x_all[torch.from_numpy(np.sort(rng.choice(n, min(n, cfg.eval_items), replace=False))).to(device)]
    meta = {"data": _fingerprint(x_np), "model": model_cfg.to_dict(), "train": cfg.to_dict()}
    if collab is not None:
        meta["interactions"] = collab.fingerprint

    ckpt = Path(out_dir) / CHECKPOINT_DIR if out_dir is not None else None
    saved = _try_resume(ckpt, model, opt, sched, meta) if ckpt is not None else None
    if saved is not None:
        start_epoch, history, init_metrics = saved["epoch"] + 1, saved["history"], saved["init"]
        logger.info("resuming from checkpoint after epoch %d/%d", saved["epoch"], epochs)
    else:
        gen = torch.Generator().manual_seed(cfg.seed)
        init_idx = np.sort(rng.choice(n, min(n, cfg.init_items), replace=False))
        t0 = time.perf_counter()
        model.initialize(x_all[torch.from_numpy(init_idx).to(device)], generator=gen)
        if collab is not None and cfg.collaborative_steps:
            _shape_latent(model, x_all, collab, cfg)
            with torch.no_grad():
                z_init = model.encode_latent(x_all[torch.from_numpy(init_idx).to(device)])
            model.quantizer.init_from_data_(z_init, model.kmeans_method, model.kmeans_iters, gen)
        init_metrics = {**evaluate(model, eval_x), "seconds": round(time.perf_counter() - t0, 3)}
        start_epoch, history = 1, []
        logger.info(
            "init (residual k-means): recon_mse %.6f unique %.4f usage %s",
            init_metrics["recon_mse"], init_metrics["unique_ratio"], init_metrics["usage"],
        )

    use_amp = device.type == "cuda"
    step = (start_epoch - 1) * steps_per_epoch
    t_start = time.perf_counter()
    kmax = max(model.codebook_size)
    for epoch in range(start_epoch, epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)).to(device)
        reseed_gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
        pair_rng = np.random.default_rng([cfg.seed, epoch, 104_729])  # own stream: content path RNG untouched
        collab_sum = 0.0
        counts = torch.zeros(model.num_codebooks, kmax, dtype=torch.long, device=device)
        loss_sum, loss_n, reseeded = 0.0, 0, 0
        t_epoch = time.perf_counter()
        with Progress(steps_per_epoch, f"epoch {epoch}/{epochs}", "batches", enabled=show_progress) as bar:
            for b in range(steps_per_epoch):
                if step >= total_steps:
                    break
                xb = x_all[perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    out = model(xb)
                    loss = out.total_loss
                    if collab is not None:
                        c_loss = collab(model, pair_rng)
                        loss = loss + cfg.collaborative_weight * c_loss
                        collab_sum += float(c_loss.detach())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                loss_sum += float(out.total_loss.detach())
                loss_n += 1
                for level in range(model.num_codebooks):
                    counts[level] += torch.bincount(out.semantic_ids[:, level], minlength=kmax)[:kmax]
                if cfg.reseed_every and step % cfg.reseed_every == 0 and step < 0.9 * total_steps:
                    with torch.no_grad():
                        residuals = model.quantizer.residuals_of(model.encode_latent(xb))
                    reseeded += model.quantizer.reseed_dead_codes_(counts, residuals, reseed_gen)
                    counts.zero_()
                bar.update(1)
        ev = evaluate(model, eval_x)
        elapsed = time.perf_counter() - t_start
        done = epoch - start_epoch + 1
        eta = elapsed / done * (epochs - epoch)
        record = {
            "epoch": epoch,
            "loss": loss_sum / max(1, loss_n),
            "recon_mse": ev["recon_mse"],
            "unique_ratio": ev["unique_ratio"],
            "usage": ev["usage"],
            "perplexity": ev["perplexity"],
            "reseeded_codes": reseeded,
            "seconds": round(time.perf_counter() - t_epoch, 3),
        }
        if collab is not None:
            record["collaborative_loss"] = collab_sum / max(1, loss_n)
        history.append(record)
        logger.info(
            "epoch %d/%d: loss %.5f recon_mse %.6f usage %s unique %.4f reseeded %d | %.1fs, ETA %s",
            epoch, epochs, record["loss"], ev["recon_mse"], [round(u, 3) for u in ev["usage"]],
            ev["unique_ratio"], reseeded, record["seconds"], format_seconds(eta),
        )
        if ckpt is not None:
            _save_checkpoint(ckpt, model, opt, sched, epoch, {**meta, "history": history, "init": init_metrics})

    model.eval()
    if model_cfg.last_level_balance > 0:
        with torch.no_grad():
            model.quantizer.fit_last_level_balance_(model.encode_latent(eval_x), model_cfg.last_level_balance)
    final = evaluate(model, eval_x)
    metrics = {
        **final,
        "n_train": n,
        "epochs": epochs,
        "method": model_cfg.method,
        "steps": step,
        "device": device.type,
        "train_seconds": round(time.perf_counter() - t_start, 3),
        "init_recon_mse": init_metrics["recon_mse"],
        "init_unique_ratio": init_metrics["unique_ratio"],
    }
    if collab is not None:
        metrics["collaborative"] = {"used": True, "weight": cfg.collaborative_weight, **collab.summary}
    if out_dir is not None:
        save_model(model, out_dir, extra={"train": cfg.to_dict(), "metrics": metrics})
        shutil.rmtree(ckpt, ignore_errors=True)
    return TrainResult(model, history, metrics, resumed_from_epoch=start_epoch - 1)


def _collaborative(
    x: np.ndarray,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    interactions: Interactions | ItemSequences | None,
    item_ids: np.ndarray | None,
) -> CollaborativeLoss | None:
    """The collaborative term, or None for content-only training (no logs, weight 0 or rqkmeans)."""
    if interactions is None:
        return None
    if cfg.collaborative_weight <= 0 or model_cfg.method == "rqkmeans":
        logger.info("interactions given but not used (collaborative_weight %s, method %s): content-only training",
                    cfg.collaborative_weight, model_cfg.method)
        return None
    from .collaborative import CollaborativeLoss, ItemSequences

    if isinstance(interactions, ItemSequences):
        sequences = interactions
    else:
        if item_ids is None or len(item_ids) != x.shape[0]:
            raise ValueError("training with interactions needs item_ids: the item id of every row of vectors")
        sequences = ItemSequences.from_interactions(interactions, np.asarray(item_ids))
    loss = CollaborativeLoss(sequences, x, window=cfg.collaborative_window,
                             temperature=cfg.collaborative_temperature, pairs=cfg.collaborative_pairs or cfg.batch_size)
    logger.info("collaborative term: weight %s, %d interactions of %d users on %d items, window %d",
                cfg.collaborative_weight, loss.summary["n_interactions"], loss.summary["n_users"],
                loss.summary["n_items_with_interactions"], cfg.collaborative_window)
    return loss


def _shape_latent(model: RQVAE, x_all: torch.Tensor, collab: CollaborativeLoss, cfg: TrainConfig) -> None:
    """Before any codebook exists: train encoder and decoder on the continuous latent, reconstruction of every
    item plus the collaborative term, so the residual k-means that follows cuts a latent already shaped by
    behaviour (codebooks fitted afterwards use every code; pulling latents under fixed codebooks collapses them).
    """
    params = list(model.encoder.parameters()) + list(model.decoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg.collaborative_steps, cfg.warmup_frac))
    gen = torch.Generator().manual_seed(cfg.seed * 31 + 7)
    rng = np.random.default_rng([cfg.seed, 0, 104_729])
    n = x_all.shape[0]
    model.train()
    t0 = time.perf_counter()
    rec_sum = col_sum = 0.0
    for step in range(cfg.collaborative_steps):
        xb = x_all[torch.randint(0, n, (cfg.batch_size,), generator=gen).to(x_all.device)]
        recon = torch.nn.functional.mse_loss(model.decode_latent(model.encode_latent(xb)), xb)
        c_loss = collab(model, rng)
        loss = recon + cfg.collaborative_weight * c_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        rec_sum += float(recon.detach())
        col_sum += float(c_loss.detach())
        if (step + 1) % 100 == 0 or step + 1 == cfg.collaborative_steps:
            logger.info("shaping the latent: step %d/%d recon %.6f collaborative %.4f (%.1fs)", step + 1,
                        cfg.collaborative_steps, rec_sum / 100, col_sum / 100, time.perf_counter() - t0)
            rec_sum = col_sum = 0.0
