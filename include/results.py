"""What each task of `rqvae_semantic_ids` and `semantic_ids_evaluation` hands the next through XCom, one
TypedDict per task.

XCom values stay plain JSON dicts at runtime (Airflow serialises them as dicts and a retried task reads them
back as dicts); these types name their keys once, so a stage, the DAG task wrapping it and every reader
agree. Only small figures and paths travel: data stays in the run folder (`include.layout.RunFolder`).

The key names are also what the manifest records (`metrics.encode` is the `Encoded` dict as it was), so a
key is renamed only when it meant two things: train_rqvae's decision is `plan` (it was `mode`, the name of the
run-mode param); `Encoded.mode` keeps naming the run mode that was used.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

from rqvae.modes import CollisionMode, PromotionKind, RunMode, Verdict


class RunInfo(TypedDict):
    """`wait_for_embeddings`: the snapshot and every folder this run reads and writes, resolved once.

    `publish_root` is None only where a stage runs without publishing (tests, library use): no previous version
    is looked for. `interactions_dir` is the day's interactions snapshot in the run's data-set namespace, used
    only when complete; `interactions_name` is how the manifest names it (relative to the configured root).
    """

    snapshot: str
    snapshot_dir: str
    work_dir: str  # `{work_root}/{namespace}/{snapshot}/{run}/`, private to the run
    publish_root: str | None
    interactions_dir: str
    interactions_name: str


class Loaded(TypedDict):
    """`load_embeddings`: the canonical artifact `{work}/embeddings.parquet`."""

    path: str
    n_items: int
    dim: int  # the most common vector length (validate_dims checks every row)
    dims: dict[str, int]  # vector length -> rows (the first ten lengths)
    checksum: str  # sha256 of the artifact, recorded in the manifest


class DimsChecked(TypedDict):
    """`validate_dims`: the input suite passed (a failure raises instead of returning)."""

    ok: bool
    n_items: int
    dim: int
    report: str
    evaluated: int
    seconds: float


class Shard(TypedDict):
    """`plan_shards` (one list entry per mapped `encode_items`): rows `[start, stop)`, shard `index` of `count`."""

    index: int
    count: int
    start: int
    stop: int


class Plan(TypedDict):
    """How a run gets its model (include.incremental.plan): retrain, or build on a published version."""

    requested: RunMode
    used: RunMode  # RETRAIN or INCREMENTAL (AUTO decides between them)
    reason: str
    base_version: str | None  # the stored copy of the version built on (its model and kept IDs)
    n_items: NotRequired[int]
    n_unchanged: NotRequired[int]
    n_new_or_changed: NotRequired[int]
    recon_mse_new: NotRequired[float | None]  # `auto` only: the published model on new or changed items
    recon_mse_published: NotRequired[float | None]
    retrain_factor: NotRequired[float]


class Trained(TypedDict):
    """`train_rqvae`: the model in `{work}/model/` and how it was obtained."""

    model_path: str
    metrics: dict[str, Any]  # include.stages.train_rqvae.REPORTED_METRICS
    device: str
    config: dict[str, Any]  # {"model": ..., "train": ...} (a reused model: "model" only)
    resumed_from_epoch: int | None
    plan: Plan
    collaborative: dict[str, Any]  # the manifest's `collaborative` entry
    alignment: NotRequired[dict[str, Any]]  # a retrain aligned with the previous version (include.continuity)


class ShardCodes(TypedDict):
    """`encode_items` (one per shard): the raw shard `{work}/shards/shard-i-of-n.parquet` and its speed."""

    path: str
    rows: list[int]  # [start, stop)
    n_items: int
    n_pinned: int  # items that kept their published ID (an incremental run)
    encode_seconds: float
    items_per_second: float | None
    index: int
    count: int
    device: str


class ShardSummary(TypedDict):
    """The figures of one shard `Encoded.shards` keeps."""

    index: int
    rows: list[int]
    n_pinned: int
    encode_seconds: float
    items_per_second: float | None
    device: str


class Encoded(TypedDict):
    """`resolve_collisions`: the final IDs `{work}/semantic_ids/part-*.parquet` and their quality figures.

    `recon_mse` is the IDs' as published (after `reassign` moved items), `recon_mse_model` the model's own fit.
    Code-quality figures (`unique_ratio`, `collision_rate`, `usage`, ...) are rqvae.quantize.metrics.code_metrics of the
    published codes.
    """

    path: str
    n_items: int
    n_shards: int
    n_parts: int  # final part files: one per shard, or one per level-1 group when resolved out of core
    num_levels: int
    codebook_size: list[int]
    unique_ratio: float
    collision_rate: float
    max_bucket: int
    usage: list[float]
    perplexity: list[float]
    recon_mse: float
    recon_mse_model: float
    recon_mse_encoded: float | None  # over the items encoded (not pinned) by this run
    n_encoded: int
    n_pinned: int
    recon_error_quantiles: dict[str, float]
    encode_seconds: float
    read_seconds: float
    items_per_second: float | None
    collision_mode: CollisionMode
    collision_rate_pre: float
    collision_rate_post: float
    moved: int
    stuck: int
    max_dedup: int
    resolve_seconds: float
    errors_path: str
    mode: RunMode  # the run mode used (Plan.used)
    shards: list[ShardSummary]
    lineage: NotRequired[dict[str, Any]]  # rqvae.ids.lineage.Lineage.stats, with a publish root
    collision_audit: NotRequired[dict[str, Any]]  # rqvae.ids.audit summary


class CodesChecked(TypedDict):
    """`validate_codes`: the codes suite passed (a failure raises instead of returning)."""

    ok: bool
    n_items: int
    metrics: dict[str, Any]
    report: str
    evaluated: int
    seconds: float


class Published(TypedDict):
    """`publish`: the version consumers now see."""

    version_path: str
    latest: str  # the snapshot `latest` names (unchanged by a backfill of an older day)
    moved_latest: bool
    manifest: str
    n_items: int
    pruned_runs: NotRequired[list[str]]  # added by the DAG task (include.layout.prune_runs)



# ------------------------------------------------------------------------------- semantic_ids_evaluation


class VersionFound(TypedDict):
    """`find_version`: the folders of the version evaluated (include.stages.evaluate_retrieval.VersionRef as a dict)."""

    snapshot: str
    version_path: str
    publish_root: str
    previous_path: str | None  # the previous published version, compared with this one when present
    interactions_dir: str  # `{interactions_root}/{namespace}/{snapshot}/`
    embeddings_dir: str
    work_embeddings: str  # the publishing run's `embeddings.parquet` (used when its checksum still matches)
    eval_dir: str  # `{work_root}/{namespace}/evaluation/{snapshot}/`, never inside the version


class InteractionsChecked(TypedDict):
    """`validate_interactions`: the interactions suite passed (a failure raises instead of returning)."""

    ok: bool
    n_events: int
    n_users: int
    n_kept_users: int  # users with enough events on known items for a leave-one-out evaluation
    known_share: float
    report: str
    evaluated: int
    seconds: float


class Evaluated(TypedDict):
    """`evaluate_retrieval`: the full result `{eval_dir}/result.json` and the ID sets compared."""

    result: str
    sets: list[str]  # "this", "rqkmeans", "random" and, when there is one, "previous"
    seconds: float


class EvaluationSummary(TypedDict):
    """The verdict `evaluation.json` and the manifest's `downstream` entry keep (the UI page reads these keys)."""

    status: Verdict  # PASSED or FAILED: NOT_EVALUATED is what a version without evaluation.json gets
    protocol: str  # the rqvae.modes.Protocol the gate judged with
    recall_at_10: float
    recall_at_10_se: float | None
    nll: float
    nll_se: float | None
    vs_rqkmeans_nll: float | None  # paired difference this - residual k-means
    vs_rqkmeans_nll_se: float | None
    reason: str  # the gate's reasons, "; "-joined; empty when passed


class Recorded(EvaluationSummary):
    """`record_evaluation`: the version the verdict was written into, and the verdict."""

    version_path: str


class Promoted(TypedDict):
    """`promote` (the evaluation DAG) and `promote_version` (the promote DAG): whether `serving` moved.

    `version` is the version's folder relative to the configured publish root (e.g. movielens/2026-11-30), as the
    forms take it; `serving` the snapshot serving names afterwards (None: nothing promoted yet in that root).
    """

    moved: bool
    version: str
    snapshot: str
    publish_root: str
    serving: str | None
    verdict: Verdict
    kind: PromotionKind | None  # None when nothing moved
    forced: bool
    message: str


def content_only(weight: float = 0.0) -> dict[str, Any]:
    """`Trained["collaborative"]` (and the manifest's `collaborative` entry) of a model trained without logs."""
    return {"used": False, "weight": float(weight), "interactions": None, "n_interactions": 0,
            "n_items_with_interactions": 0}
