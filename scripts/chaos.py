"""Chaos on the native Celery stack (`make chaos`): faults injected into real DAG runs, outcomes recorded.

`scripts/stack.sh` brings up PostgreSQL, Redis, the Airflow api-server, scheduler, dag-processor, triggerer, a
`default` worker and TWO `gpu` workers in `var/chaos/stack` on ports of its own. One synthetic snapshot (same
items, same seed) is copied to one snapshot day per scenario, and each scenario is one DAG run with the same
params, so every run should publish the same IDs:

    0 baseline          undisturbed
    1 kill-train        SIGKILL the gpu worker (its whole process tree) running train_rqvae, after its first
                        epoch checkpoint
    2 kill-encode       SIGKILL the gpu worker running an encode_items shard (4 mapped shards)
    3 restart-postgres  pg_ctl stop -m fast while train_rqvae runs, start again 10 s later
    4 restart-redis     stop the broker while train_rqvae runs, start again 10 s later
    5 kill-scheduler    SIGKILL the scheduler while train_rqvae runs
    6 baseline-repeat   undisturbed again: the wall-time noise the other rows' "time lost" sits in

A supervisor loop restarts any component found dead for 10 s (what `restart: always` does in compose), so a
killed worker or scheduler comes back; the restarts are recorded. Only in this stack, the scheduler declares a
task whose heartbeats stopped failed after 45 s (default 300) and re-queues tasks stuck in `queued` after 120 s
(default 600), so a lost worker's task is retried within a minute. Each scenario records the run's outcome, the
try number of every task, wall time against the baseline, whether every earlier version still verifies
against its manifest's checksums, and whether the published IDs equal the baseline's.

    .venv/bin/python scripts/chaos.py                  # all scenarios, then docs/reliability.md's chaos section
    .venv/bin/python scripts/chaos.py --scenarios 0,1  # a subset; include 0 (IDs are compared with the
                                                       # baseline in the same stack); other rows are kept
    .venv/bin/python scripts/chaos.py --reuse --scenarios 3   # on the previous stack folder and its versions
    .venv/bin/python scripts/chaos.py --render         # only re-render the section from var/chaos/results.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from airflow_env import STACK_SHORT_WAITS  # noqa: E402
from stack_api import Api  # noqa: E402
from stack_api import log as stack_log  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
STACK = REPO / "scripts" / "stack.sh"
CHAOS_DIR = REPO / "var" / "chaos"
STACK_DIR = CHAOS_DIR / "stack"
RESULTS = CHAOS_DIR / "results.json"
DOC = REPO / "docs" / "reliability.md"
START, END = "<!-- chaos:start -->", "<!-- chaos:end -->"
DAG_ID = "rqvae_semantic_ids"
GPU_WORKERS = ("worker-gpu", "worker-gpu-2")
COMPONENTS = ("postgres", "redis", "api-server", "scheduler", "dag-processor", "triggerer", "worker", *GPU_WORKERS)
PORTS = {  # its own, so neither a developer's stack (var/stack) nor the integration test's is touched
    "STACK_PG_PORT": "55462",
    "STACK_REDIS_PORT": "56409",
    "STACK_API_PORT": "58110",
    "STACK_SCHEDULER_HEALTH_PORT": "59004",
    "STACK_LOG_PORT": "58823",
}
HEARTBEAT_TIMEOUT_S = 45
AIRFLOW_OVERRIDES = {
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT_S),
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
    "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "120",
    "AIRFLOW__SCHEDULER__ORPHANED_TASKS_CHECK_INTERVAL": "30",
}
N_ITEMS, DIM, SEED, SHARD_SIZE = 12000, 16, 7, 3000
CONF: dict[str, Any] = {
    "num_codebooks": 2, "codebook_size": 16, "epochs": 25, "batch_size": 256, "expected_dim": DIM,
    "min_items": 500, "min_unique_ratio": 0.01, "min_usage": 0.5, "max_recon_mse": 0.05,
    "shard_size": SHARD_SIZE,  # 4 mapped encode_items instances
    # Each scenario's IDs must be comparable with the baseline's: no alignment to the previous scenario's version.
    "mode": "retrain", "align_retrain": "off",
}
RUN_TIMEOUT_S = 900
SUPERVISOR_GRACE_S = 10.0
OUTAGE_S = 10.0


def log(message: str) -> None:
    stack_log(message, "chaos")


# --- the stack ---------------------------------------------------------------------------------------------------
def stack_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(PORTS)
    env.update(STACK_DIR=str(STACK_DIR), STACK_GPU_WORKERS=str(len(GPU_WORKERS)),
               STACK_ENV_FILE=str(CHAOS_DIR / "airflow-overrides.env"), STACK_TIMEOUT_S="400")
    env.update(STACK_SHORT_WAITS)  # seconds, not the production minutes (see scripts/airflow_env.py)
    return env


def stack(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(STACK), *args], env=stack_env(), capture_output=True, text=True, timeout=timeout,
                          check=False)


def pid_of(name: str) -> int | None:
    try:
        return int((STACK_DIR / "run" / f"{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def alive(name: str) -> bool:
    pid = pid_of(name)
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sigkill_tree(name: str) -> list[int]:
    """SIGKILL a component and every process under it at once (a lost node: no cleanup, no Celery shutdown)."""
    import psutil

    pid = pid_of(name)
    if pid is None:
        raise RuntimeError(f"{name} has no PID file")
    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGKILL)
    psutil.wait_procs(procs, timeout=10)
    return [p.pid for p in procs]


def hostnames() -> dict[str, str]:
    """hostname a task instance reports -> the worker it ran on (each worker has its own UTS namespace)."""
    return {(STACK_DIR / "run" / f"{w}.hostname").read_text().strip(): w for w in ("worker", *GPU_WORKERS)}


def make_snapshot(day: str) -> None:
    """The same items under every day: synthesised once, then copied (the IDs can be compared across days)."""
    from rqvae.io.synth import synth

    source = CHAOS_DIR / "source"
    if not (source / "_SUCCESS").exists():
        shutil.rmtree(source, ignore_errors=True)
        synth(source, N_ITEMS, dim=DIM, seed=SEED)
    target = STACK_DIR / "data" / "embeddings" / day
    if not target.exists():
        shutil.copytree(source, target)


# --- what a scenario checks --------------------------------------------------------------------------------------
def published_versions() -> dict[str, str]:
    """snapshot -> sha256 of its semantic_ids.parquet, for every version under the publish root."""
    from include.versions import list_versions

    versions = list_versions(STACK_DIR / "data" / "published")
    return {version.name: version.read_manifest()["checksums"]["semantic_ids"] for version in versions}


def verify_version(day: str) -> str | None:
    """None when `{publish_root}/{day}` resolves and every file verifies against its manifest, else why not."""
    from include.versions import version_for
    from rqvae.io.fsutil import sha256_file

    version = version_for(STACK_DIR / "data" / "published", day)
    if not version.is_complete():
        return "no manifest (dangling or missing version)"
    manifest = version.read_manifest()
    for name, entry in manifest["files"].items():
        path = version.path / name
        if not path.is_file():
            return f"{name} missing"
        if sha256_file(path, tagged=True) != entry["sha256"]:
            return f"{name} checksum differs"
    return None


def ids_of(day: str) -> Any:
    from include.versions import version_for
    from rqvae.io.idfile import read_semantic_ids

    ids, codes, dedup = read_semantic_ids(version_for(STACK_DIR / "data" / "published", day).semantic_ids)
    order = ids.argsort()
    return ids[order], codes[order], dedup[order]


def same_ids(day: str, baseline: str) -> bool:
    import numpy as np

    a, b = ids_of(day), ids_of(baseline)
    return all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b, strict=True))


# --- scenarios ---------------------------------------------------------------------------------------------------
@dataclass
class Context:
    api: Api
    run_id: str
    snapshot: str
    events: list[str] = field(default_factory=list)
    fault_at: datetime | None = None  # when the fault was injected (the kill, the stop)

    def note(self, message: str) -> None:
        log(message)
        self.events.append(f"{datetime.now(UTC):%H:%M:%S} {message}")

    def wait_for_task(self, task_id: str, timeout_s: float = 600) -> dict[str, Any] | None:
        """The first running instance of `task_id` with a hostname, or None once the run ended."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            tis = self.api.tis(self.run_id) or []
            for ti in tis:
                running = ti["task_id"] == task_id and ti["state"] == "running" and ti.get("hostname")
                if running:
                    return ti
            run = self.api.run(self.run_id)
            if run is not None and run["state"] in ("success", "failed"):
                return None
            time.sleep(0.5)
        return None

    def wait_checkpoint(self, timeout_s: float = 300) -> None:
        """Until train_rqvae has finished an epoch: the checkpoint a retry resumes from is on disk. Watched on the
        file system every 50 ms: an epoch takes about a second, and the API answers in seconds on a busy machine."""
        work = STACK_DIR / "data" / "work" / self.snapshot
        deadline = time.monotonic() + timeout_s
        while not any(work.glob("*/model/checkpoint/progress.json")):
            if any(work.glob("*/model/config.json")) or time.monotonic() > deadline:
                raise RuntimeError("train_rqvae finished (or never checkpointed) before the kill")
            time.sleep(0.05)


