"""The optimisation: AdamW with warm-up and cosine decay, one epoch of minibatch steps, and its evaluation.

Epoch permutations and dead-code reseeding are seeded by (seed, epoch), so a resumed run follows the same path
as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..config import ModelConfig, TrainConfig
from ..model import ENCODE_BATCH_ROWS, RQVAE
from ..modes import Method, Precision
from ..progress import Progress, format_seconds
from ..quantize.metrics import code_metrics
from ..threads import step_threads
from .early_stop import weights

if TYPE_CHECKING:
    from .sample import Sample

logger = logging.getLogger("rqvae.training.loop")  # the training run's log, whichever of its steps writes

_EVAL_BATCH = ENCODE_BATCH_ROWS
_EVAL_FLOATS = 1 << 27  # rows x hidden width per evaluation batch (a wide hidden layer gets fewer rows)
_EVAL_MIN_ROWS = 1024  # however wide the model, an evaluation batch has at least this many rows


@dataclass
class Run:
    """One run's state: what the epochs advance, a checkpoint saves and the final metrics report."""

    model: RQVAE
    sample: Sample
    cfg: TrainConfig
    device: torch.device
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    steps_per_epoch: int
    total_steps: int  # 0 for rqkmeans: the initial codebooks are the model
    epochs: int
    start_epoch: int = 1  # after the checkpoint's epoch when resumed
    history: list[dict[str, Any]] = field(default_factory=list)
    init_metrics: dict[str, Any] = field(default_factory=dict)
    best: dict[str, torch.Tensor] | None = None  # early stopping: weights of the lowest held-out recon MSE so far
    step: int = 0
    stopped_after: int | None = None  # the last epoch run when early stopping ended the run
    used_threads: int | None = None  # torch threads of the optimisation steps (None: no step was taken)
    t_start: float = 0.0

    @classmethod
    def plan(cls, model: RQVAE, sample: Sample, model_cfg: ModelConfig, cfg: TrainConfig,
             device: torch.device) -> Run:
        """The optimiser and the schedule: ``max_steps`` or ``epochs`` passes over the sample."""
        opt = _optimizer(model, cfg)
        steps_per_epoch = math.ceil(sample.n / cfg.batch_size)
        total_steps = 0 if model_cfg.method == Method.RQKMEANS else (cfg.max_steps or cfg.epochs * steps_per_epoch)
        epochs = math.ceil(total_steps / steps_per_epoch)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(total_steps, cfg.warmup_frac))
        return cls(model, sample, cfg, device, opt, sched, steps_per_epoch, total_steps, epochs)

    @property
    def use_amp(self) -> bool:
        return self.device.type == "cuda" and self.cfg.precision == Precision.BF16

    def begin(self) -> None:
        """Count steps from where the run stands and start the clock. Early stopping keeps the checkpoint's
        best weights when resumed, else starts from the model as it is (the initialisation is a candidate)."""
        self.step = (self.start_epoch - 1) * self.steps_per_epoch
        self.t_start = time.perf_counter()
        if not self.cfg.early_stop_patience:
            self.best = None
        elif self.best is None:
            self.best = weights(self.model)

    def progress(self) -> dict[str, Any]:
        """What a checkpoint records besides the tensors: the run's identity, history and init metrics."""
        return {**self.sample.meta, "history": self.history, "init": self.init_metrics}


def _lr_lambda(total_steps: int, warmup_frac: float):
    warmup = max(1, int(total_steps * warmup_frac))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def _optimizer(model: RQVAE, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on codebooks (it would pull codewords toward the origin)."""
    books = list(model.quantizer.parameters())
    book_ids = {id(p) for p in books}
    nets = [p for p in model.parameters() if id(p) not in book_ids]
    return torch.optim.AdamW(  # fused: one kernel for all parameters on a GPU, where launches dominate
        [{"params": nets, "weight_decay": cfg.weight_decay}, {"params": books, "weight_decay": 0.0}], lr=cfg.lr,
        **({"fused": True} if model.device.type == "cuda" else {"foreach": True}),
    )


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


def run_epoch(run: Run, epoch: int, show_progress: bool) -> dict[str, Any]:
    """One pass of minibatch steps over the sample (fewer when ``max_steps`` ends it), then the evaluation and
    the epoch's log line; returns the epoch's record for the history."""
    model, cfg, device = run.model, run.cfg, run.device
    x_all, n = run.sample.x, run.sample.n
    # multiply-adds of one step's forward pass: the MLP's weight matrices and the code search over every level
    step_macs = cfg.batch_size * sum(p.numel() for p in model.parameters() if p.dim() == 2)
    kmax = max(model.codebook_size)
    model.train()
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)).to(device)
    reseed_gen = torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
    # running sums stay on the device: reading them every step would make a GPU wait for each batch
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    counts = torch.zeros(model.num_codebooks, kmax, dtype=torch.long, device=device)
    level_offset = torch.arange(model.num_codebooks, device=device) * kmax
    loss_n, reseeded = 0, 0
    t_epoch = time.perf_counter()
    on_cpu = step_threads(step_macs) if device.type == "cpu" else nullcontext(torch.get_num_threads())
    with (
        Progress(run.steps_per_epoch, f"epoch {epoch}/{run.epochs}", "batches", enabled=show_progress) as bar,
        on_cpu as threads,
    ):
        run.used_threads = threads
        for b in range(run.steps_per_epoch):
            if run.step >= run.total_steps:
                break
            index = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            xb = x_all[index]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.use_amp):
                out = model(xb)
                loss = out.total_loss
            run.opt.zero_grad(set_to_none=True)
            loss.backward()
            run.opt.step()
            run.sched.step()
            run.step += 1
            loss_sum += out.total_loss.detach()
            loss_n += 1
            ids = (out.semantic_ids + level_offset).view(-1)
            counts.view(-1).index_add_(0, ids, torch.ones_like(ids))
            if cfg.reseed_every and run.step % cfg.reseed_every == 0 and run.step < 0.9 * run.total_steps:
                with torch.no_grad():
                    residuals = model.quantizer.residuals_of(model.encode_latent(xb))
                reseeded += model.quantizer.reseed_dead_codes_(counts, residuals, reseed_gen)
                counts.zero_()
            bar.update(1)
    ev = evaluate(model, run.sample.eval_x)
    elapsed = time.perf_counter() - run.t_start
    eta = elapsed / (epoch - run.start_epoch + 1) * (run.epochs - epoch)
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
    logger.info(
        "epoch %d/%d: loss %.5f recon_mse %.6f usage %s unique %.4f reseeded %d | %.1fs, ETA %s",
        epoch, run.epochs, record["loss"], ev["recon_mse"], [round(u, 3) for u in ev["usage"]],
        ev["unique_ratio"], reseeded, record["seconds"], format_seconds(eta),
    )
    return record
