"""Stage `train_rqvae`: fit an RQ-VAE on the validated artifact and write `{work}/model/`.

Runs on the `gpu` queue; the library picks CUDA when the worker has it, else CPU. The library caps the
training sample at `max_train_items` (a seeded draw, so re-runs train on the same items) and checkpoints every
epoch under the model folder, so a retried task resumes rather than starting over.

When the day's interactions snapshot `{interactions_root}/{snapshot}/` is complete (`_SUCCESS`), training adds
the collaborative term (rqvae.training.collaborative) with `collaborative_weight`; when it is absent, training is the
content-only one, unchanged. Each user's events the evaluation may test on are held out (the temporal protocol's
training part, which also leaves out leave-one-out's last two): the evaluation DAG judges the published IDs on
those events of the same logs, so the model must not have seen them. The manifest records the snapshot used.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from include.files import jsonable, read_json
from include.layout import RunFolder
from include.results import RunInfo, Trained, content_only
from include.versions import Version
from rqvae.modes import Alignment, Protocol, RunMode

if TYPE_CHECKING:
    from rqvae.config import ModelConfig, RetrainPolicy, TrainConfig

log = logging.getLogger(__name__)

# Metrics small enough for XCom and the manifest (per-level lists have one entry per codebook level).
REPORTED_METRICS = (
    "recon_mse", "unique_ratio", "collision_rate", "usage", "perplexity", "max_bucket", "n_train", "epochs",
    "steps", "device", "train_seconds", "init_recon_mse", "init_unique_ratio", "epochs_run", "stopped_early_after",
    "best_epoch",
)
# Each user's events the evaluation DAG may test on stay unseen: the temporal protocol's (the last 20%, 1-20, and
# the validation event before them), which include leave-one-out's last two, so either protocol judges fairly.
HOLDOUT = Protocol.TEMPORAL


def train_rqvae(
    run: RunInfo, artifact: str | Path, model: ModelConfig, training: TrainConfig, policy: RetrainPolicy
) -> Trained:
    """Train and save the model; returns `{model_path, metrics, device, config, resumed_from_epoch, plan,
    collaborative}` (include.results.Trained).

    `model` must have the artifact's dimension as input_dim. `policy.mode` incremental/auto may reuse the
    latest published model instead (see include.incremental): the model is copied into the work folder, so
    later stages and publish see the same layout either way. `policy.align_retrain`: after a retrain, align the
    codes with the previous version (include.continuity.align_retrain); the result then has `alignment` with
    churn before and after. `run["interactions_dir"]`: the day's interactions snapshot, used only when complete
    and `training.collaborative_weight` > 0 (then `collaborative` says so; an incremental run reports its base
    version's).
    """
    from include import incremental
    from include.continuity import align_retrain

    device = training.device
    folder = RunFolder(Path(run["work_dir"]))
    publish_root = run["publish_root"]
    plan = incremental.plan(policy, publish_root, artifact, device)
    log.info("train_rqvae: mode %s -> %s (%s)", policy.mode, plan["used"], plan["reason"])
    if plan["used"] == RunMode.INCREMENTAL:
        incremental.reuse_model(plan["base_version"], folder.model_dir)
        metrics = incremental.published_metrics(plan["base_version"])
        base = Version(Path(plan["base_version"]))
        collaborative = base.read_manifest().get("collaborative") if base.manifest.exists() else None
        reused = Trained(
            model_path=str(folder.model_dir),
            metrics={k: metrics[k] for k in REPORTED_METRICS if k in metrics},
            device=device,
            config={"model": read_json(folder.model_dir / "config.json").get("model", {})},
            resumed_from_epoch=None,
            plan=plan,
            collaborative=collaborative or content_only(),
        )
        return cast(Trained, jsonable(reused))
    sequences, item_ids, collaborative = _interactions(artifact, run, training.collaborative_weight)
    trained = _train(artifact, folder, model, training, sequences=sequences, item_ids=item_ids,
                     collaborative_weight=collaborative["weight"])
    result: Trained = {**trained, "plan": plan, "collaborative": collaborative}
    if policy.align_retrain != Alignment.OFF:
        result["alignment"] = align_retrain(folder.model_dir, artifact, publish_root, run["snapshot"], device,
                                            policy.align_retrain)
    return cast(Trained, jsonable(result))


def _interactions(artifact: str | Path, run: RunInfo, weight: float) -> tuple[Any, Any, dict[str, Any]]:
    """(rqvae.training.collaborative.ItemSequences or None, the artifact's item ids they were mapped onto or None,
    the manifest's `collaborative` entry) for this run."""
    from include.snapshot import snapshot_ready

    folder = Path(run["interactions_dir"])
    if not snapshot_ready(folder):
        state = "incomplete (no _SUCCESS marker or no data)" if folder.exists() else "absent"
        log.info("train_rqvae: interactions snapshot %s is %s: content-only training, as without interactions",
                 folder, state)
        return None, None, content_only()
    from rqvae.io.readers import item_ids_of
    from rqvae.training.collaborative import read_sequences

    weight = float(weight)
    if weight <= 0:
        log.info("train_rqvae: collaborative_weight 0: interactions %s not used, content-only training", folder)
        return None, None, content_only()
    item_ids = item_ids_of(artifact)  # behaviour is looked up by item id, in training and when items are encoded
    sequences = read_sequences(folder, item_ids, holdout=HOLDOUT)
    name = run["interactions_name"]
    summary = sequences.summary()
    log.info("train_rqvae: collaborative training on interactions %s (weight %s, the %s protocol's test and "
             "validation events held out): %d interactions on %d items", name, weight, HOLDOUT,
             summary["n_interactions"], summary["n_items_with_interactions"])
    return sequences, item_ids, {"used": True, "weight": weight, "interactions": name,
                       "n_interactions": summary["n_interactions"],
                       "n_items_with_interactions": summary["n_items_with_interactions"],
                       "holdout": HOLDOUT.value}


def _train(
    artifact: str | Path,
    folder: RunFolder,
    model_cfg: ModelConfig,
    training: TrainConfig,
    *,
    sequences: Any,
    item_ids: Any,
    collaborative_weight: float,
) -> dict[str, Any]:
    from dataclasses import replace

    from rqvae.errors import ConfigError
    from rqvae.io.readers import EmbeddingRows
    from rqvae.training.loop import train

    embeddings = EmbeddingRows(artifact)  # only the sampled rows are read: memory ~ max_train_items, not N
    n_items, dim = embeddings.shape
    if model_cfg.input_dim != dim:
        raise ConfigError(f"model input_dim {model_cfg.input_dim} != {dim}, the dimension of {artifact}")
    train_cfg = replace(  # as recorded in the model directory and the manifest
        training,
        init_items=min(training.init_items, training.max_train_items),
        collaborative_weight=collaborative_weight if sequences is not None else 0.0,
    )
    log.info(
        "train_rqvae: %d x %d items from %s, model %s, train %s",
        n_items, dim, artifact, model_cfg.to_dict(), train_cfg.to_dict(),
    )
    result = train(embeddings, model_cfg, train_cfg, out_dir=folder.model_dir, interactions=sequences,
                   item_ids=item_ids)
    metrics = {k: result.metrics[k] for k in REPORTED_METRICS if k in result.metrics}
    return {
        "model_path": str(folder.model_dir),
        "metrics": metrics,
        "device": metrics.get("device", train_cfg.device),
        "config": {"model": model_cfg.to_dict(), "train": train_cfg.to_dict()},
        "resumed_from_epoch": result.resumed_from_epoch,
    }