def kill_worker_running(ctx: Context, task_id: str, before_kill: Callable[[], None] | None = None) -> str:
    ti = ctx.wait_for_task(task_id)
    if ti is None:
        raise RuntimeError(f"{task_id} never seen running before the run ended: fault not injected")
    worker = hostnames().get(ti["hostname"])
    if worker not in GPU_WORKERS:
        raise RuntimeError(f"{task_id} runs on {ti['hostname']!r}, not a gpu worker")
    if before_kill is not None:
        before_kill()
    pids = sigkill_tree(worker)
    ctx.fault_at = datetime.now(UTC)
    shard = f" shard {ti['map_index']}" if ti["map_index"] >= 0 else ""
    ctx.note(f"SIGKILL {worker} ({len(pids)} processes) running {task_id}{shard} try {ti['try_number']}")
    return worker


def kill_train(ctx: Context) -> str:
    return kill_worker_running(ctx, "train_rqvae", ctx.wait_checkpoint)


def kill_encode(ctx: Context) -> str:
    return kill_worker_running(ctx, "encode_items")


def restart(ctx: Context, name: str) -> str:
    if ctx.wait_for_task("train_rqvae") is None:
        raise RuntimeError("train_rqvae never seen running before the run ended: fault not injected")
    ctx.fault_at = datetime.now(UTC)
    stopped = stack("stop", name)
    ctx.note(f"{name} stopped (exit {stopped.returncode}) while train_rqvae runs")
    time.sleep(OUTAGE_S)
    started = stack("start", name)
    ctx.note(f"{name} started again after {OUTAGE_S:.0f} s (exit {started.returncode})")
    if started.returncode != 0:
        raise RuntimeError(f"stack.sh start {name} failed: {started.stderr[-500:]}")
    return name


