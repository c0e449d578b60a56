"""
### Downstream evaluation of published semantic IDs (generative retrieval)

Runs whenever `rqvae_semantic_ids` publishes (it is scheduled on the `semantic_ids` asset) and judges the new
version by what its IDs are for: a small TIGER-style generative retriever is trained on users' histories and
asked for each user's next item, once with this version's IDs and, side by side on the same users, with
residual k-means IDs at the same L x K, random IDs and the previous version's IDs.

| task | does | XCom |
|---|---|---|
| `find_version` | the version of the triggering asset event (or the `version` param, else `latest`) | folders |
| `has_interactions` | skips the rest when `{interactions_root}/{snapshot}/_SUCCESS` is missing | bool |
| `validate_interactions` | GX suite: ids, timestamps, share of items with an ID, users with >= 3 events | counts |
| `evaluate_retrieval` | queue `gpu`: retriever per ID set, leave-one-out, paired per user | result path |
| `record_evaluation` | `evaluation.json` + plots + report section into the version; the quality gate | summary |

Metrics: Recall@5/10 and NDCG@10 from a beam search constrained to real IDs, and the negative log-likelihood
of the true next item among all valid IDs (lower is better; it separates ID sets with far fewer users than
recall). Each with its standard error; differences are paired over the same users.

**Gate**: `record_evaluation` fails (the version stays published, flagged `failed` in evaluation.json, the
report and the UI page) when this version is worse than residual k-means or than the previous version by more
than `max_se` paired standard errors in NLL or Recall@10. Roots: `RQVAE_INTERACTIONS_ROOT` (or the Airflow
Variable `rqvae_interactions_root`), default `var/data/interactions`, one `{snapshot}/` folder of Parquet parts
(`user_id`, `item_id`, `timestamp`) plus `_SUCCESS` per day.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import (
    Asset,
    ExceptionRetryPolicy,
    Param,
    RetryAction,
    RetryRule,
    chain,
    dag,
    get_current_context,
    task,
)

DAG_ID = "semantic_ids_evaluation"
GPU_QUEUE = os.environ.get("RQVAE_GPU_QUEUE", "gpu")
GPU_POOL = os.environ.get("RQVAE_GPU_POOL", "default_pool")
RETRIES = int(os.environ.get("RQVAE_RETRIES", "2"))
RETRY_DELAY_S = int(os.environ.get("RQVAE_RETRY_DELAY_S", "300"))
GPU_TASK_TIMEOUT = timedelta(hours=float(os.environ.get("RQVAE_GPU_TASK_TIMEOUT_H", "8")))

SEMANTIC_IDS = Asset("semantic_ids")

# A failed gate, bad interactions or a bad param are ValueErrors: a retry would give the same verdict.
FAIL_ON_BAD_INPUT = ExceptionRetryPolicy(
    rules=[
        RetryRule(
            exception="builtins.ValueError",
            action=RetryAction.FAIL,
            reason="bad input, bad params or a failed quality gate: a retry would fail the same way",
        )
    ]
)

PARAMS = {
    "version": Param(
        "",
        type=["null", "string"],
        title="Version",
        description="Published version folder to evaluate (relative to the publish root, e.g. 2026-11-30 or "
        "movielens/2026-11-30); empty = the version of the triggering asset event, else latest.",
        section="Input",
    ),
    "embeddings_root": Param(
        "",
        type=["null", "string"],
        title="Data set namespace",
        description="With an empty version: the sub-folder (as in rqvae_semantic_ids' embeddings_root) whose "
        "latest version is evaluated.",
        section="Input",
    ),
    "min_known_share": Param(
        0.5,
        type="number",
        minimum=0,
        maximum=1,
        title="Minimum share of known items",
        description="Fail when fewer interaction events than this share are on items with a semantic ID.",
        section="Interactions",
    ),
    "min_users": Param(
        10,
        type="integer",
        minimum=1,
        title="Minimum users",
        description="Users with at least 3 events on known items needed for a leave-one-out evaluation.",
        section="Interactions",
    ),
    "max_users": Param(
        5000,
        type="integer",
        minimum=10,
        title="Users evaluated",
        description="A seeded sample of at most this many users is evaluated where the data is larger.",
        section="Retriever",
    ),
    "epochs": Param(
        5, type="integer", minimum=1, maximum=200, title="Epochs",
        description="Training epochs of the retriever per ID set (the best validation epoch is kept).",
        section="Retriever",
    ),
    "seeds": Param(
        1, type="integer", minimum=1, maximum=10, title="Seeds",
        description="Retriever seeds per ID set; per-user metrics are averaged over seeds before pairing.",
        section="Retriever",
    ),
    "max_se": Param(
        2.0,
        type="number",
        minimum=0,
        title="Gate: standard errors",
        description="Fail the gate when this version is worse than residual k-means or the previous version by "
        "more than this many paired standard errors (NLL or Recall@10).",
        section="Gate",
    ),
}


def _params() -> dict[str, Any]:
    return dict(get_current_context()["params"])


@dag(
    dag_id=DAG_ID,
    doc_md=__doc__,
    schedule=[SEMANTIC_IDS],
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["rqvae", "semantic-ids", "evaluation"],
    params=PARAMS,
    default_args={
        "owner": "ml-platform",
        "retries": RETRIES,
        "retry_delay": timedelta(seconds=RETRY_DELAY_S),
        "retry_exponential_backoff": 2.0,
        "retry_policy": FAIL_ON_BAD_INPUT,
    },
)
def semantic_ids_evaluation() -> None:
    @task(task_id="find_version")
    def find_version() -> dict[str, Any]:
        from include import evaluate_retrieval as stage
        from include import settings

        context = get_current_context()
        params = context["params"]
        roots = settings.load_roots(settings.airflow_variable_getter())
        path = params.get("version") or stage.triggering_version(context.get("triggering_asset_events"))
        return stage.find_version(roots, path, params.get("embeddings_root")).to_dict()

    @task.short_circuit(task_id="has_interactions")
    def has_interactions(ref: dict[str, Any]) -> bool:
        """False (every later task skipped, the run still succeeds) when the day has no interactions snapshot."""
        from include.evaluate_retrieval import VersionRef, interactions_ready

        return interactions_ready(VersionRef(**ref))

    @task(task_id="validate_interactions")
    def validate_interactions(ref: dict[str, Any]) -> dict[str, Any]:
        from include import validate_interactions as stage
        from include.evaluate_retrieval import VersionRef, version_item_ids

        version = VersionRef(**ref)
        params = _params()
        return stage.validate_interactions(
            version.interactions_dir,
            version_item_ids(version),
            f"{version.eval_dir}/interactions.json",
            min_known_share=float(params["min_known_share"]),
            min_users=int(params["min_users"]),
        )

    @task(task_id="evaluate_retrieval", queue=GPU_QUEUE, pool=GPU_POOL, execution_timeout=GPU_TASK_TIMEOUT)
    def evaluate_retrieval(ref: dict[str, Any]) -> dict[str, Any]:
        from include import evaluate_retrieval as stage

        params = _params()
        return stage.evaluate_retrieval(
            stage.VersionRef(**ref),
            seeds=int(params["seeds"]),
            epochs=int(params["epochs"]),
            max_users=int(params["max_users"]),
        )

    @task(task_id="record_evaluation")
    def record_evaluation(ref: dict[str, Any], evaluated: dict[str, Any]) -> dict[str, Any]:
        from include import record_evaluation as stage

        context = get_current_context()
        return stage.record_evaluation(
            ref["version_path"], evaluated["result"], max_se=float(_params()["max_se"]), run_id=context["run_id"]
        )

    ref = find_version()
    present = has_interactions(ref)
    checked = validate_interactions(ref)
    evaluated = evaluate_retrieval(ref)
    recorded = record_evaluation(ref, evaluated)
    chain(ref, present, checked, evaluated, recorded)


semantic_ids_evaluation()
