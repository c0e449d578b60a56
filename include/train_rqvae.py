"""Stage `train_rqvae`: fit an RQ-VAE on the validated artifact and write `{work}/model/`.

Runs on the `gpu` queue; the library picks CUDA when the worker has it, else CPU. The library caps the
training sample at `max_train_items` (a seeded draw, so re-runs train on the same items) and checkpoints every
epoch under the model folder, so a retried task resumes rather than starting over.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from include.files import jsonable, read_json
from include.layout import RunFolder

log = logging.getLogger(__name__)

# Metrics small enough for XCom and the manifest (per-level lists have one entry per codebook level).
REPORTED_METRICS = (
    "recon_mse", "unique_ratio", "collision_rate", "usage", "perplexity", "max_bucket", "n_train", "epochs",
    "steps", "device", "train_seconds", "init_recon_mse", "init_unique_ratio",
)


def train_rqvae(
    artifact: str | Path,
    work_dir: str | Path,
    *,
    num_codebooks: int = 3,
    codebook_size: int = 256,
    latent_dim: int = 0,
    epochs: int = 5,
    batch_size: int = 1024,
    max_train_items: int = 1_000_000,
    seed: int = 0,
    device: str = "auto",
    mode: str = "retrain",
    publish_root: str | Path | None = None,
    retrain_factor: float = 1.5,
) -> dict[str, Any]:
    """Train and save the model; returns `{model_path, metrics, device, config, resumed_from_epoch, mode}`.

    `mode` incremental/auto may reuse the latest published model instead (see include.incremental): the
    model is copied into the work folder, so later stages and publish see the same layout either way.
    """
    from include import incremental

    folder = RunFolder(Path(work_dir))
    decision = incremental.plan(mode, publish_root, artifact, retrain_factor=retrain_factor, device=device)
    log.info("train_rqvae: mode %s -> %s (%s)", mode, decision["used"], decision["reason"])
    if decision["used"] == "incremental":
        incremental.reuse_model(decision["base_version"], folder.model_dir)
        metrics = incremental.published_metrics(decision["base_version"])
        return jsonable(
            {
                "model_path": str(folder.model_dir),
                "metrics": {k: metrics[k] for k in REPORTED_METRICS if k in metrics},
                "device": device,
                "config": {"model": read_json(folder.model_dir / "config.json").get("model", {})},
                "resumed_from_epoch": None,
                "mode": decision,
            }
        )
    result = _train(artifact, folder, num_codebooks, codebook_size, latent_dim, epochs, batch_size,
                    max_train_items, seed, device)
    result["mode"] = decision
    return jsonable(result)


def _train(
    artifact: str | Path,
    folder: RunFolder,
    num_codebooks: int,
    codebook_size: int,
    latent_dim: int,
    epochs: int,
    batch_size: int,
    max_train_items: int,
    seed: int,
    device: str,
) -> dict[str, Any]:
    from rqvae.config import ModelConfig, TrainConfig
    from rqvae.io import read_embeddings
    from rqvae.train import train

    embeddings = read_embeddings(artifact)
    model_cfg = ModelConfig(
        input_dim=embeddings.dim,
        num_codebooks=num_codebooks,
        codebook_size=[codebook_size] * num_codebooks,
        latent_dim=latent_dim,
    )
    train_cfg = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        max_train_items=max_train_items,
        init_items=min(TrainConfig().init_items, max_train_items),
        seed=seed,
        device=device,
    )
    log.info(
        "train_rqvae: %d x %d items from %s, model %s, train %s",
        len(embeddings), embeddings.dim, artifact, model_cfg.to_dict(), train_cfg.to_dict(),
    )
    result = train(embeddings.vectors, model_cfg, train_cfg, out_dir=folder.model_dir)
    metrics = {k: result.metrics[k] for k in REPORTED_METRICS if k in result.metrics}
    return {
        "model_path": str(folder.model_dir),
        "metrics": metrics,
        "device": metrics.get("device", device),
        "config": {"model": model_cfg.to_dict(), "train": train_cfg.to_dict()},
        "resumed_from_epoch": result.resumed_from_epoch,
    }