def kill_scheduler(ctx: Context) -> str:
    if ctx.wait_for_task("train_rqvae") is None:
        raise RuntimeError("train_rqvae never seen running before the run ended: fault not injected")
    pids = sigkill_tree("scheduler")
    ctx.fault_at = datetime.now(UTC)
    ctx.note(f"SIGKILL scheduler ({len(pids)} processes) while train_rqvae runs; the supervisor restarts it")
    return "scheduler"


@dataclass(frozen=True)
class Scenario:
    number: int
    name: str
    fault: str
    inject: Callable[[Context], str] | None

    @property
    def snapshot(self) -> str:
        return f"2025-01-{self.number + 1:02d}"


SCENARIOS = [
    Scenario(0, "baseline", "none (undisturbed run)", None),
    Scenario(1, "kill-train", "SIGKILL the gpu worker running train_rqvae, after its first epoch checkpoint",
             kill_train),
    Scenario(2, "kill-encode", "SIGKILL the gpu worker running an encode_items shard (4 shards)", kill_encode),
    Scenario(3, "restart-postgres", f"PostgreSQL fast stop while train_rqvae runs, start {OUTAGE_S:.0f} s later",
             lambda ctx: restart(ctx, "postgres")),
    Scenario(4, "restart-redis", f"Redis stopped while train_rqvae runs, start {OUTAGE_S:.0f} s later",
             lambda ctx: restart(ctx, "redis")),
    Scenario(5, "kill-scheduler", "SIGKILL the scheduler while train_rqvae runs", kill_scheduler),
    # the baseline again, after every fault: how much wall time varies with no fault at all on this machine
    Scenario(6, "baseline-repeat", "none (undisturbed run, after the faults)", None),
]


