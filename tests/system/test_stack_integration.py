"""The distributed topology for real: PostgreSQL, Redis, api-server, scheduler, dag-processor, triggerer and three
Celery workers (one on queue `default`, two on `gpu`) started natively by `scripts/stack.sh`, driven only from outside:
the REST API (JWT from the simple auth manager) and the `airflow backfill create` CLI.

One run is triggered through the API with a conf (three encode shards), then a backfill covers three earlier days.
The task instances must show the GPU stages (each mapped `encode_items` instance too) on the two `gpu` workers,
both of them used, and everything else on the `default` worker; the publish root must
hold the four versions with `latest` at the newest. The stack lives in `var/stack-test/` on its own ports, so a
developer's `scripts/stack.sh up` (var/stack, default ports) is left alone; it is always torn down.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rqvae.io.published import LATEST, SERVING
from scripts.airflow_env import STACK_SHORT_WAITS
from tests.helpers import DIM, SMALL

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
STACK = REPO / "scripts" / "stack.sh"
STACK_DIR = REPO / "var" / "stack-test"
TIMINGS = REPO / "var" / "stack-test-timings.json"
DAG_ID = "rqvae_semantic_ids"
EVAL_DAG_ID = "semantic_ids_evaluation"  # scheduled on the `semantic_ids` asset that publish updates
PORTS = {
    "STACK_PG_PORT": "55442",
    "STACK_REDIS_PORT": "56389",
    "STACK_API_PORT": "58090",
    "STACK_SCHEDULER_HEALTH_PORT": "58984",
    "STACK_LOG_PORT": "58803",
}
TRIGGERED = "2024-03-04"
BACKFILLED = ["2024-03-01", "2024-03-02", "2024-03-03"]
GPU_TASKS = {"train_rqvae", "encode_items"}
CPU_TASKS = {
    "wait_for_embeddings", "load_embeddings", "validate_dims", "plan_shards", "resolve_collisions", "validate_codes",
    "publish",
}
TRIGGERED_SHARDS = 3  # the triggered run encodes its 3000 items as three mapped encode_items instances
GPU_WORKERS = ("worker-gpu", "worker-gpu-2")
RUN_TIMEOUT_S = 240


def _missing_binaries() -> list[str]:
    pg = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb")) or ([shutil.which("initdb")] if shutil.which(
        "initdb") else [])
    missing = [] if pg else ["PostgreSQL server (initdb; apt-get install postgresql)"]
    missing += [f"{b} (apt-get install redis-server)" for b in ("redis-server", "redis-cli") if not shutil.which(b)]
    return missing


if _missing_binaries():
    pytest.skip(
        f"native stack binaries absent: {', '.join(_missing_binaries())}; .ci/run installs them in CI",
        allow_module_level=True,
    )


@dataclass
class Stack:
    env: dict[str, str]
    api: str
    token: str
    hostnames: dict[str, str]  # worker name -> hostname its task instances report
    data: Path
    timings: dict[str, float]

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        import httpx

        response = httpx.request(
            method, f"{self.api}{path}", json=body, headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        )
        assert response.status_code < 300, f"{method} {path}: {response.status_code} {response.text}"
        return response.json()

    def airflow(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The Airflow CLI with the stack's settings (metadata DB, executor), as an operator would run it."""
        return subprocess.run(
            [str(STACK), "airflow", *args], env=self.env, capture_output=True, text=True, timeout=120, check=False
        )


def _stack_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(PORTS)
    env["STACK_DIR"] = str(STACK_DIR)
    env["STACK_GPU_WORKERS"] = str(len(GPU_WORKERS))  # two gpu-queue workers (as two GPUs), so shards run in parallel
    # Seconds, not the production minutes: the sensor finds our snapshots at its first poke; the run the
    # scheduler creates for today when the DAG is unpaused has no snapshot and fails at this timeout.
    env.update(STACK_SHORT_WAITS)
    # Midnight runs, whatever the DAG's default schedule: a backfill over three dates then makes three runs.
    env["RQVAE_SCHEDULE"] = "0 0 * * *"
    return env


