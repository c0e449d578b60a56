"""The whole DAG on the native Celery stack at 50M items: per-task wall time, worker and peak RSS.

`scripts/stack.sh` brings up PostgreSQL, Redis, the Airflow api-server, scheduler, dag-processor, triggerer, a
`default` worker and ``--gpu-workers`` `gpu` workers (concurrency 1 each, one `rqvae_gpu` pool slot each) in
`var/bench/stack` on ports of its own. A synthetic ``--n`` x 32 snapshot (``rqvae synth``, seed 0, hard-linked from
`var/bench/scale`) goes through one DAG run; the encode_items shards are mapped over the gpu workers.

Peak RSS is each task process's own high-water mark (``VmHWM`` in /proc of the process Airflow titles
``airflow worker -- <task instance id>``), read every 0.25 s while it runs.

    python bench/stack_scale.py                  # 50M items (make bench-stack-scale); ~30 min on 2 cores
    python bench/stack_scale.py --n 2000000      # quicker

Writes the ``scale-stack`` section of docs/benchmarks.md. Not part of CI.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bench.report import provenance, replace_section  # noqa: E402
from bench.scale import SNAPSHOT, ensure_snapshot  # noqa: E402
from rqvae.config import DEFAULT_RESOLVE_ROWS  # noqa: E402
from scripts.airflow_env import STACK_SHORT_WAITS  # noqa: E402
from scripts.stack_api import Api, log  # noqa: E402

DAG_ID = "rqvae_semantic_ids"
STACK = ROOT / "scripts" / "stack.sh"
STACK_DIR = ROOT / "var" / "bench" / "stack"
PORTS = {  # its own: no developer stack, chaos stack or integration-test stack is touched
    "STACK_PG_PORT": "55482",
    "STACK_REDIS_PORT": "56429",
    "STACK_API_PORT": "58130",
    "STACK_SCHEDULER_HEALTH_PORT": "59024",
    "STACK_LOG_PORT": "58843",
}
STAGES = ("wait_for_embeddings", "load_embeddings", "validate_dims", "plan_shards", "train_rqvae", "encode_items",
          "resolve_collisions", "validate_codes", "publish")
TASK_TITLE = "airflow worker -- "


def stack(gpu_workers: int, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **PORTS, **STACK_SHORT_WAITS, "STACK_DIR": str(STACK_DIR),
           "STACK_GPU_WORKERS": str(gpu_workers), "STACK_TIMEOUT_S": "400"}
    return subprocess.run([str(STACK), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)


class PeakRss:
    """Per task instance id: the largest VmHWM seen of its task process (a background thread polls /proc)."""

    def __init__(self, interval_s: float = 0.25) -> None:
        self.peaks: dict[str, int] = {}
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._stop.is_set():
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                try:
                    title = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    if not title.startswith(TASK_TITLE):
                        continue
                    hwm = next(int(line.split()[1]) for line in (proc / "status").read_text().splitlines()
                               if line.startswith("VmHWM:"))
                except (OSError, StopIteration, ValueError):
                    continue  # the process ended between listing and reading
                ti = title[len(TASK_TITLE):].strip()
                self.peaks[ti] = max(self.peaks.get(ti, 0), hwm)
            self._stop.wait(self.interval_s)


def place_snapshot(n: int, day: str) -> Path:
    """The synthetic snapshot under the stack's embeddings root, hard-linked (no second 7 GB copy)."""
    source = ensure_snapshot(ROOT / "var" / "bench" / "scale", n, 32)
    target = STACK_DIR / "data" / "embeddings" / day
    if not (target / "_SUCCESS").exists():
        shutil.rmtree(target, ignore_errors=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["cp", "-al", str(source), str(target)], check=True)
    return target


def run_dag(api: Api, conf: dict[str, Any], timeout_s: float) -> tuple[dict[str, Any], list[dict[str, Any]], float]:
    """Trigger one run, wait for it to end; (the run, its task instances, seconds from trigger to end)."""
    started = time.monotonic()
    run = None
    while run is None and time.monotonic() - started < 300:
        run = api.call("POST", f"/dags/{DAG_ID}/dagRuns", {"logical_date": None, "conf": conf})
        if run is None:
            time.sleep(3)
    if run is None:
        raise SystemExit("could not trigger the DAG run")
    run_id = run["dag_run_id"]
    log(f"triggered {run_id}", "bench")
    while time.monotonic() - started < timeout_s:
        found = api.run(run_id)
        if found is not None and found["state"] in ("success", "failed"):
            run = found
            break
        time.sleep(3)
    wall = time.monotonic() - started
    return run, api.tis(run_id) or [], wall


def stage_rows(tis: list[dict[str, Any]], peaks: dict[str, int], hosts: dict[str, str]) -> list[dict[str, Any]]:
    """One row per task (mapped instances folded): seconds, wall span, workers, peak RSS of the largest instance."""
    rows = []
    for stage in STAGES:
        mine = [ti for ti in tis if ti["task_id"] == stage]
        if not mine:
            continue
        starts = [datetime.fromisoformat(ti["start_date"]) for ti in mine if ti.get("start_date")]
        ends = [datetime.fromisoformat(ti["end_date"]) for ti in mine if ti.get("end_date")]
        rows.append({
            "stage": stage,
            "instances": len(mine),
            "states": sorted({ti["state"] for ti in mine}),
            "seconds": sum(float(ti.get("duration") or 0) for ti in mine),
            "span": (max(ends) - min(starts)).total_seconds() if starts and ends else None,
            "workers": sorted({hosts.get(ti.get("hostname") or "", ti.get("hostname") or "?") for ti in mine}),
            "peak_rss_mib": max((peaks.get(ti["id"], 0) for ti in mine), default=0) / 1024,
            "measured": sum(1 for ti in mine if ti["id"] in peaks),
        })
    return rows


