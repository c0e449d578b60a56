"""
### Semantic IDs from item embeddings (RQ-VAE)

Every day, once the upstream job has written `{embeddings_root}/{snapshot}/` and its `_SUCCESS` marker, this
DAG trains an RQ-VAE on the snapshot's item embeddings, encodes every item into a semantic ID
(`codes + dedup`), validates input and output with Great Expectations and publishes one version per snapshot:

| task | does | XCom |
|---|---|---|
| `wait_for_embeddings` | sensor (reschedule mode): snapshot complete? | snapshot, folders |
| `load_embeddings` | any supported layout -> `{work}/embeddings.parquet` | path, n_items, dim, checksum |
| `validate_dims` | GX: dimension, NaN/Inf, unique non-null ids, row count, norms | ok, report |
| `plan_shards` | row ranges of at most `shard_size` items | list of shards |
| `train_rqvae` | queue `gpu`: trains, writes `{work}/model/` | model_path, metrics |
| `encode_items` | queue `gpu`, mapped: one instance per shard -> `{work}/shards/` | path, rows, speed |
| `resolve_collisions` | collisions over all shards -> `{work}/semantic_ids/part-*.parquet` | path, counts, quality |
| `validate_codes` | GX: coverage, code ranges, uniqueness, usage, recon MSE | ok, metrics |
| `publish` | `{publish_root}/{snapshot}` (IDs, model, serving index, migration map), `latest`; prunes runs | version |

A snapshot larger than `shard_size` (default 2M items) is encoded by several `encode_items` instances, in
parallel on as many `gpu` workers (and `rqvae_gpu` pool slots) as there are; the IDs do not depend on it.

`{work}` is `{work_root}/{snapshot}/{run}/`, private to the run: a retry or a cleared task rewrites (and resumes)
its own files, while two runs of one snapshot at once (the scheduled run and a manual trigger with other params,
or a backfill over a running day) never share a model, checkpoint or ID file. Each publish replaces the
snapshot's version with one atomic pointer swap, so one self-consistent version per snapshot results; the last
publisher's wins. `latest` never moves backwards, so backfilling old days is safe. `publish` keeps the newest
`keep_runs` finished run folders of the snapshot and removes the rest (and any left untouched for a week).
Validation failures name each failed rule with counts and sample item ids, and fail without retries
(bad data stays bad). `publish` updates the `semantic_ids` asset, so downstream DAGs can be scheduled on it.

**Trigger by hand** with the form (leave `snapshot` empty for the run's date); **backfill** a range with
`airflow backfill create --dag-id rqvae_semantic_ids --from-date 2026-11-01 --to-date 2026-11-07`.
Roots: env `RQVAE_EMBEDDINGS_ROOT`, `RQVAE_WORK_ROOT`, `RQVAE_PUBLISH_ROOT` (or Airflow Variables of the same
lowercase names), default `var/data/...` in the project.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import (
    Asset,
    ExceptionRetryPolicy,
    Param,
    PokeReturnValue,
    RetryAction,
    RetryRule,
    chain,
    dag,
    get_current_context,
    task,
)

DAG_ID = "rqvae_semantic_ids"
GPU_QUEUE = os.environ.get("RQVAE_GPU_QUEUE", "gpu")
GPU_POOL = os.environ.get("RQVAE_GPU_POOL", "default_pool")
# Midnight UTC, so a run's logical date is its snapshot day and `backfill create --from-date D1 --to-date D2`
# covers D1..D2 inclusive; the sensor then waits (rescheduling, no slot held) until upstream marks the day done.
SCHEDULE = os.environ.get("RQVAE_SCHEDULE", "0 0 * * *")
MAX_ACTIVE_RUNS = int(os.environ.get("RQVAE_MAX_ACTIVE_RUNS", "2"))
RETRIES = int(os.environ.get("RQVAE_RETRIES", "2"))
RETRY_DELAY_S = int(os.environ.get("RQVAE_RETRY_DELAY_S", "300"))
POKE_INTERVAL_S = float(os.environ.get("RQVAE_SENSOR_POKE_S", "300"))
SENSOR_TIMEOUT_S = int(os.environ.get("RQVAE_SENSOR_TIMEOUT_S", str(12 * 3600)))
GPU_TASK_TIMEOUT = timedelta(hours=float(os.environ.get("RQVAE_GPU_TASK_TIMEOUT_H", "8")))
SHARD_SIZE = int(os.environ.get("RQVAE_SHARD_SIZE", "2000000"))  # include.encode_items.DEFAULT_SHARD_SIZE
KEEP_RUNS = int(os.environ.get("RQVAE_KEEP_RUNS", "2"))

SEMANTIC_IDS = Asset("semantic_ids")

# Bad data or bad params (InputError, ValidationFailed, PathOutsideRootError, SnapshotError: all ValueErrors)
# fail at once; anything else (a lost worker, a full disk, CUDA out of memory) gets the normal retries.
FAIL_ON_BAD_INPUT = ExceptionRetryPolicy(
    rules=[
        RetryRule(
            exception="builtins.ValueError",
            action=RetryAction.FAIL,
            reason="bad input data or params: a retry would fail the same way",
        )
    ]
)

PARAMS = {
    "snapshot": Param(
        "",
        type=["null", "string"],  # optional in the UI form: a plain "string" is required there (Trigger disabled)
        pattern=r"^(\d{4}-\d{2}-\d{2})?$",
        title="Snapshot",
        description="Snapshot date YYYY-MM-DD to process; empty = the run's date (logical date, else run_after).",
        section="Input",
    ),
    "embeddings_root": Param(
        "",
        type=["null", "string"],
        title="Embeddings root",
        description="Folder holding {snapshot}/ sub-folders: empty = the configured root; a sub-folder "
        "(e.g. movielens) reads {root}/movielens/{snapshot}/ and gets its own work and publish namespace. "
        "Paths must stay inside the configured root.",
        section="Input",
    ),
    "sensor_timeout": Param(
        SENSOR_TIMEOUT_S,
        type="integer",
        minimum=1,
        maximum=SENSOR_TIMEOUT_S,
        title="Sensor timeout (s)",
        description="Fail the run (publishing nothing) when the snapshot is not complete after this long.",
        section="Input",
    ),
    "expected_dim": Param(
        0,
        type="integer",
        minimum=0,
        maximum=65536,
        title="Expected dimension",
        description="Values per vector; 0 = infer (the most common length) and require all rows to have it.",
        section="Input validation",
    ),
    "min_items": Param(
        1000,
        type="integer",
        minimum=1,
        title="Minimum items",
        description="Fail when the snapshot has fewer rows (a truncated upstream export).",
        section="Input validation",
    ),
    "min_norm": Param(
        1e-6,
        type="number",
        minimum=0,
        title="Minimum L2 norm",
        description="Rows with a smaller norm (e.g. all-zero vectors) fail validation.",
        section="Input validation",
    ),
    "max_norm": Param(
        1e3,
        type="number",
        exclusiveMinimum=0,
        title="Maximum L2 norm",
        description="Rows with a larger norm fail validation.",
        section="Input validation",
    ),
    "num_codebooks": Param(
        3,
        type="integer",
        minimum=1,
        maximum=8,
        title="Codebook levels",
        description="Number of residual levels L (codes per item, before the dedup digit).",
        section="Model",
    ),
    "codebook_size": Param(
        256,
        type="integer",
        minimum=2,
        maximum=65536,
        title="Codebook size",
        description="Codes per level K.",
        section="Model",
    ),
    "latent_dim": Param(
        0,
        type="integer",
        minimum=0,
        maximum=65536,
        title="Latent dimension",
        description="Width of the quantised latent; 0 = the input dimension.",
        section="Model",
    ),
    "epochs": Param(5, type="integer", minimum=1, maximum=1000, title="Epochs", section="Training"),
    "batch_size": Param(
        1024, type="integer", minimum=16, maximum=1_048_576, title="Batch size", section="Training"
    ),
    "max_train_items": Param(
        1_000_000,
        type="integer",
        minimum=100,
        title="Training sample cap",
        description="Train on a seeded random sample of at most this many items (all items are encoded).",
        section="Training",
    ),
    "collaborative_weight": Param(
        0.0,  # opt-in: NLL gain on MovieLens, Recall@10 gain not yet shown, +26% recon MSE (docs/collaborative.md)
        type="number",
        minimum=0,
        maximum=100,
        title="Collaborative weight",
        description="Weight of the behaviour signal when the interactions snapshot {interactions_root}/{snapshot}/ "
        "is complete (_SUCCESS): items users consume together are pulled into shared code prefixes; each user's "
        "last two interactions are held out for the evaluation. 0 (the default), or no snapshot, = content-only "
        "training.",
        section="Training",
    ),
    "shard_size": Param(
        SHARD_SIZE,
        type="integer",
        minimum=1,
        title="Shard size",
        description="Items per encode_items instance: a larger snapshot is encoded by several mapped instances "
        "(in parallel on as many gpu workers); the IDs are the same for any value.",
        section="Training",
    ),
    "min_unique_ratio": Param(
        0.5,
        type="number",
        minimum=0,
        maximum=1,
        title="Minimum unique-ID ratio",
        description="Distinct code tuples (before dedup) / items.",
        section="Output validation",
    ),
    "min_usage": Param(
        0.5,
        type="number",
        minimum=0,
        maximum=1,
        title="Minimum codebook usage",
        description="Share of each level's K codes used at least once.",
        section="Output validation",
    ),
    "max_recon_mse": Param(
        0.05,
        type="number",
        exclusiveMinimum=0,
        title="Maximum reconstruction MSE",
        description="Mean squared error per element between input vectors and their reconstructions.",
        section="Output validation",
    ),
    "keep_runs": Param(
        KEEP_RUNS,
        type="integer",
        minimum=1,
        maximum=100,
        title="Run folders kept per snapshot",
        description="After publishing, keep this many finished run folders {work_root}/{snapshot}/{run}/ of the "
        "snapshot (this run's included) and delete older ones; an unfinished folder is deleted only when "
        "untouched for a week, so a concurrent run's folder is never removed.",
        section="Output",
    ),
    "export_json": Param(
        False,
        type="boolean",
        title="Export JSON dictionary",
        description="Also publish semantic_id_dict.json ({item_id: [codes]}) for the existing inference code.",
        section="Output",
    ),
    "mode": Param(
        "retrain",
        type="string",
        enum=["retrain", "incremental", "auto"],
        title="Mode",
        description="retrain: a new model, all IDs recomputed. incremental: reuse the latest published model, keep "
        "the published ID of every item whose embedding is unchanged, encode only new or changed items. auto: "
        "incremental unless the published model's recon MSE on new items exceeds its recorded one by the "
        "retrain factor. Without a published version every mode retrains.",
        section="Stability",
    ),
    "retrain_factor": Param(
        1.5,
        type="number",
        exclusiveMinimum=0,
        title="Retrain factor (auto)",
        description="auto retrains when recon MSE on new/changed items > factor x the published model's recon MSE.",
        section="Stability",
    ),
    "collision_mode": Param(
        "dedup",
        type="string",
        enum=["dedup", "reassign"],
        title="Collision resolution",
        description="dedup: items sharing codes get a dedup digit 0, 1, ... reassign: colliding items move to the "
        "nearest free last-level code of their prefix (IDs stay L codes; dedup only where a prefix is full).",
        section="Stability",
    ),
    "retire_after": Param(
        7,
        type="integer",
        minimum=0,
        maximum=3650,
        title="Retire IDs after (versions)",
        description="An ID whose item disappeared stays reserved (given to no other item) for this many versions; "
        "0 = free at once. Applies while the code space is kept (incremental runs, aligned retrains).",
        section="Stability",
    ),
    "align_retrain": Param(
        "anchor",
        type="string",
        enum=["anchor", "permute", "off"],
        title="Align retrained codes",
        description="After a retrain, make the codes agree with the previous version so fewer IDs change. permute: "
        "relabel each level's codes (changes no ID's meaning). anchor: first refit the codebooks starting from the "
        "previous ones, kept when recon MSE rises by at most 2%, then relabel. off: a new code space.",
        section="Stability",
    ),
}


def _params() -> dict[str, Any]:
    return dict(get_current_context()["params"])


@dag(
    dag_id=DAG_ID,
    doc_md=__doc__,
    schedule=SCHEDULE,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=MAX_ACTIVE_RUNS,
    tags=["rqvae", "semantic-ids", "ml"],
    params=PARAMS,
    default_args={
        "owner": "ml-platform",
        "retries": RETRIES,
        "retry_delay": timedelta(seconds=RETRY_DELAY_S),
        "retry_exponential_backoff": 2.0,
        "retry_policy": FAIL_ON_BAD_INPUT,
    },
)
def rqvae_semantic_ids() -> None:
    @task.sensor(
        task_id="wait_for_embeddings",
        mode="reschedule",
        poke_interval=POKE_INTERVAL_S,
        timeout=SENSOR_TIMEOUT_S,
    )
    def wait_for_embeddings() -> PokeReturnValue:
        """Poke for `{embeddings_root}/{snapshot}/_SUCCESS`; hand the resolved folders to the next tasks."""
        from airflow.sdk import timezone
        from airflow.sdk.exceptions import AirflowSensorTimeout

        from include import settings, snapshot
        from include.layout import RunFolder

        context = get_current_context()
        params = context["params"]
        dag_run = context["dag_run"]
        configured = settings.load_roots(settings.airflow_variable_getter())
        roots = settings.dataset_roots(configured, params.get("embeddings_root"))
        name = snapshot.resolve_snapshot(params.get("snapshot"), dag_run.logical_date, dag_run.run_after)
        snapshot_dir = roots.embeddings / name
        run = {
            "snapshot": name,
            "snapshot_dir": str(snapshot_dir),
            "work_dir": str(RunFolder.for_run(roots.work, name, dag_run.run_id).root),  # this run's own
            "publish_root": str(roots.publish),
        }
        if snapshot.snapshot_ready(snapshot_dir):
            return PokeReturnValue(is_done=True, xcom_value=run)
        first_poke = context["ti"].get_first_reschedule_date(context) or timezone.utcnow()
        waited = (timezone.utcnow() - first_poke).total_seconds()
        if waited >= int(params["sensor_timeout"]):
            raise AirflowSensorTimeout(
                f"snapshot {snapshot_dir} is not complete after {waited:.0f}s (sensor_timeout="
                f"{params['sensor_timeout']}s): expected data files plus a {snapshot.SUCCESS_MARKER} marker"
            )
        return PokeReturnValue(is_done=False)

    @task(task_id="load_embeddings")
    def load_embeddings(run: dict[str, str]) -> dict[str, Any]:
        from include import load_embeddings as stage

        return stage.load_embeddings(run["snapshot_dir"], run["work_dir"])

    @task(task_id="validate_dims")
    def validate_dims(run: dict[str, str], loaded: dict[str, Any]) -> dict[str, Any]:
        from include import validate_dims as stage
        from include.layout import RunFolder

        params = _params()
        return stage.validate_dims(
            loaded["path"],
            RunFolder.of(run["work_dir"]).input_report,
            expected_dim=int(params["expected_dim"]),
            min_items=int(params["min_items"]),
            min_norm=float(params["min_norm"]),
            max_norm=float(params["max_norm"]),
        )

    @task(task_id="train_rqvae", queue=GPU_QUEUE, pool=GPU_POOL, execution_timeout=GPU_TASK_TIMEOUT)
    def train_rqvae(run: dict[str, str], loaded: dict[str, Any]) -> dict[str, Any]:
        from include import settings
        from include import train_rqvae as stage

        params = _params()
        # the day's interactions, in the data set's namespace; used only when complete, else content-only
        roots = settings.dataset_roots(settings.load_roots(settings.airflow_variable_getter()),
                                       params.get("embeddings_root"))
        return stage.train_rqvae(
            loaded["path"],
            run["work_dir"],
            num_codebooks=int(params["num_codebooks"]),
            codebook_size=int(params["codebook_size"]),
            latent_dim=int(params["latent_dim"]),
            epochs=int(params["epochs"]),
            batch_size=int(params["batch_size"]),
            max_train_items=int(params["max_train_items"]),
            mode=str(params.get("mode", "retrain")),
            publish_root=run["publish_root"],
            retrain_factor=float(params.get("retrain_factor", 1.5)),
            align=str(params.get("align_retrain", "anchor")),
            snapshot=run["snapshot"],
            interactions_dir=str(roots.interactions / run["snapshot"]),
            interactions_root=str(roots.interactions),
            collaborative_weight=float(params.get("collaborative_weight", 0.0)),
        )

    @task(task_id="plan_shards")
    def plan_shards(loaded: dict[str, Any]) -> list[dict[str, int]]:
        from airflow.sdk import conf

        from include import encode_items as stage

        max_shards = conf.getint("core", "max_map_length", fallback=1024)
        return stage.plan_shards(int(loaded["n_items"]), int(_params()["shard_size"]), max_shards=max_shards)

    @task(task_id="encode_items", queue=GPU_QUEUE, pool=GPU_POOL, execution_timeout=GPU_TASK_TIMEOUT)
    def encode_items(
        run: dict[str, str], loaded: dict[str, Any], trained: dict[str, Any], shard: dict[str, int]
    ) -> dict[str, Any]:
        from include import encode_items as stage

        return stage.encode_items(
            trained["model_path"], loaded["path"], run["work_dir"], shard, mode=trained.get("mode")
        )

    @task(task_id="resolve_collisions")
    def resolve_collisions(
        run: dict[str, str], loaded: dict[str, Any], trained: dict[str, Any], shards: list[dict[str, Any]]
    ) -> dict[str, Any]:
        from include import resolve_collisions as stage

        return stage.resolve_collisions(
            trained["model_path"],
            loaded["path"],
            run["work_dir"],
            list(shards),
            collision_mode=str(_params().get("collision_mode", "dedup")),
            mode=trained.get("mode"),
            publish_root=run["publish_root"],
            snapshot=run["snapshot"],
            retire_after=int(_params().get("retire_after", 7)),
        )

    @task(task_id="validate_codes")
    def validate_codes(run: dict[str, str], loaded: dict[str, Any], encoded: dict[str, Any]) -> dict[str, Any]:
        from include import validate_codes as stage
        from include.layout import RunFolder

        params = _params()
        return stage.validate_codes(
            encoded["path"],
            loaded["path"],
            RunFolder.of(run["work_dir"]).codes_report,
            codebook_sizes=encoded["codebook_size"],
            recon_mse=encoded.get("recon_mse"),
            min_unique_ratio=float(params["min_unique_ratio"]),
            min_usage=float(params["min_usage"]),
            max_recon_mse=float(params["max_recon_mse"]),
        )

    @task(task_id="publish", outlets=[SEMANTIC_IDS])
    def publish(
        run: dict[str, str],
        loaded: dict[str, Any],
        trained: dict[str, Any],
        encoded: dict[str, Any],
    ) -> dict[str, Any]:
        from include import publish as stage
        from include.layout import prune_runs

        context = get_current_context()
        params = _params()
        result = stage.publish(
            run["snapshot"],
            run["work_dir"],
            run["publish_root"],
            export_json=bool(params["export_json"]),
            run_id=context["run_id"],
            dag_id=DAG_ID,
            params=params,
            upstream={"load_embeddings": loaded, "train_rqvae": trained, "resolve_collisions": encoded},
        )
        work = Path(run["work_dir"])
        result["pruned_runs"] = prune_runs(work.parent, int(params.get("keep_runs", KEEP_RUNS)), current=work)
        context["outlet_events"][SEMANTIC_IDS].extra = {
            "snapshot": run["snapshot"],
            "version_path": result["version_path"],
            "latest": result["latest"],
        }
        return result

    run = wait_for_embeddings()
    loaded = load_embeddings(run)
    checked = validate_dims(run, loaded)
    shards = plan_shards(loaded)  # before training: a shard_size Airflow cannot map fails in seconds, not hours
    trained = train_rqvae(run, loaded)
    shard_codes = encode_items.partial(run=run, loaded=loaded, trained=trained).expand(shard=shards)
    encoded = resolve_collisions(run, loaded, trained, shard_codes)
    codes_ok = validate_codes(run, loaded, encoded)
    published = publish(run, loaded, trained, encoded)
    chain(run, loaded, checked, shards, trained, shard_codes, encoded, codes_ok, published)


rqvae_semantic_ids()
