"""`make demo`: run the real DAG once on a sample snapshot and show what it published.

Steps: an Airflow home inside the project (SQLite, LocalExecutor, parallelism 4; see airflow_env.py), the
metadata DB migrated, the GPU pool created, a synthetic snapshot (200k x 32 by default) written to
`{embeddings_root}/{today}/` unless it is already there, then `airflow dags test rqvae_semantic_ids {today}`:
the same code path as a scheduled run, in one process. When the shared MovieLens set sits beside the
project (`../shared/data/movielens_small`, or $RQVAE_MOVIELENS), it is run too, as the `movielens` data set.
Prints the published folder, the manifest's metrics and each task's duration, the downstream evaluation, and
both aliases: `latest` (the newest published version) and `serving` (what consumers read: moved by the
evaluation DAG only when the version passed its gate).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from airflow_env import GPU_POOL_SLOTS, REPO, airflow_env  # noqa: E402

DAG_ID = "rqvae_semantic_ids"
EVAL_DAG_ID = "semantic_ids_evaluation"
BIN = Path(sys.executable).parent
MOVIELENS = REPO.parent / "shared" / "data" / "movielens_small" / "embeddings.parquet"
RATINGS_NAME = "ratings.parquet"  # beside the MovieLens embeddings: real user histories for the evaluation
# The demo's judge: the temporal protocol (the one the gate uses) only, two retriever epochs, a sample of users.
# Enough to show a verdict in seconds; its standard errors are wider than the DAG defaults' (printed beside it).
DEMO_EVALUATION = {"epochs": 2, "also_leave_one_out": False, "max_users": 300}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200_000, help="synthetic items (default 200000)")
    parser.add_argument("--dim", type=int, default=32, help="synthetic dimension (default 32)")
    parser.add_argument("--date", default=None, help="snapshot date YYYY-MM-DD (default: today, UTC)")
    parser.add_argument("--conf", default="{}", help="extra run conf as JSON, e.g. '{\"epochs\": 2}'")
    parser.add_argument("--eval-conf", default=json.dumps(DEMO_EVALUATION),
                        help=f"run conf of the evaluation DAG (default '{json.dumps(DEMO_EVALUATION)}': a demo-sized "
                        "judge; the DAG's own defaults train 5 epochs on up to 5,000 users and add leave-one-out, "
                        "make bench-downstream runs 3 x 3 seeds)")
    parser.add_argument("--no-movielens", action="store_true", help="skip the MovieLens data set")
    args = parser.parse_args()

    started = time.perf_counter()
    spent: list[tuple[str, float]] = []  # (step, seconds): where the demo's time went, printed at the end
    os.environ.update(airflow_env())
    sys.path.insert(0, str(REPO))
    from include.settings import load_roots
    from include.snapshot import parse_snapshot

    snapshot = parse_snapshot(args.date or datetime.now(UTC).date().isoformat())
    home = Path(os.environ["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    logs = home / "demo-logs"
    logs.mkdir(exist_ok=True)
    step("Airflow home", f"{home} (SQLite, LocalExecutor)")
    t0 = time.perf_counter()
    airflow(["db", "migrate"], logs / "db-migrate.log")
    pool = os.environ["RQVAE_GPU_POOL"]
    airflow(["pools", "set", pool, str(GPU_POOL_SLOTS), "GPU slots for train_rqvae and encode_items"],
            logs / "pools.log")
    spent.append(("Airflow metadata DB and pool", time.perf_counter() - t0))

    roots = load_roots()
    t0 = time.perf_counter()
    runs = [("synthetic", {}, ensure_synthetic(roots.embeddings / snapshot, args.items, args.dim))]
    ensure_synthetic_interactions(roots.embeddings / snapshot, roots.interactions / snapshot)
    movielens = Path(os.environ.get("RQVAE_MOVIELENS", MOVIELENS))
    if not args.no_movielens and movielens.is_file():
        runs.append(("movielens", {"embeddings_root": "movielens"},
                     ensure_linked(movielens, roots.embeddings / "movielens" / snapshot)))
        ratings = movielens.with_name(RATINGS_NAME)
        if ratings.is_file():
            ensure_linked(ratings, roots.interactions / "movielens" / snapshot)
            step("interactions [movielens]", f"{ratings.name} linked into {roots.interactions / 'movielens'}")
    spent.append(("input snapshots", time.perf_counter() - t0))

    failed = False
    for name, conf, source in runs:
        conf = {**conf, **json.loads(args.conf)}
        log = logs / f"dags-test-{name}-{snapshot}.log"
        step(f"run [{name}]", f"airflow dags test {DAG_ID} {snapshot} -c '{json.dumps(conf)}'  (input {source})")
        t0 = time.perf_counter()
        code = airflow(["dags", "test", DAG_ID, snapshot, "-c", json.dumps(conf)], log, check=False)
        print(f"   finished in {time.perf_counter() - t0:.1f}s, exit code {code}; full log: {log}")
        spent.append((f"publish DAG [{name}]", time.perf_counter() - t0))
        publish_root = roots.publish / ("movielens" if name == "movielens" else "")
        report(snapshot, publish_root, code == 0)
        failed = failed or code != 0
        if code == 0:
            t0 = time.perf_counter()
            failed = evaluate(name, snapshot, publish_root, logs, json.loads(args.eval_conf)) or failed
            spent.append((f"evaluation DAG [{name}]", time.perf_counter() - t0))
        aliases(name, publish_root)
    total = time.perf_counter() - started
    step("demo wall time", f"{total:.1f}s; where it went:")
    for what, seconds in spent:
        print(f"   {what:<32} {seconds:7.1f}s  {seconds / total:5.0%}")
    print(f"   {'other (imports, reports)':<32} {total - sum(s for _, s in spent):7.1f}s")
    return 1 if failed else 0


def evaluate(name: str, snapshot: str, publish_root: Path, logs: Path, extra: dict) -> bool:
    """Run the downstream-evaluation DAG on the version just published (a scheduler would start it from the
    `semantic_ids` asset event; `dags test` runs no scheduler, so the demo names the version). True if failed."""
    version = f"movielens/{snapshot}" if name == "movielens" else snapshot
    conf = {"version": version, **extra}
    log = logs / f"dags-test-{EVAL_DAG_ID}-{name}-{snapshot}.log"
    step(f"evaluate [{name}]", f"airflow dags test {EVAL_DAG_ID} {snapshot} -c '{json.dumps(conf)}'")
    t0 = time.perf_counter()
    code = airflow(["dags", "test", EVAL_DAG_ID, snapshot, "-c", json.dumps(conf)], log, check=False)
    print(f"   finished in {time.perf_counter() - t0:.1f}s, exit code {code}; full log: {log}")
    from include.versions import version_for

    path = version_for(publish_root, snapshot).evaluation
    if not path.is_file():
        print("   no evaluation written (no interactions snapshot, or the run failed: see the log)")
        return code != 0
    evaluation = json.loads(path.read_text())
    retrieval = evaluation["retrieval"]
    print(f"   {retrieval.get('protocol', 'leave_one_out')}: {retrieval.get('n_events', retrieval['n_users'])} test "
          f"events of {retrieval['n_users']} users, {retrieval['info']['n_items']} items, seeds {retrieval['seeds']}; "
          f"gate: {evaluation['summary']['status']} {evaluation['summary']['reason']}")
    print(f"   {'ID set':<10} {'Recall@10':>18} {'NDCG@10':>18} {'NLL':>18}")
    for set_name, entry in retrieval["id_sets"].items():
        cells = [_pm(entry["all"][m]) for m in ("recall@10", "ndcg@10", "nll")]
        print(f"   {set_name:<10} {cells[0]:>18} {cells[1]:>18} {cells[2]:>18}")
    for pair, diffs in evaluation["paired"].items():
        cells = [_pm(diffs[m], signed=True) for m in ("recall@10", "ndcg@10", "nll")]
        print(f"   {pair:<18} paired diff: R@10 {cells[0]}, NDCG@10 {cells[1]}, NLL {cells[2]}")
    return code != 0 and evaluation["summary"]["status"] != "failed"


def aliases(name: str, publish_root: Path) -> None:
    """Both aliases of the data set's publish root: which version the pipeline made last, which one is served."""
    from include.versions import read_latest
    from rqvae.ids.promotion import read_promotions, read_serving

    serving = read_serving(publish_root)
    moves = [m for m in read_promotions(publish_root) if m.get("to") == serving]
    if serving is None:
        how = "none yet: no version passed the gate (promote one by hand: rqvae promote --publish-root ...)"
    elif moves:
        last = moves[-1]
        how = f"{serving}  ({last['verdict']}; {last['kind']} by {last['by']}: {last['reason']})"
    else:
        how = serving
    step(f"aliases [{name}]", f"latest -> {read_latest(publish_root)}, serving -> {how}")


