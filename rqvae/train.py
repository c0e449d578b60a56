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
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .checkpoint import save_model
from .config import ModelConfig, TrainConfig
from .errors import ConfigError
from .fsutil import remove_leftovers, replace_dir, temp_path
from .metrics import code_metrics
from .model import ENCODE_BATCH_ROWS, RQVAE, resolve_device
from .progress import Progress, format_seconds
from .readers import EmbeddingRows
from .threads import step_threads

if TYPE_CHECKING:
    from .collaborative import CollaborativeEmbeddings, CollaborativeLoss, ItemSequences
    from .interactions import Interactions

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
_FINGERPRINT_ROWS = 1024  # first and last rows of the training data its fingerprint hashes (checked on resume)
_EVAL_BATCH = ENCODE_BATCH_ROWS
_EVAL_FLOATS = 1 << 27  # rows x hidden width per evaluation batch (a wide collaborative memory gets fewer rows)
_EVAL_MIN_ROWS = 1024  # however wide the model, an evaluation batch has at least this many rows


@dataclass
class TrainResult:
    model: RQVAE
    history: list[dict[str, Any]]
    metrics: dict[str, Any]
    resumed_from_epoch: int


def _fingerprint(x: np.ndarray) -> str:
    """Cheap identity of the training data: shape plus a hash of its first and last rows."""
    digest = hashlib.sha256(f"{x.shape}".encode())
    digest.update(np.ascontiguousarray(x[:_FINGERPRINT_ROWS]).tobytes())
    digest.update(np.ascontiguousarray(x[-_FINGERPRINT_ROWS:]).tobytes())
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
    batch = max(_EVAL_MIN_ROWS, min(_EVAL_BATCH, _EVAL_FLOATS // max(model.hidden_channels)))
    for start in range(0, x.shape[0], batch):
        xb = x[start : start + batch].to(model.device, torch.float32)
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
    return torch.optim.AdamW(  # fused: one kernel for all parameters on a GPU, where launches dominate
        [{"params": nets, "weight_decay": cfg.weight_decay}, {"params": books, "weight_decay": 0.0}], lr=cfg.lr,
        **({"fused": True} if model.device.type == "cuda" else {"foreach": True}),
    )


def _save_checkpoint(ckpt: Path, model: RQVAE, opt, sched, epoch: int, meta: dict[str, Any],
                     collab: CollaborativeLoss | None = None, best: dict[str, torch.Tensor] | None = None) -> None:
    """Model weights (safetensors) + optimiser state (tensors only) + progress, swapped in atomically."""
    remove_leftovers(ckpt)  # what an epoch killed mid-save left beside the checkpoint
    tmp = temp_path(ckpt)
    try:
        save_model(model, tmp)
        state = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
        if collab is not None:  # fitted at init, on the initial latent: a resumed run must not refit it
            state["collaborative"] = {"basis": collab.basis, "scale": torch.tensor(collab.scale)}
        if best is not None:  # early stopping's best weights so far: a resumed run can still go back to them
            state["best"] = best
        torch.save(state, tmp / "optimizer.pt")
        (tmp / "progress.json").write_text(json.dumps({**meta, "epoch": epoch}))
        replace_dir(tmp, ckpt)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
    saved["collaborative_state"] = extra.get("collaborative")
    saved["best_state"] = extra.get("best")
    return saved


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

    ``vectors`` may be an :class:`rqvae.readers.EmbeddingRows`: then only the rows training uses are read (the
    sample of ``max_train_items`` and the held-out rows), with the same draws, so the model is the same.

    ``interactions`` (with ``item_ids``, the item of each row of vectors) adds the collaborative signal of
    :mod:`rqvae.collaborative` with ``train_cfg.collaborative_weight`` (behaviour's weight against content in the
    latent the codebooks cut); without them, or with weight 0,
    training is exactly the content-only one. Pass only logs the model may learn from: when its IDs are to be
    evaluated on users' last items, the training part of the split (``LeaveOneOut.train_interactions()``).
    """
    cfg = train_cfg or TrainConfig()
    if isinstance(vectors, EmbeddingRows) and interactions is not None and cfg.collaborative_weight > 0:
        vectors = vectors.take()  # the collaborative signal covers every item
    if isinstance(vectors, EmbeddingRows):
        source, shape = vectors, vectors.shape
    else:
        source = np.ascontiguousarray(vectors, dtype=np.float32)
        shape = source.shape
    if len(shape) != 2 or shape[1] != model_cfg.input_dim:
        raise ValueError(f"vectors must be [N, {model_cfg.input_dim}], got {shape}")
    signal = _collaborative(source, model_cfg, cfg, interactions, item_ids) if interactions is not None else None
    rng = np.random.default_rng(cfg.seed)
    pick = held = None
    if cfg.early_stop_patience:
        pick, held = heldout_split(shape[0], cfg, rng)
    elif shape[0] > cfg.max_train_items:
        pick = np.sort(rng.choice(shape[0], cfg.max_train_items, replace=False))
    x_held = _rows(source, held) if held is not None else None
    x_np = _rows(source, pick)
    n = x_np.shape[0]
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    x_all = torch.from_numpy(x_np).to(device)
    architecture = model_cfg
    if signal is not None and cfg.collaborative_hidden:
        # the memory of warm items' behaviour: about one hidden unit per warm item, up to collaborative_hidden,
        # and at most 64 per input dimension (32x the content model's width) to bound training and encoding cost
        warm = int(np.count_nonzero(signal[1].confidence))
        widths = [min(cfg.collaborative_hidden, 1 << max(6, (warm - 1).bit_length()), 64 * model_cfg.input_dim)]
        architecture = replace(model_cfg, hidden_channels=widths)
    model = RQVAE.from_config(architecture, device=device)
    opt = _optimizer(model, cfg)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = 0 if model_cfg.method == "rqkmeans" else (cfg.max_steps or cfg.epochs * steps_per_epoch)
    epochs = math.ceil(total_steps / steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total_steps, cfg.warmup_frac))
    if held is None:
        eval_x = x_all[torch.from_numpy(np.sort(rng.choice(n, min(n, cfg.eval_items), replace=False))).to(device)]
    else:  # per-epoch metrics (and the early-stopping decision) on items training never sees
        eval_x = torch.from_numpy(x_held).to(device)
    meta = {"data": _fingerprint(x_np), "model": model_cfg.to_dict(), "train": cfg.to_dict()}
    if signal is not None:
        meta["interactions"] = signal[0].fingerprint()
    collab: CollaborativeLoss | None = None

    ckpt = Path(out_dir) / CHECKPOINT_DIR if out_dir is not None else None
    saved = _try_resume(ckpt, model, opt, sched, meta) if ckpt is not None else None
    if saved is not None:
        start_epoch, history, init_metrics = saved["epoch"] + 1, saved["history"], saved["init"]
        logger.info("resuming from checkpoint after epoch %d/%d", saved["epoch"], epochs)
        if signal is not None:
            with torch.no_grad():  # the latent's width and device; basis and scale come from the checkpoint
                collab = _alignment(signal, pick, model.encode_latent(eval_x), saved.get("collaborative_state"),
                                    cfg.collaborative_weight)
            _freeze_branches(model)
    else:
        gen = torch.Generator().manual_seed(cfg.seed)
        init_idx = np.sort(rng.choice(n, min(n, cfg.init_items), replace=False))
        t0 = time.perf_counter()
        init_x = x_all[torch.from_numpy(init_idx).to(device)]
        if signal is not None:  # the codebooks are fitted after the alignment: skip the k-means here
            method, model.kmeans_method = model.kmeans_method, "none"
            model.initialize(init_x, generator=gen)
            model.kmeans_method = method
        else:
            model.initialize(init_x, generator=gen)
        if signal is not None:
            from .collaborative import fit_alignment_

            with torch.no_grad():
                collab = _alignment(signal, pick, model.encode_latent(init_x), None, cfg.collaborative_weight)
            width = model.encoder.branch[-1].in_features
            fit_alignment_(model, init_x, torch.from_numpy(init_idx).to(device), collab, max_rows=2 * width)
            _freeze_branches(model)
            with torch.no_grad():  # codebooks cut the aligned latent (fitted before, they would collapse codes)
                model.quantizer.init_from_data_(model.encode_latent(init_x), model.kmeans_method,
                                                model.kmeans_iters, gen)
        init_metrics = {**evaluate(model, eval_x), "seconds": round(time.perf_counter() - t0, 3)}
        start_epoch, history = 1, []
        logger.info(
            "init (residual k-means): recon_mse %.6f unique %.4f usage %s",
            init_metrics["recon_mse"], init_metrics["unique_ratio"], init_metrics["usage"],
        )

    use_amp = device.type == "cuda" and cfg.precision == "bf16"
    # multiply-adds of one step's forward pass: the MLP's weight matrices and the code search over every level
    step_macs = cfg.batch_size * sum(p.numel() for p in model.parameters() if p.dim() == 2)
    used_threads = None
    step = (start_epoch - 1) * steps_per_epoch
    t_start = time.perf_counter()
    kmax = max(model.codebook_size)
    stopped_after = None
    best = None  # early stopping: weights of the lowest held-out recon MSE so far (the initialisation included)
    if cfg.early_stop_patience:
        best = saved["best_state"] if saved is not None and saved.get("best_state") is not None else _weights(model)
    for epoch in range(start_epoch, epochs + 1):
        if cfg.early_stop_patience and stalled(init_metrics["recon_mse"], history, cfg):
            stopped_after = epoch - 1  # checked before the epoch, so a resumed run decides the same way
            logger.info("early stop after epoch %d/%d: held-out recon MSE improved < %.2g%% in %d epoch(s)",
                        stopped_after, epochs, 100 * cfg.early_stop_delta, cfg.early_stop_patience)
            break
        model.train()
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)).to(device)
        reseed_gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
        # running sums stay on the device: reading them every step would make a GPU wait for each batch
        collab_sum = torch.zeros((), dtype=torch.float64, device=device)
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        counts = torch.zeros(model.num_codebooks, kmax, dtype=torch.long, device=device)
        level_offset = torch.arange(model.num_codebooks, device=device) * kmax
        loss_n, reseeded = 0, 0
        t_epoch = time.perf_counter()
        on_cpu = step_threads(step_macs) if device.type == "cpu" else nullcontext(torch.get_num_threads())
        with (
            Progress(steps_per_epoch, f"epoch {epoch}/{epochs}", "batches", enabled=show_progress) as bar,
            on_cpu as threads,
        ):
            used_threads = threads
            for b in range(steps_per_epoch):
                if step >= total_steps:
                    break
                index = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                xb = x_all[index]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    if collab is None:
                        out = model(xb)
                        loss = out.total_loss
                    else:
                        with _latent_of(model) as latent:
                            out = model(xb)
                        c_loss = collab(latent[0], index)
                        loss = out.total_loss + c_loss
                        collab_sum += c_loss.detach()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                loss_sum += out.total_loss.detach()
                loss_n += 1
                ids = (out.semantic_ids + level_offset).view(-1)
                counts.view(-1).index_add_(0, ids, torch.ones_like(ids))
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
            "loss": float(loss_sum) / max(1, loss_n),
            "recon_mse": ev["recon_mse"],
            "unique_ratio": ev["unique_ratio"],
            "usage": ev["usage"],
            "perplexity": ev["perplexity"],
            "reseeded_codes": reseeded,
            "seconds": round(time.perf_counter() - t_epoch, 3),
        }
        if collab is not None:
            record["collaborative_loss"] = float(collab_sum) / max(1, loss_n)
        history.append(record)
        if best is not None and ev["recon_mse"] < min(r["recon_mse"] for r in [init_metrics, *history[:-1]]):
            best = _weights(model)
        logger.info(
            "epoch %d/%d: loss %.5f recon_mse %.6f usage %s unique %.4f reseeded %d | %.1fs, ETA %s",
            epoch, epochs, record["loss"], ev["recon_mse"], [round(u, 3) for u in ev["usage"]],
            ev["unique_ratio"], reseeded, record["seconds"], format_seconds(eta),
        )
        if ckpt is not None:
            _save_checkpoint(ckpt, model, opt, sched, epoch, {**meta, "history": history, "init": init_metrics},
                             collab, best)

    best_epoch = None
    if best is not None:
        curve = [init_metrics["recon_mse"], *(r["recon_mse"] for r in history)]
        best_epoch = int(np.argmin(curve))
        if best_epoch != len(history):  # a later epoch was worse on the held-out items: keep the best weights
            model.load_state_dict(best)
            logger.info("keeping the weights of epoch %d (held-out recon MSE %.6f)", best_epoch, curve[best_epoch])
    model.eval()
    if model_cfg.last_level_balance > 0:
        with torch.no_grad():
            model.quantizer.fit_last_level_balance_(model.encode_latent(eval_x), model_cfg.last_level_balance)
    # nothing moved since the initial evaluation when no step was taken (rqkmeans) and no balance was fitted
    unchanged = (step == 0 or best_epoch == 0) and model_cfg.last_level_balance <= 0
    final = {k: v for k, v in init_metrics.items() if k != "seconds"} if unchanged else evaluate(model, eval_x)
    metrics = {
        **final,
        "n_train": n,
        "epochs": epochs,
        "epochs_run": len(history),
        "stopped_early_after": stopped_after,
        "best_epoch": best_epoch,
        "eval_heldout": held is not None,
        "method": model_cfg.method,
        "steps": step,
        "device": device.type,
        "autocast_bf16": use_amp,
        "step_threads": used_threads,  # torch threads of the optimisation steps (None: no step was taken)
        "init_seconds": init_metrics.get("seconds"),
        "train_seconds": round(time.perf_counter() - t_start, 3),
        "init_recon_mse": init_metrics["recon_mse"],
        "init_unique_ratio": init_metrics["unique_ratio"],
    }
    if collab is not None:
        metrics["collaborative"] = {"used": True, "weight": cfg.collaborative_weight, **collab.summary,
                                    "embedding_seconds": round(collab.seconds, 3)}
    if out_dir is not None:
        save_model(model, out_dir, extra={"train": cfg.to_dict(), "metrics": metrics})
        shutil.rmtree(ckpt, ignore_errors=True)
        remove_leftovers(ckpt)
    return TrainResult(model, history, metrics, resumed_from_epoch=start_epoch - 1)


def _weights(model: RQVAE) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def _rows(source: np.ndarray | EmbeddingRows, rows: np.ndarray | None) -> np.ndarray:
    """The given sorted rows of the vectors (all of them for None)."""
    if isinstance(source, EmbeddingRows):
        return source.take(rows)
    return source if rows is None else source[rows]


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


def _collaborative(
    x: np.ndarray,
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    interactions: Interactions | ItemSequences | None,
    item_ids: np.ndarray | None,
) -> tuple[ItemSequences, CollaborativeEmbeddings] | None:
    """The logs as item sequences and their collaborative embeddings, or None for content-only training (no
    logs, weight 0 or rqkmeans)."""
    if interactions is None:
        return None
    if cfg.collaborative_weight <= 0 or model_cfg.method == "rqkmeans":
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


def _alignment(signal: tuple[ItemSequences, CollaborativeEmbeddings], pick: np.ndarray | None, z: torch.Tensor,
               state: dict[str, torch.Tensor] | None, weight: float) -> CollaborativeLoss:
    """The alignment term for the training sample (``pick`` rows of the catalogue, None = all)."""
    from .collaborative import CollaborativeLoss

    sequences, embeddings = signal
    loss = CollaborativeLoss(embeddings, pick, z, sequences.summary(), weight)
    if state is not None:
        loss.basis = state["basis"].to(loss.basis.device)
        loss.scale = float(state["scale"])
    return loss


class _latent_of:
    """Context manager capturing the encoder's output during one forward (the latent the quantiser gets), so the
    alignment term uses the very tensor of the step without a second encoder pass."""

    def __init__(self, model: RQVAE) -> None:
        self.model = model
        self.captured: list[torch.Tensor] = []

    def __enter__(self) -> list[torch.Tensor]:
        self.handle = self.model.encoder.register_forward_hook(lambda _m, _i, out: self.captured.append(out))
        return self.captured

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


def _freeze_branches(model: RQVAE) -> None:
    """Keep the fitted memory as fitted: Adam moves each of a wide layer's weights by about its learning rate per
    step, which on 8192 hidden units swings the output far enough to collapse the codes (measured: unique-ID ratio
    0.0006 after one epoch). The linear paths and the codebooks keep training."""
    for part in (model.encoder.branch, model.decoder.branch):
        part.requires_grad_(False)