def supervise(dead_since: dict[str, float], ctx: Context) -> None:
    """Restart whatever component has been dead for SUPERVISOR_GRACE_S (compose's `restart: always`)."""
    now = time.monotonic()
    for name in COMPONENTS:
        if alive(name):
            dead_since.pop(name, None)
            continue
        dead_since.setdefault(name, now)
        if now - dead_since[name] >= SUPERVISOR_GRACE_S:
            done = stack("start", name)
            ctx.note(f"supervisor restarted {name} (exit {done.returncode})")
            dead_since.pop(name, None)


def run_scenario(api: Api, scenario: Scenario, baseline: dict[str, Any] | None) -> dict[str, Any]:
    make_snapshot(scenario.snapshot)
    before = published_versions()
    started = time.monotonic()
    run = None
    while run is None and time.monotonic() - started < 120:
        run = api.call("POST", f"/dags/{DAG_ID}/dagRuns",
                       {"logical_date": None, "conf": {**CONF, "snapshot": scenario.snapshot}})
        if run is None:
            time.sleep(2)
    if run is None:
        return {"scenario": scenario.number, "name": scenario.name, "fault": scenario.fault,
                "outcome": "failed", "reason": "could not trigger the run"}
    ctx = Context(api, run["dag_run_id"], scenario.snapshot)
    ctx.note(f"scenario {scenario.number} {scenario.name}: run {ctx.run_id} for {scenario.snapshot}")
    injected, reason = None, None
    if scenario.inject is not None:
        try:
            injected = scenario.inject(ctx)
        except Exception as exc:  # noqa: BLE001 - recorded as the scenario's failure reason
            reason = f"fault not injected: {exc}"
            ctx.note(reason)
    state, dead_since = "running", {}
    deadline = started + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        supervise(dead_since, ctx)
        found = api.run(ctx.run_id)
        if found is not None and found["state"] in ("success", "failed"):
            state = found["state"]
            break
        time.sleep(2)
    wall_s = round(time.monotonic() - started, 1)
    for _ in range(30):  # every component back before the next scenario
        supervise(dead_since, ctx)
        if all(alive(n) for n in COMPONENTS):
            break
        time.sleep(2)
    tis = api.tis(ctx.run_id) or []
    tries = {f"{ti['task_id']}[{ti['map_index']}]" if ti["map_index"] >= 0 else ti["task_id"]: ti["try_number"]
             for ti in tis}
    states = {k: ti["state"] for k, ti in zip(tries, tis, strict=True)}
    hosts = hostnames()
    placements = {k: hosts.get(ti.get("hostname") or "", ti.get("hostname")) for k, ti in zip(tries, tis, strict=True)}
    retried_after = {  # how long after the fault each task's retry started (heartbeat timeout + retry delay)
        k: round((datetime.fromisoformat(ti["start_date"]) - ctx.fault_at).total_seconds(), 1)
        for k, ti in zip(tries, tis, strict=True)
        if ti["try_number"] > 1 and ti.get("start_date") and ctx.fault_at is not None
    }
    trained = api.call("GET", f"/dags/{DAG_ID}/dagRuns/{ctx.run_id}/taskInstances/train_rqvae/xcomEntries/"
                              "return_value?deserialize=true")
    value = (trained or {}).get("value")
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = json.loads(value)
    resumed = value.get("resumed_from_epoch") if isinstance(value, dict) else None
    lost = {day: why for day in before if (why := verify_version(day)) is not None}
    own = verify_version(scenario.snapshot) if state == "success" else "not published"
    result: dict[str, Any] = {
        "scenario": scenario.number,
        "name": scenario.name,
        "fault": scenario.fault,
        "snapshot": scenario.snapshot,
        "run_id": ctx.run_id,
        "injected": injected,
        "outcome": state if state != "running" else f"timeout after {RUN_TIMEOUT_S}s",
        "wall_s": wall_s,
        "time_lost_s": round(wall_s - baseline["wall_s"], 1) if baseline and baseline.get("wall_s") else None,
        "try_numbers": tries,
        "retries_used": sum(max(0, t - 1) for t in tries.values()),
        "fault_at": ctx.fault_at.isoformat(timespec="seconds") if ctx.fault_at else None,
        "retry_started_after_fault_s": retried_after,
        "train_resumed_from_epoch": resumed,
        "task_states": states,
        "placements": placements,
        "versions_before": len(before),
        "versions_lost": len(lost),
        "versions_lost_detail": lost,
        "own_version": "verified" if own is None else own,
        "ids_equal_baseline": None,
        "events": ctx.events,
    }
    base_day = baseline["snapshot"] if baseline else scenario.snapshot
    if state == "success" and own is None and verify_version(base_day) is None:
        result["ids_equal_baseline"] = same_ids(scenario.snapshot, base_day)
    failures = []
    if reason:
        failures.append(reason)
    if state != "success":
        failed = sorted(k for k, s in states.items() if s not in ("success",))
        failures.append(f"run {result['outcome']}; tasks not successful: {failed}")
    if lost:
        failures.append(f"versions lost: {lost}")
    if result["ids_equal_baseline"] is False:
        failures.append("published IDs differ from the baseline's")
    result["passed"] = not failures
    result["reason"] = "; ".join(failures) or None
    log(f"scenario {scenario.number}: {result['outcome']} in {wall_s}s, retries {result['retries_used']}, "
        f"versions lost {len(lost)}, ids equal {result['ids_equal_baseline']}")
    return result