def to_markdown(args: argparse.Namespace, run: dict[str, Any], rows: list[dict[str, Any]], wall: float,
                manifest: dict[str, Any] | None) -> str:
    cores = os.cpu_count()
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {cores} CPU cores, no GPU: one DAG run on "
        f"the native Celery stack (`scripts/stack.sh`: PostgreSQL, Redis, scheduler, a `default` worker and "
        f"{args.gpu_workers} `gpu` workers of concurrency 1), {args.n:,} x 32 synthetic items (`rqvae synth`), "
        f"{args.levels} x 256 codes, shard_size {args.shard_size:,}, {args.epochs} epochs on "
        f"{args.max_train_items:,} sampled items. Run state: **{run.get('state')}**, {wall:.0f} s from trigger to "
        f"end. Command: `make bench-stack-scale` (`python bench/stack_scale.py --n {args.n}`). "
        f"`min_unique_ratio` {args.min_unique_ratio}: synthetic items share code tuples more as N grows (unique-ID "
        "ratio 0.68 at 5.7M, 0.47 at 50M), below the default 0.5. Peak RSS: each task process's VmHWM, read every "
        "0.25 s; task seconds are Airflow's durations, wall span from the first start to the last end.",
        "",
        "| task | instances | task seconds (sum) | wall span s | workers | peak RSS MiB (largest instance) |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        span = f"{row['span']:.0f}" if row["span"] is not None else "-"
        peak = f"{row['peak_rss_mib']:.0f}" if row["measured"] else "not sampled"
        lines.append(f"| {row['stage']} | {row['instances']} | {row['seconds']:.0f} | {span} | "
                     f"{', '.join(row['workers'])} | {peak} |")
    worst = max((r for r in rows if r["measured"]), key=lambda r: r["peak_rss_mib"], default=None)
    if worst is not None:
        lines += ["", f"Largest task: {worst['stage']} at {worst['peak_rss_mib']:.0f} MiB "
                      f"({'within' if worst['peak_rss_mib'] <= 3072 else 'over'} the 3 GiB bound)."]
    if manifest is not None:
        encode = manifest.get("metrics", {}).get("encode", {})
        lines.append(
            f"Published {manifest['counts'].get('n_items', encode.get('n_items')):,} IDs: unique-ID ratio "
            f"{encode.get('unique_ratio')}, largest dedup {encode.get('max_dedup')}, {encode.get('n_shards')} encode "
            f"shards, {encode.get('n_parts')} level-1 groups resolved one at a time "
            f"(at most {args.resolve_rows or DEFAULT_RESOLVE_ROWS:,} items each where whole codes allow).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=50_000_000)
    parser.add_argument("--gpu-workers", type=int, default=2)
    parser.add_argument("--levels", type=int, default=4, help="code levels (the DAG's default is 3)")
    parser.add_argument("--shard-size", type=int, default=2_000_000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--max-train-items", type=int, default=1_000_000)
    parser.add_argument("--min-unique-ratio", type=float, default=0.3,
                        help="synthetic items share tuples more as N grows (0.68 unique at 5.7M, 0.47 at 50M)")
    parser.add_argument("--resolve-rows", type=int, default=0, help="resolve_rows for the run (0: the default)")
    parser.add_argument("--timeout", type=float, default=5400)
    parser.add_argument("--keep", action="store_true", help="leave the stack running afterwards")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args(argv)
    started = provenance()  # before any work: the load average is the start's
    import json

    day = SNAPSHOT
    stack(args.gpu_workers, "down", timeout=300)
    shutil.rmtree(STACK_DIR, ignore_errors=True)
    place_snapshot(args.n, day)
    try:
        up = stack(args.gpu_workers, "up")
        if up.returncode != 0:
            raise SystemExit(f"stack.sh up failed:\n{up.stderr[-3000:]}")
        api = Api(PORTS["STACK_API_PORT"], STACK_DIR, DAG_ID)
        api.login()
        while api.call("GET", f"/dags/{DAG_ID}") is None:
            time.sleep(2)
        api.call("PATCH", f"/dags/{DAG_ID}", {"is_paused": False})
        conf = {"snapshot": day, "num_codebooks": args.levels, "shard_size": args.shard_size, "epochs": args.epochs,
                "max_train_items": args.max_train_items, "min_unique_ratio": args.min_unique_ratio}
        if args.resolve_rows:
            conf["resolve_rows"] = args.resolve_rows
        with PeakRss() as sampler:
            run, tis, wall = run_dag(api, conf, args.timeout)
        hosts = {(STACK_DIR / "run" / f"{w}.hostname").read_text().strip(): w
                 for w in ("worker", "worker-gpu", *(f"worker-gpu-{i}" for i in range(2, args.gpu_workers + 1)))}
        rows = stage_rows(tis, sampler.peaks, hosts)
        manifest_path = STACK_DIR / "data" / "published" / day / "manifest.json"
        manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else None
    finally:
        if not args.keep:
            stack(args.gpu_workers, "down", timeout=300)
    table = to_markdown(args, run, rows, wall, manifest)
    print(table)
    (ROOT / "var" / "bench").mkdir(parents=True, exist_ok=True)
    (ROOT / "var" / "bench" / "stack_scale.json").write_text(json.dumps({"run": run, "rows": rows, "wall": wall},
                                                                        default=str, indent=1))
    replace_section(Path(args.out), "scale-stack", f"## {args.n / 1e6:g}M items through the DAG on the Celery stack",
                    table, started)
    return 0 if run.get("state") == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
