"""Stage `train_rqvae`: fit an RQ-VAE on the validated artifact and write `{work}/model/`.

Runs on the `gpu` queue; the library picks CUDA when the worker has it, else CPU. The library caps the
training sample at `max_train_items` (a seeded draw, so re-runs train on the same items) and checkpoints every
epoch under the model folder, so a retried task resumes rather than starting over.

When the day's interactions snapshot `{interactions_root}/{snapshot}/` is complete (`_SUCCESS`), training adds
the collaborative term (rqvae.collaborative) with `collaborative_weight`; when it is absent, training is the
content-only one, unchanged. Each user's last two interactions are held out (the leave-one-out training part):
the evaluation DAG judges the published IDs on exactly those items of the same logs, so the model must not
have seen them. The cost is two events per user out of the signal; the manifest records the snapshot used.
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
HOLDOUT_LAST = 2  # each user's validation and test item (rqvae.interactions.leave_one_out) stay unseen


def content_only(weight: float = 0.0) -> dict[str, Any]:
    """The manifest's `collaborative` entry of a model trained without interactions."""
    return {"used": False, "weight": float(weight), "interactions": None, "n_interactions": 0,
            "n_items_with_interactions": 0}


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
    align: bool | str = "anchor",
    snapshot: str | None = None,
    interactions_dir: str | Path | None = None,
    interactions_root: str | Path | None = None,
    collaborative_weight: float | None = None,
) -> dict[str, Any]:
    """Train and save the model; returns `{model_path, metrics, device, config, resumed_from_epoch, mode,
    collaborative}`.

    `mode` incremental/auto may reuse the latest published model instead (see include.incremental): the
    model is copied into the work folder, so later stages and publish see the same layout either way.
    `align`: after a retrain, align the codes with the previous version (include.lineage.align_retrain:
    `anchor`, `permute`, `off`; True = anchor); the result then has `alignment` with churn before and after.
    `interactions_dir`: the day's interactions snapshot, used only when complete (then `collaborative` says so;
    an incremental run reports its base version's); `collaborative_weight` None = rqvae.collaborative's default.
    """
    from include import incremental

    folder = RunFolder(Path(work_dir))
    decision = incremental.plan(mode, publish_root, artifact, retrain_factor=retrain_factor, device=device)
    log.info("train_rqvae: mode %s -> %s (%s)", mode, decision["used"], decision["reason"])
    if decision["used"] == "incremental":
        incremental.reuse_model(decision["base_version"], folder.model_dir)
        metrics = incremental.published_metrics(decision["base_version"])
        base_manifest = Path(decision["base_version"]) / "manifest.json"
        collaborative = read_json(base_manifest).get("collaborative") if base_manifest.exists() else None
        return jsonable(
            {
                "model_path": str(folder.model_dir),
                "metrics": {k: metrics[k] for k in REPORTED_METRICS if k in metrics},
                "device": device,
                "config": {"model": read_json(folder.model_dir / "config.json").get("model", {})},
                "resumed_from_epoch": None,
                "mode": decision,
                "collaborative": collaborative or content_only(),
            }
        )
    sequences, collaborative = _interactions(artifact, interactions_dir, interactions_root, collaborative_weight)
    result = _train(artifact, folder, num_codebooks, codebook_size, latent_dim, epochs, batch_size,
                    max_train_items, seed, device, sequences=sequences, collaborative_weight=collaborative["weight"])
    result["mode"] = decision
    result["collaborative"] = collaborative
    from include.lineage import ALIGN_MODES, align_retrain

    method = ("anchor" if align else "off") if isinstance(align, bool) else str(align)
    if method not in ALIGN_MODES:
        raise ValueError(f"unknown align method {method!r}; expected one of {list(ALIGN_MODES)}")
    if method != "off":
        result["alignment"] = align_retrain(folder.model_dir, artifact, publish_root, snapshot or folder.root.name,
                                            device, method)
    return jsonable(result)


def _interactions(
    artifact: str | Path,
    interactions_dir: str | Path | None,
    interactions_root: str | Path | None,
    weight: float | None,
) -> tuple[Any, dict[str, Any]]:
    """(rqvae.collaborative.ItemSequences or None, the manifest's `collaborative` entry) for this run."""
    from include.snapshot import snapshot_ready

    if interactions_dir is None:
        log.info("train_rqvae: no interactions snapshot given: content-only training")
        return None, content_only()
    folder = Path(interactions_dir)
    if not snapshot_ready(folder):
        state = "incomplete (no _SUCCESS marker or no data)" if folder.exists() else "absent"
        log.info("train_rqvae: interactions snapshot %s is %s: content-only training, as without interactions",
                 folder, state)
        return None, content_only()
    from rqvae.collaborative import DEFAULT_WEIGHT, read_sequences
    from rqvae.io import read_embeddings

    weight = DEFAULT_WEIGHT if weight is None else float(weight)
    if weight <= 0:
        log.info("train_rqvae: collaborative_weight 0: interactions %s not used, content-only training", folder)
        return None, content_only()
    sequences = read_sequences(folder, read_embeddings(artifact).ids, holdout_last=HOLDOUT_LAST)
    try:
        name = folder.relative_to(interactions_root).as_posix() if interactions_root is not None else folder.name
    except ValueError:
        name = folder.name
    summary = sequences.summary()
    log.info("train_rqvae: collaborative training on interactions %s (weight %s, each user's last %d held out): "
             "%d interactions on %d items", name, weight, HOLDOUT_LAST, summary["n_interactions"],
             summary["n_items_with_interactions"])
    return sequences, {"used": True, "weight": weight, "interactions": name,
                       "n_interactions": summary["n_interactions"],
                       "n_items_with_interactions": summary["n_items_with_interactions"],
                       "holdout_last": HOLDOUT_LAST}


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
    *,
    sequences: Any = None,
    collaborative_weight: float = 0.0,
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
        collaborative_weight=collaborative_weight if sequences is not None else 0.0,
    )
    log.info(
        "train_rqvae: %d x %d items from %s, model %s, train %s",
        len(embeddings), embeddings.dim, artifact, model_cfg.to_dict(), train_cfg.to_dict(),
    )
    result = train(embeddings.vectors, model_cfg, train_cfg, out_dir=folder.model_dir, interactions=sequences)
    metrics = {k: result.metrics[k] for k in REPORTED_METRICS if k in result.metrics}
    return {
        "model_path": str(folder.model_dir),
        "metrics": metrics,
        "device": metrics.get("device", device),
        "config": {"model": model_cfg.to_dict(), "train": train_cfg.to_dict()},
        "resumed_from_epoch": result.resumed_from_epoch,
    }
