"""DAG integrity: the file parses cleanly, wires the stages in order, and stays light to parse."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from tests.helpers import TASK_IDS

REPO = Path(__file__).resolve().parents[2]
# The light `include.dag_defaults` and `rqvae.errors` (pure Python) are imported at parse time for the shared
# retry policy; what must never load there is a heavy library.
HEAVY_MODULES = ["torch", "pandas", "pyarrow", "great_expectations", "numpy"]

PARSE_SCRIPT = """
import json, sys, time
started = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag
imported = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
parsed = time.perf_counter()
dag = bag.dags["rqvae_semantic_ids"]
heavy = sorted({name.split(".")[0] for name in sys.modules} & set(sys.argv[2].split(",")))
print(json.dumps({
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "heavy": heavy,
    "queues": {t.task_id: t.queue for t in dag.tasks},
    "airflow_import_s": round(imported - started, 3),
    "parse_s": round(parsed - imported, 3),
}))
"""


def parse_in_fresh_process(extra_env: dict[str, str] | None = None) -> dict:
    env = {**os.environ, **(extra_env or {})}
    out = subprocess.run(
        [sys.executable, "-c", PARSE_SCRIPT, str(REPO / "dags"), ",".join(HEAVY_MODULES)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_task_ids_are_the_stages_in_order(pipeline_dag):
    assert sorted(pipeline_dag.task_ids) == sorted(TASK_IDS)
    # Consecutive stages are directly linked, which makes this the only topological order.
    for before, after in zip(TASK_IDS, TASK_IDS[1:], strict=False):
        assert before in pipeline_dag.get_task(after).upstream_task_ids, (before, after)
    assert pipeline_dag.get_task("wait_for_embeddings").upstream_task_ids == set()
    assert pipeline_dag.get_task("publish").downstream_task_ids == set()


def test_encode_items_is_mapped_over_the_planned_shards(pipeline_dag):
    from airflow.sdk.definitions.mappedoperator import MappedOperator

    encode = pipeline_dag.get_task("encode_items")
    assert isinstance(encode, MappedOperator)
    assert encode.upstream_task_ids >= {"plan_shards", "train_rqvae"}
    assert not isinstance(pipeline_dag.get_task("resolve_collisions"), MappedOperator), "one merge of all shards"


def test_dag_settings(pipeline_dag):
    assert pipeline_dag.dag_id == "rqvae_semantic_ids"
    assert pipeline_dag.catchup is False
    assert pipeline_dag.max_active_runs >= 1
    assert {"rqvae", "semantic-ids"} <= set(pipeline_dag.tags)
    assert pipeline_dag.doc_md and "publish" in pipeline_dag.doc_md
    assert len(pipeline_dag.timetable.expression.split()) == 5, "a cron expression"
    for task in pipeline_dag.tasks:
        assert task.owner == "ml-platform"
        assert task.retries >= 1, task.task_id
        assert task.retry_delay >= timedelta(seconds=1), task.task_id


def test_gpu_stages_use_the_gpu_queue_and_pool(pipeline_dag):
    for task_id in ("train_rqvae", "encode_items"):
        task = pipeline_dag.get_task(task_id)
        assert task.queue == os.environ.get("RQVAE_GPU_QUEUE", "gpu")
        assert task.pool == os.environ.get("RQVAE_GPU_POOL", "default_pool")
    for task_id in set(TASK_IDS) - {"train_rqvae", "encode_items"}:
        assert pipeline_dag.get_task(task_id).queue != "gpu", task_id


def test_sensor_reschedules_and_publish_updates_the_asset(pipeline_dag):
    sensor = pipeline_dag.get_task("wait_for_embeddings")
    assert sensor.mode == "reschedule"
    outlets = pipeline_dag.get_task("publish").outlets
    assert [asset.name for asset in outlets] == ["semantic_ids"]


def test_params_form_is_typed_and_validated(pipeline_dag):
    from airflow.sdk.exceptions import ParamValidationError

    expected = {
        "snapshot", "embeddings_root", "expected_dim", "min_items", "min_norm", "max_norm", "num_codebooks",
        "codebook_size", "latent_dim", "epochs", "batch_size", "max_train_items", "min_unique_ratio",
        "min_usage", "max_recon_mse", "export_json", "sensor_timeout", "shard_size",
    }
    params = pipeline_dag.params
    assert expected <= set(params.keys())
    for name in expected:
        schema = params.get_param(name).schema
        assert schema.get("type") and schema.get("title"), name
    assert with_conf(params, {"snapshot": "2026-11-02", "epochs": 2})["snapshot"] == "2026-11-02"
    assert with_conf(params, {})["snapshot"] == "", "empty = the run's date"
    for bad in ({"snapshot": "2026-1-2"}, {"epochs": 0}, {"min_unique_ratio": 1.5}, {"num_codebooks": "x"},
                {"shard_size": 0}):
        with pytest.raises(ParamValidationError):
            with_conf(params, bad)


def with_conf(params, conf: dict) -> dict:
    """What the trigger form does: merge the run conf into the DAG's params and validate."""
    merged = copy.deepcopy(params)
    merged.update(conf)
    return merged.validate()


def test_parsing_imports_no_heavy_module_and_honours_queue_override():
    result = parse_in_fresh_process({"RQVAE_GPU_QUEUE": "gpu-a100"})
    assert result["errors"] == {}
    assert result["heavy"] == [], f"DAG parsing imported {result['heavy']}"
    assert result["queues"]["train_rqvae"] == "gpu-a100"
    assert result["queues"]["encode_items"] == "gpu-a100"
    # Recorded, not asserted (timings depend on the machine): see the test log with -s / -rP.
    print(f"airflow import {result['airflow_import_s']}s, DAG parse {result['parse_s']}s")


def test_promote_is_the_evaluations_last_task_and_never_follows_a_failure(evaluation_dag, promote_dag):
    """`serving` moves after a passed gate or a skipped evaluation (no interactions), never after a failure; the
    short circuit skips only the evaluation itself, so `promote` still decides for a day without interactions."""
    promote = evaluation_dag.get_task("promote")
    assert promote.downstream_task_ids == set() and "record_evaluation" in promote.upstream_task_ids
    assert promote.trigger_rule == "none_failed"
    assert evaluation_dag.get_task("has_interactions").ignore_downstream_trigger_rules is False
    assert [asset.name for asset in promote.outlets] == ["semantic_ids_serving"]
    by_hand = promote_dag.get_task("promote_version")
    assert [asset.name for asset in by_hand.outlets] == ["semantic_ids_serving"]
    assert type(promote_dag.timetable).__name__ == "NullTimetable" and promote_dag.task_ids == ["promote_version"]