# --- the report --------------------------------------------------------------------------------------------------
def render(data: dict[str, Any]) -> str:
    def cell(value: object) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    rows = sorted(data["results"].values(), key=lambda r: r["scenario"])
    noise = data["results"].get("6", {}).get("time_lost_s")
    lines = [
        START,
        "## Chaos on the Celery stack",
        "",
        f"Generated by `make chaos` (`scripts/chaos.py`) on {data['generated_at']} from `var/chaos/results.json`;",
        "do not edit by hand. The native stack (`scripts/stack.sh`: PostgreSQL, Redis, api-server, scheduler,",
        "dag-processor, triggerer, one `default` and two `gpu` Celery workers) ran one DAG run per scenario,",
        f"each on its own snapshot day holding the same {data['n_items']} synthetic items with the same params",
        f"({data['conf_summary']}, `align_retrain=off`), so every run should publish the same IDs.",
        "",
        f"A supervisor loop restarts any component found dead for {SUPERVISOR_GRACE_S:.0f} s, as compose's",
        "`restart: always` would: a killed worker or scheduler comes back, and so does anything that exits on",
        "its own during a fault. Airflow notices a SIGKILLed worker's task only when its heartbeats stop; in",
        f"this stack only, the scheduler fails such a task after {HEARTBEAT_TIMEOUT_S} s",
        "(`AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT`; the default 300 s would add four minutes to",
        "rows 1 and 2) and re-queues tasks stuck in `queued` after 120 s (`TASK_QUEUED_TIMEOUT`, default 600);",
        "the DAG's own retries (2; `RQVAE_RETRY_DELAY_S=1` here) then run the task again, on whichever gpu",
        "worker is free. *Versions lost*: earlier versions that no longer verify against their manifest's",
        "checksums. *IDs*: the published `(item_id, codes, dedup)` against the baseline's. *Time lost* is wall",
        "time against run 0; the machine is shared and busy, so it is only meaningful beside the undisturbed",
        "repeat (row 6" + (f": {noise:+.1f} s with no fault at all)." if noise is not None else ")."),
        "",
        "| # | fault | outcome | retries (try numbers > 1) | retry began after the fault | wall s "
        "| time lost vs baseline s | versions lost | IDs = baseline | passed | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        retried = ", ".join(f"{k}: {v}" for k, v in r.get("try_numbers", {}).items() if v > 1) or "none"
        ids = {True: "yes", False: "**no**", None: "n/a"}[r.get("ids_equal_baseline")]
        if r["scenario"] == 0 and r.get("ids_equal_baseline"):
            ids = "(reference)"
        after = ", ".join(f"{k}: {v} s" for k, v in (r.get("retry_started_after_fault_s") or {}).items()) or "n/a"
        notes = [e.split(" ", 1)[1] for e in r.get("events", [])[1:]]
        if r.get("train_resumed_from_epoch"):
            notes.append(f"train_rqvae's retry resumed from its epoch {r['train_resumed_from_epoch']} checkpoint")
        if r.get("reason"):
            notes.insert(0, f"**failed: {r['reason']}**")
        lines.append("| " + " | ".join(cell(v) for v in [
            r["scenario"], r["fault"], r["outcome"], f"{r.get('retries_used', 0)} ({retried})", after, r.get("wall_s"),
            f"{r['time_lost_s']:+.1f}" if r.get("time_lost_s") is not None else "n/a",
            f"{r.get('versions_lost', 'n/a')} of {r.get('versions_before', 'n/a')}", ids,
            "yes" if r.get("passed") else "**no**", "; ".join(notes),
        ]) + " |")
    lines += ["", END]
    return "\n".join(lines)


def write_doc(data: dict[str, Any], doc: Path = DOC) -> None:
    """Replace the text between the chaos markers (appended at the end the first time); nothing else changes."""
    text = doc.read_text() if doc.exists() else ""
    block = render(data)
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(text)


def load_results() -> dict[str, Any]:
    if RESULTS.exists():
        return json.loads(RESULTS.read_text())
    return {"results": {}}


def save_results(data: dict[str, Any]) -> None:
    data.update(generated_at=f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC", n_items=N_ITEMS,
                conf_summary=f"{CONF['num_codebooks']}x{CONF['codebook_size']} codes, {CONF['epochs']} epochs, "
                             f"shard_size {SHARD_SIZE}, seed {SEED}", airflow_overrides=AIRFLOW_OVERRIDES)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(data, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default="0,1,2,3,4,5,6", help="comma-separated scenario numbers")
    parser.add_argument("--render", action="store_true", help="only render docs/reliability.md from the results")
    parser.add_argument("--keep", action="store_true", help="leave the stack running afterwards")
    parser.add_argument("--reuse", action="store_true", help="keep the stack folder (published versions) of before")
    args = parser.parse_args(argv)
    data = load_results()
    if args.render:
        write_doc(data)
        return 0
    wanted = [SCENARIOS[int(n)] for n in args.scenarios.split(",")]
    CHAOS_DIR.mkdir(parents=True, exist_ok=True)
    (CHAOS_DIR / "airflow-overrides.env").write_text("".join(f"{k}={v}\n" for k, v in AIRFLOW_OVERRIDES.items()))
    sys.path.insert(0, str(REPO))
    if not args.reuse:
        stack("down", timeout=300)
        shutil.rmtree(STACK_DIR, ignore_errors=True)
    try:
        t0 = time.monotonic()
        up = stack("up", timeout=900)
        if up.returncode != 0:
            raise SystemExit(f"stack.sh up failed:\n{up.stderr[-3000:]}")
        log(f"stack up in {time.monotonic() - t0:.0f}s")
        api = Api(PORTS["STACK_API_PORT"], STACK_DIR, DAG_ID)
        api.login()
        while api.call("GET", f"/dags/{DAG_ID}") is None:
            time.sleep(2)
        api.call("PATCH", f"/dags/{DAG_ID}", {"is_paused": False})
        for scenario in wanted:
            baseline = data["results"].get("0") if scenario.number else None
            data["results"][str(scenario.number)] = run_scenario(api, scenario, baseline)
            save_results(data)
            write_doc(data)
    finally:
        if not args.keep:
            down = stack("down", timeout=300)
            log(f"stack down (exit {down.returncode})")
    failed = [r["name"] for r in data["results"].values() if not r.get("passed")]
    log(f"results in {RESULTS.relative_to(REPO)}; failed scenarios: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
