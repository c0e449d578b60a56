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
from datetime import UTC, datetime
from pathlib import Path

from airflow.sdk import (
    PokeReturnValue,
    chain,
    dag,
    get_current_context,
    task,
)

from include.dag_defaults import SEMANTIC_IDS, default_args, gpu_routing
from include.params import RunConfig, dag_params, deployed, from_params
from include.results import (
    CodesChecked,
    DimsChecked,
    Encoded,
    Loaded,
    Published,
    RunInfo,
    Shard,
    ShardCodes,
    Trained,
)

DAG_ID = "rqvae_semantic_ids"
GPU_QUEUE, GPU_POOL, GPU_TASK_TIMEOUT = gpu_routing()
# Midnight UTC, so a run's logical date is its snapshot day and `backfill create --from-date D1 --to-date D2`
# covers D1..D2 inclusive; the sensor then waits (rescheduling, no slot held) until upstream marks the day done.
SCHEDULE = os.environ.get("RQVAE_SCHEDULE", "0 0 * * *")
MAX_ACTIVE_RUNS = int(os.environ.get("RQVAE_MAX_ACTIVE_RUNS", "2"))
POKE_INTERVAL_S = float(os.environ.get("RQVAE_SENSOR_POKE_S", "300"))
# Form fields are generated from the config classes (rqvae.config, include.params): defaults, bounds, titles,
# descriptions and sections are written there once. Env RQVAE_SHARD_SIZE / RQVAE_KEEP_RUNS /
# RQVAE_SENSOR_TIMEOUT_S change a deployment's defaults; the sensor timeout is also the form's maximum.
PARAMS = dag_params()
SENSOR_TIMEOUT_S = deployed("sensor_timeout")


def _config() -> RunConfig:
    """This run's form values as config objects (bounds checked: a bad value fails the task naming the field)."""
    return from_params(get_current_context()["params"])


@dag(
    dag_id=DAG_ID,
    doc_md=__doc__,
    schedule=SCHEDULE,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=MAX_ACTIVE_RUNS,
    tags=["rqvae", "semantic-ids", "ml"],
    params=PARAMS,
    default_args=default_args(),  # retries; permanent failures (rqvae.errors.PermanentError) fail at once
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

        from include.settings import configured_roots
        from include.snapshot import SUCCESS_MARKER
        from include.stages import wait_for_embeddings as stage

        context = get_current_context()
        options = _config().run
        dag_run = context["dag_run"]
        ready, run = stage.wait_for_embeddings(configured_roots(), options.embeddings_root, options.snapshot,
                                               dag_run.logical_date, dag_run.run_after, dag_run.run_id)
        if ready:
            return PokeReturnValue(is_done=True, xcom_value=run)
        first_poke = context["ti"].get_first_reschedule_date(context) or timezone.utcnow()
        waited = (timezone.utcnow() - first_poke).total_seconds()
        if waited >= options.sensor_timeout:
            raise AirflowSensorTimeout(
                f"snapshot {run['snapshot_dir']} is not complete after {waited:.0f}s (sensor_timeout="
                f"{options.sensor_timeout}s): expected data files plus a {SUCCESS_MARKER} marker"
            )
        return PokeReturnValue(is_done=False)

    @task(task_id="load_embeddings")
    def load_embeddings(run: RunInfo) -> Loaded:
        from include.stages import load_embeddings as stage

        return stage.load_embeddings(run["snapshot_dir"], run["work_dir"])

    @task(task_id="validate_dims")
    def validate_dims(run: RunInfo, loaded: Loaded) -> DimsChecked:
        from include.layout import RunFolder
        from include.stages import validate_dims as stage

        checks = _config().input_checks
        return stage.validate_dims(loaded["path"], RunFolder.of(run["work_dir"]).input_report, checks)

    @task(task_id="train_rqvae", queue=GPU_QUEUE, pool=GPU_POOL, execution_timeout=GPU_TASK_TIMEOUT)
    def train_rqvae(run: RunInfo, loaded: Loaded) -> Trained:
        from include.stages import train_rqvae as stage

        config = _config()
        # validate_dims ran first: every row has `dim` values
        return stage.train_rqvae(run, loaded["path"], config.model(int(loaded["dim"])), config.train, config.policy)

    @task(task_id="plan_shards")
    def plan_shards(loaded: Loaded) -> list[Shard]:
        from airflow.sdk import conf

        from include.stages import plan_shards as stage

        max_shards = conf.getint("core", "max_map_length", fallback=1024)
        return stage.plan_shards(int(loaded["n_items"]), _config().encode, max_shards)

    @task(task_id="encode_items", queue=GPU_QUEUE, pool=GPU_POOL, execution_timeout=GPU_TASK_TIMEOUT)
    def encode_items(run: RunInfo, loaded: Loaded, trained: Trained, shard: Shard) -> ShardCodes:
        from include.stages import encode_items as stage

        return stage.encode_items(run, loaded["path"], trained, shard, _config().train.device)

    @task(task_id="resolve_collisions")
    def resolve_collisions(run: RunInfo, loaded: Loaded, trained: Trained, shards: list[ShardCodes]) -> Encoded:
        from include.stages import resolve_collisions as stage

        return stage.resolve_collisions(run, loaded["path"], trained, list(shards), _config().encode)

    @task(task_id="validate_codes")
    def validate_codes(run: RunInfo, loaded: Loaded, encoded: Encoded) -> CodesChecked:
        from include.layout import RunFolder
        from include.stages import validate_codes as stage

        return stage.validate_codes(
            encoded["path"],
            loaded["path"],
            RunFolder.of(run["work_dir"]).codes_report,
            _config().code_checks,
            codebook_sizes=encoded["codebook_size"],
            recon_mse=encoded.get("recon_mse"),
        )

    @task(task_id="publish", outlets=[SEMANTIC_IDS])
    def publish(run: RunInfo, loaded: Loaded, trained: Trained, encoded: Encoded) -> Published:
        from include.layout import prune_runs
        from include.stages import publish as stage

        context = get_current_context()
        options = _config().run
        result = stage.publish(
            run,
            options,
            loaded=loaded,
            trained=trained,
            encoded=encoded,
            run_id=context["run_id"],
            dag_id=DAG_ID,
            params=dict(context["params"]),
        )
        work = Path(run["work_dir"])
        result["pruned_runs"] = prune_runs(work.parent, options.keep_runs, current=work)
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