def _pm(stat: dict, signed: bool = False) -> str:
    if stat.get("mean") is None:
        return "n/a"
    mean = f"{stat['mean']:+.4f}" if signed else f"{stat['mean']:.4f}"
    return f"{mean} ± {stat['se']:.4f}" if stat.get("se") is not None else mean


def ensure_synthetic_interactions(embeddings: Path, folder: Path) -> None:
    """Synthetic user histories over the synthetic items (neighbouring items in sequence), unless present."""
    from include.snapshot import snapshot_ready

    if snapshot_ready(folder):
        return
    from rqvae.io.interactions import write_interactions
    from rqvae.io.readers import read_embeddings
    from rqvae.io.synth import synth_interactions

    emb = read_embeddings(embeddings)
    events = synth_interactions(emb.ids, emb.vectors, n_users=1000, events=30, seed=0)
    write_interactions(folder, events)
    step("interactions", f"{len(events)} synthetic events of {events.n_users} users written to {folder}")


def step(title: str, detail: str) -> None:
    print(f"== {title}: {detail}", flush=True)


def airflow(argv: list[str], log: Path, check: bool = True) -> int:
    """Run an `airflow` CLI command with its output in a log file (the task logs are long)."""
    with open(log, "w") as out:
        code = subprocess.run([str(BIN / "airflow"), *argv], stdout=out, stderr=subprocess.STDOUT).returncode
    if check and code != 0:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise SystemExit(f"airflow {' '.join(argv)} failed (exit {code}); end of {log}:\n{tail}")
    return code