def _stack(verb: str, env: dict[str, str], timeout: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(STACK), verb], env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _token(api: str, password: str) -> str:
    import httpx

    response = httpx.post(f"{api}/auth/token", json={"username": "admin", "password": password}, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["access_token"]


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    env = _stack_env()
    _stack("down", env, 120)  # a previous run killed mid-way may have left its servers
    shutil.rmtree(STACK_DIR, ignore_errors=True)
    started = time.perf_counter()
    timings: dict[str, Any] = {}
    try:
        up = _stack("up", env, 400)
        startup_s = time.perf_counter() - started
        assert up.returncode == 0, f"stack.sh up failed:\n{up.stdout}\n{up.stderr[-4000:]}"
        api = f"http://127.0.0.1:{PORTS['STACK_API_PORT']}"
        password = json.loads((STACK_DIR / "airflow" / "passwords.json").read_text())["admin"]
        hostnames = {w: (STACK_DIR / "run" / f"{w}.hostname").read_text().strip() for w in ("worker", *GPU_WORKERS)}
        timings.update(stack_up_s=round(startup_s, 1), hostnames=hostnames)
        yield Stack(env, api, _token(api, password), hostnames, STACK_DIR / "data", timings)
    finally:
        stopped = time.perf_counter()
        down = _stack("down", env, 300)
        timings["stack_down_s"] = round(time.perf_counter() - stopped, 1)
        timings["fixture_total_s"] = round(time.perf_counter() - started, 1)
        # The figures a deployment note needs, kept beside the stack folder (pytest captures stdout).
        TIMINGS.parent.mkdir(parents=True, exist_ok=True)
        TIMINGS.write_text(json.dumps(timings, indent=2))
        pids = [p.read_text().strip() for p in (STACK_DIR / "run").glob("*.pid")]
        assert down.returncode == 0, down.stderr
        assert pids == [], f"stack.sh down left PID files: {pids}"


def _make_snapshots(stack: Stack) -> None:
    from rqvae.io.interactions import write_interactions
    from rqvae.io.readers import read_embeddings
    from rqvae.io.synth import synth, synth_interactions

    for seed, day in enumerate([*BACKFILLED, TRIGGERED]):
        synth(stack.data / "embeddings" / day, 3000, dim=DIM, seed=seed)
    # Only the triggered day has user histories: its evaluation runs, the backfilled days' evaluations skip.
    emb = read_embeddings(stack.data / "embeddings" / TRIGGERED)
    events = synth_interactions(emb.ids, emb.vectors, n_users=120, events=10, step=20)
    write_interactions(stack.data / "interactions" / TRIGGERED, events)


def _wait_asset_triggered_evaluation(stack: Stack, timeout_s: float = RUN_TIMEOUT_S) -> dict[str, Any]:
    """The evaluation run the scheduler created from publish's asset event, once it has finished."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = stack.request("GET", f"/api/v2/dags/{EVAL_DAG_ID}/dagRuns?limit=20")["dag_runs"]
        done = [r for r in runs if r["state"] in ("success", "failed")]
        if done:
            return done[0]
        time.sleep(2)
    pytest.fail(f"no {EVAL_DAG_ID} run finished within {timeout_s}s of the publish")


def _wait_dag_parsed(stack: Stack, dag_id: str = DAG_ID, timeout_s: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = httpx.get(
            f"{stack.api}/api/v2/dags/{dag_id}", headers={"Authorization": f"Bearer {stack.token}"}, timeout=30
        )
        if response.status_code == 200:
            return
        time.sleep(1)
    pytest.fail(f"the dag-processor did not register {dag_id} within {timeout_s}s")


def _task_instances(stack: Stack, run_id: str) -> list[dict[str, Any]]:
    return stack.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances")["task_instances"]


def _wait_runs(stack: Stack, run_ids: list[str], timeout_s: float = RUN_TIMEOUT_S) -> None:
    """Poll until every run succeeded; a failed run fails the test at once with its task states."""
    deadline = time.monotonic() + timeout_s
    pending = set(run_ids)
    while pending and time.monotonic() < deadline:
        for run_id in sorted(pending):
            state = stack.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")["state"]
            if state == "failed":
                states = {ti["task_id"]: ti["state"] for ti in _task_instances(stack, run_id)}
                pytest.fail(f"run {run_id} failed: {states} (task logs under {STACK_DIR / 'airflow' / 'logs'})")
            if state == "success":
                pending.discard(run_id)
        time.sleep(2)
    if pending:
        states = {r: {ti["task_id"]: ti["state"] for ti in _task_instances(stack, r)} for r in pending}
        pytest.fail(f"runs not done after {timeout_s}s: {states}")


def _backfill_runs(stack: Stack) -> list[dict[str, Any]]:
    runs = stack.request("GET", f"/api/v2/dags/{DAG_ID}/dagRuns?run_type=backfill&limit=100")["dag_runs"]
    return [r for r in runs if r["run_type"] == "backfill"]


def test_trigger_and_backfill_on_the_celery_stack(stack: Stack) -> None:
    _make_snapshots(stack)
    _wait_dag_parsed(stack)
    _wait_dag_parsed(stack, EVAL_DAG_ID)
    stack.request("PATCH", f"/api/v2/dags/{DAG_ID}", {"is_paused": False})
    stack.request("PATCH", f"/api/v2/dags/{EVAL_DAG_ID}", {"is_paused": False})

    # 1. A run triggered through the REST API, its snapshot, model size and shard size in the conf.
    t0 = time.perf_counter()
    conf = {**SMALL, "snapshot": TRIGGERED, "shard_size": 3000 // TRIGGERED_SHARDS}
    run = stack.request("POST", f"/api/v2/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": conf})
    _wait_runs(stack, [run["dag_run_id"]])
    stack.timings["triggered_run_s"] = round(time.perf_counter() - t0, 1)

    # 1b. publish updated the `semantic_ids` asset: the scheduler starts the evaluation DAG on its own, for the
    # version named in the event, with the retriever on a gpu worker.
    t0 = time.perf_counter()
    evaluation_run = _wait_asset_triggered_evaluation(stack)
    stack.timings["evaluation_run_s"] = round(time.perf_counter() - t0, 1)
    assert evaluation_run["run_type"] == "asset_triggered", evaluation_run
    eval_tis = {ti["task_id"]: ti for ti in stack.request(
        "GET", f"/api/v2/dags/{EVAL_DAG_ID}/dagRuns/{evaluation_run['dag_run_id']}/taskInstances")["task_instances"]}
    assert {t: ti["state"] for t, ti in eval_tis.items() if t not in ("record_evaluation", "promote")} == \
        dict.fromkeys(["find_version", "has_interactions", "validate_interactions", "evaluate_retrieval"],
                      "success"), eval_tis
    assert eval_tis["evaluate_retrieval"]["queue"] == "gpu"
    evaluation = json.loads((stack.data / "published" / TRIGGERED / "evaluation.json").read_text())
    assert evaluation["snapshot"] == TRIGGERED and evaluation["summary"]["status"] in ("passed", "failed")
    # the last task moved `serving` to the version only if it passed; after a failed gate it did not run
    passed = evaluation["summary"]["status"] == "passed"
    assert eval_tis["promote"]["state"] == ("success" if passed else "upstream_failed"), eval_tis["promote"]
    assert (stack.data / "published" / "serving").exists() == passed

    # 2. A backfill of three days from the CLI: the scheduler creates and runs them (one per midnight logical date).
    t0 = time.perf_counter()
    backfill = stack.airflow(
        "backfill", "create", "--dag-id", DAG_ID,
        "--from-date", BACKFILLED[0], "--to-date", BACKFILLED[-1],
        "--dag-run-conf", json.dumps(SMALL), "--max-active-runs", "3",
    )  # fmt: skip
    assert backfill.returncode == 0, f"backfill create failed:\n{backfill.stdout}\n{backfill.stderr[-3000:]}"
    deadline = time.monotonic() + 60
    while len(_backfill_runs(stack)) < len(BACKFILLED) and time.monotonic() < deadline:
        time.sleep(1)
    runs = _backfill_runs(stack)
    assert sorted(r["logical_date"][:10] for r in runs) == BACKFILLED, runs
    _wait_runs(stack, [r["dag_run_id"] for r in runs], timeout_s=RUN_TIMEOUT_S * 2)
    stack.timings["backfill_s"] = round(time.perf_counter() - t0, 1)
    stack.timings["backfill_command"] = " ".join(["scripts/stack.sh airflow backfill create --dag-id", DAG_ID,
                                                  "--from-date", BACKFILLED[0], "--to-date", BACKFILLED[-1],
                                                  "--dag-run-conf", f"'{json.dumps(SMALL)}'", "--max-active-runs 3"])

    # 3. Which worker ran what: the queue each task was sent to and the hostname of the worker that ran it.
    gpu_hosts, cpu_host = {stack.hostnames[w] for w in GPU_WORKERS}, stack.hostnames["worker"]
    placements: dict[str, list[tuple[str, int, str, str]]] = {}
    gpu_used: set[str] = set()
    for run_id in [run["dag_run_id"], *(r["dag_run_id"] for r in runs)]:
        tis = _task_instances(stack, run_id)
        assert {ti["task_id"] for ti in tis} == GPU_TASKS | CPU_TASKS
        placements[run_id] = [(ti["task_id"], ti["map_index"], ti["queue"], ti["hostname"]) for ti in tis]
        shards = sorted(ti["map_index"] for ti in tis if ti["task_id"] == "encode_items")
        assert shards == (list(range(TRIGGERED_SHARDS)) if run_id == run["dag_run_id"] else [0]), (run_id, shards)
        for ti in tis:
            assert ti["state"] == "success", (run_id, ti["task_id"], ti["state"])
            if ti["task_id"] in GPU_TASKS:
                assert ti["queue"] == "gpu" and ti["hostname"] in gpu_hosts, (run_id, ti["task_id"], ti["hostname"])
                gpu_used.add(ti["hostname"])
            else:
                assert (ti["queue"], ti["hostname"]) == ("default", cpu_host), (run_id, ti["task_id"], ti["hostname"])
    assert gpu_used == gpu_hosts, f"GPU tasks ran only on {gpu_used}: the second gpu worker never took one"
    encodes = [ti for ti in _task_instances(stack, run["dag_run_id"]) if ti["task_id"] == "encode_items"]
    stack.timings["triggered_shards"] = [
        {"map_index": ti["map_index"], "hostname": ti["hostname"], "start": ti["start_date"], "end": ti["end_date"]}
        for ti in sorted(encodes, key=lambda ti: ti["map_index"])
    ]

    # 4. One published version per snapshot; `latest` at the newest even though the backfill finished last.
    published = stack.data / "published"
    versions = sorted(p.name for p in published.iterdir()  # the aliases name versions too: not versions themselves
                      if p.name not in (LATEST, SERVING) and not p.name.startswith(".")
                      and (p / "manifest.json").is_file())
    assert versions == sorted([*BACKFILLED, TRIGGERED])
    assert Path(os.readlink(published / "latest")).name == TRIGGERED
    for day in versions:
        manifest = json.loads((published / day / "manifest.json").read_text())
        assert manifest["snapshot"] == day and manifest["counts"]["n_items"] == 3000
        assert manifest["counts"]["encode_shards"] == (TRIGGERED_SHARDS if day == TRIGGERED else 1)
    stack.timings["placements"] = placements
