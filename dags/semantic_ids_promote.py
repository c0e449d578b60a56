"""
### Promote or roll back the served semantic IDs

`serving` (beside `latest` in the publish root) is the version consumers read. The evaluation DAG moves it
forward when a version passes the downstream gate; this DAG is the by-hand move, for a rollback to an older
version or a promotion the gate could not make (a day without interactions, a deliberate override).

| task | does | XCom |
|---|---|---|
| `promote_version` | `serving` -> `version`; a line in `promotions.jsonl`; updates `semantic_ids_serving` | moved? |

Fill `version` (relative to the publish root, e.g. `2026-11-30` or `movielens/2026-11-30`) and `reason`; a
version that failed the gate also needs `force` (the log marks the move forced). Who may trigger this DAG is
Airflow's own permission on it: grant it to those who may edit `rqvae_semantic_ids` (the UI page's promote
button asks for exactly that). The same move from a shell: `rqvae promote --publish-root R VERSION --reason ...`.
"""

from __future__ import annotations

from airflow.sdk import dag, get_current_context, task

from include.dag_defaults import SEMANTIC_IDS_SERVING, default_args
from include.params import PROMOTION_CLASSES, PROMOTION_ORDER, dag_params
from include.results import Promoted

DAG_ID = "semantic_ids_promote"
PARAMS = dag_params(PROMOTION_CLASSES, PROMOTION_ORDER)  # from include.params.PromotionOptions


@dag(
    dag_id=DAG_ID,
    doc_md=__doc__,
    schedule=None,  # triggered by hand only: no start date needed
    catchup=False,
    max_active_runs=1,
    tags=["rqvae", "semantic-ids", "promotion"],
    params=PARAMS,
    default_args=default_args(),  # a refused promotion (PermanentError) fails at once
)
def semantic_ids_promote() -> None:
    @task(task_id="promote_version", outlets=[SEMANTIC_IDS_SERVING])
    def promote_version() -> Promoted:
        """Skipped (no asset event) when the version is already serving."""
        from airflow.sdk.exceptions import AirflowSkipException

        from include.params import promotion_from_params
        from include.promotion import event_extra
        from include.settings import configured_roots
        from include.stages import promote_version as stage

        context = get_current_context()
        user = getattr(context["dag_run"], "triggering_user_name", None) or "unknown user"
        result = stage.promote_version(promotion_from_params(context["params"]), configured_roots().publish,
                                       by=user, run_id=context["run_id"])
        if not result["moved"]:
            raise AirflowSkipException(result["message"])
        context["outlet_events"][SEMANTIC_IDS_SERVING].extra = event_extra(result)
        return result

    promote_version()


semantic_ids_promote()