def ensure_synthetic(folder: Path, items: int, dim: int) -> Path:
    """Write the synthetic snapshot unless a complete one is there (an incomplete one is rewritten)."""
    from include.snapshot import snapshot_ready

    if snapshot_ready(folder):
        step("snapshot", f"{folder} already complete, reused")
        return folder
    if folder.exists():
        shutil.rmtree(folder)
    from rqvae.io.synth import synth

    t0 = time.perf_counter()
    synth(folder, items, dim=dim, seed=0)
    step("snapshot", f"{items} x {dim} synthetic items written to {folder} in {time.perf_counter() - t0:.1f}s")
    return folder


def ensure_linked(source: Path, folder: Path) -> Path:
    """A snapshot folder whose data file is a symlink to the shared file (no copy), plus `_SUCCESS`."""
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / source.name
    if not link.exists():
        link.symlink_to(os.path.relpath(source.resolve(), folder))
    (folder / "_SUCCESS").touch()
    return folder


def report(snapshot: str, publish_root: Path, succeeded: bool) -> None:
    """Print the run's task durations (from the metadata DB) and, when it published, the manifest."""
    for task_id, state, seconds in task_durations(snapshot):
        print(f"   {task_id:<22} {state:<16} {seconds:8.1f}s")
    from include.versions import read_latest, version_for

    version = version_for(publish_root, snapshot)
    if not succeeded or not version.is_complete():
        print("   nothing published")
        return
    manifest = version.read_manifest()
    train = manifest["metrics"]["train"]
    codes = manifest["metrics"]["codes"]
    print(f"   published: {version.path}  (latest -> {read_latest(publish_root)})")
    print(f"   files: {', '.join(sorted(manifest['files']))}")
    print(
        f"   items {manifest['counts']['n_items']}, dim {manifest['counts']['dim']}, "
        f"codebooks {manifest['config']['model']['model']['codebook_size']}, device {train.get('device')}"
    )
    print(
        f"   recon_mse {codes.get('recon_mse'):.5f}, unique_ratio {codes.get('unique_ratio')}, "
        f"collision_rate {codes.get('collision_rate')}, max_bucket {codes.get('max_bucket')}, "
        f"usage {codes.get('usage')}, perplexity {codes.get('perplexity')}"
    )
    print(
        f"   validation: input {manifest['validation']['input']['evaluated']} rules passed, "
        f"codes {manifest['validation']['codes']['evaluated']} rules passed"
    )


def task_durations(snapshot: str) -> list[tuple[str, str, float]]:
    """Task states and durations of the latest run for this logical date, read from the metadata DB."""
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    day = datetime.fromisoformat(snapshot).replace(tzinfo=UTC)
    with create_session() as session:
        run = session.scalars(
            select(DagRun).where(DagRun.dag_id == DAG_ID, DagRun.logical_date == day).order_by(DagRun.id.desc())
        ).first()
        if run is None:
            return []
        tis = session.scalars(
            select(TaskInstance).where(TaskInstance.dag_id == DAG_ID, TaskInstance.run_id == run.run_id)
        ).all()
        order = {t: i for i, t in enumerate(
            ["wait_for_embeddings", "load_embeddings", "validate_dims", "plan_shards", "train_rqvae",
             "encode_items", "resolve_collisions", "validate_codes", "publish"])}
        rows = sorted(tis, key=lambda ti: (order.get(ti.task_id, 99), ti.map_index))
        # a mapped task shows one row per instance: encode_items[0], encode_items[1], ...
        return [
            (ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]", str(ti.state),
             float(ti.duration or 0.0))
            for ti in rows
        ]


if __name__ == "__main__":
    sys.exit(main())
