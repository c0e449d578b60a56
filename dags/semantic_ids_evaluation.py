"""
### Downstream evaluation of published semantic IDs (generative retrieval)

Runs whenever `rqvae_semantic_ids` publishes (it is scheduled on the `semantic_ids` asset) and judges the new
version by what its IDs are for: a small TIGER-style generative retriever is trained on users' histories and
asked for each user's next item, once with this version's IDs and, side by side on the same users, with
residual k-means IDs at the same L x K, random IDs and the previous version's IDs.

| task | does | XCom |
|---|---|---|
| `find_version` | the version of the triggering asset event (or the `version` param, else `latest`) | folders |
| `has_interactions` | skips the evaluation when `{interactions_root}/{snapshot}/_SUCCESS` is missing | bool |
| `validate_interactions` | GX suite: ids, timestamps, share of items with an ID, users with >= 3 events | counts |
| `evaluate_retrieval` | queue `gpu`: retriever per ID set, leave-one-out, paired per user | result path |
| `record_evaluation` | `evaluation.json` + plots + report section into the version; the quality gate | summary |
| `promote` | moves the `serving` alias to the version if it passed; updates the `semantic_ids_serving` asset | moved? |

Metrics: Recall@5/10 and NDCG@10 from a beam search constrained to real IDs, and the negative log-likelihood
of the true next item among all valid IDs (lower is better; it separates ID sets with far fewer users than
recall). Each with its standard error; differences are paired over the same users.

**Gate**: `record_evaluation` fails (the version stays published, flagged `failed` in evaluation.json, the
report and the UI page) when this version is worse than residual k-means or than the previous version by more
than `max_se` paired standard errors in NLL or Recall@10.

**Promotion**: `latest` moved at publish time; `serving`, what consumers read, moves here, once the version
passed. `promote` runs when `record_evaluation` succeeded or was skipped (no interactions snapshot: it moves
serving then only with `promote_without_evaluation`), never after a failure: a failed gate leaves the run
failed, `promote` upstream_failed and serving where it was. It never moves serving to an older snapshot than
it names (a backfill's late verdict); when serving does not move, `promote` is skipped (no asset event).
Rollbacks and manual promotions: the UI page, `rqvae promote`, or the `semantic_ids_promote` DAG.

Roots: `RQVAE_INTERACTIONS_ROOT` (or the Airflow Variable `rqvae_interactions_root`), default
`var/data/interactions`, one `{snapshot}/` folder of Parquet parts (`user_id`, `item_id`, `timestamp`) plus
`_SUCCESS` per day.
"""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import TriggerRule, chain, dag, get_current_context, task

from include.dag_defaults import SEMANTIC_IDS, SEMANTIC_IDS_SERVING, default_args, gpu_routing
from include.params import EVALUATION_CLASSES, EVALUATION_ORDER, EvaluationConfig, dag_params, evaluation_from_params
from include.results import Evaluated, InteractionsChecked, Promoted, Recorded, VersionFound

DAG_ID = "semantic_ids_evaluation"
GPU_QUEUE, GPU_POOL, GPU_TASK_TIMEOUT = gpu_routing()

# Form fields are generated from the config classes (include.params.EvaluationOptions, rqvae.config.
# RetrieverOptions): defaults, bounds, titles, descriptions and sections are written there, once.
PARAMS = dag_params(EVALUATION_CLASSES, EVALUATION_ORDER)


def _config() -> EvaluationConfig:
    """This run's params as config objects (ConfigError, not retried, names a field out of bounds)."""
    return evaluation_from_params(get_current_context()["params"])


@dag(
    dag_id=DAG_ID,
    doc_md=__doc__,
    schedule=[SEMANTIC_IDS],
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["rqvae", "semantic-ids", "evaluation"],
    params=PARAMS,
    default_args=default_args(),  # retries; a failed gate or bad interactions (PermanentError) fail at once
)
def semantic_ids_evaluation() -> None:
    @task(task_id="find_version")
    def find_version() -> VersionFound:
        from include.settings import configured_roots
        from include.stages import find_version as stage

        run = _config().run
        path = run.version or stage.triggering_version(get_current_context().get("triggering_asset_events"))
        return stage.find_version(configured_roots(), path, run.embeddings_root).to_dict()

    # Only the tasks right after it are skipped on False; the rest follow their trigger rules, so `promote`
    # (none_failed) still runs and applies promote_without_evaluation.
    @task.short_circuit(task_id="has_interactions", ignore_downstream_trigger_rules=False)
    def has_interactions(ref: VersionFound) -> bool:
        """False (the evaluation skipped, the run still succeeds) when the day has no interactions snapshot."""
        from include.stages import has_interactions as stage
        from include.version_ref import VersionRef

        return stage.has_interactions(VersionRef.from_dict(ref))

    @task(task_id="validate_interactions")
    def validate_interactions(ref: VersionFound) -> InteractionsChecked:
        from include.stages import validate_interactions as stage
        from include.version_ref import VersionRef, version_item_ids

        version = VersionRef.from_dict(ref)
        return stage.validate_interactions(
            version.interactions_dir,
            version_item_ids(version),
            f"{version.eval_dir}/interactions.json",
            _config().run,
        )

    @task(task_id="evaluate_retrieval", queue=GPU_QUEUE, pool=GPU_POOL, execution_timeout=GPU_TASK_TIMEOUT)
    def evaluate_retrieval(ref: VersionFound) -> Evaluated:
        from include.stages import evaluate_retrieval as stage
        from include.version_ref import VersionRef

        return stage.evaluate_retrieval(VersionRef.from_dict(ref), _config().retriever)

    @task(task_id="record_evaluation")
    def record_evaluation(ref: VersionFound, evaluated: Evaluated) -> Recorded:
        from include.stages import record_evaluation as stage

        return stage.record_evaluation(ref["version_path"], evaluated["result"], _config().run,
                                       run_id=get_current_context()["run_id"])

    @task(task_id="promote", trigger_rule=TriggerRule.NONE_FAILED, outlets=[SEMANTIC_IDS_SERVING])
    def promote(ref: VersionFound) -> Promoted:
        """Move `serving` to the version when it passed (or, without interactions, when allowed); skipped, with
        the reason in the log and no asset event, when serving stays where it is."""
        from airflow.sdk.exceptions import AirflowSkipException

        from include.promotion import event_extra
        from include.settings import configured_roots
        from include.stages import promote as stage
        from include.version_ref import VersionRef

        context = get_current_context()
        had_interactions = bool(context["ti"].xcom_pull(task_ids="has_interactions"))
        result = stage.promote(VersionRef.from_dict(ref), _config().run, had_interactions, configured_roots().publish,
                               by=DAG_ID, run_id=context["run_id"])
        if not result["moved"]:
            raise AirflowSkipException(result["message"])
        context["outlet_events"][SEMANTIC_IDS_SERVING].extra = event_extra(result)
        return result

    ref = find_version()
    present = has_interactions(ref)
    checked = validate_interactions(ref)
    evaluated = evaluate_retrieval(ref)
    recorded = record_evaluation(ref, evaluated)
    promoted = promote(ref)
    chain(ref, present, checked, evaluated, recorded, promoted)


semantic_ids_evaluation()
