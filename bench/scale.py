"""Seed-scale benchmark: the pipeline's stages on 5,689,519 x 32 items, each in its own process, with wall time
and peak RSS; encoding throughput against faiss ResidualQuantizer on the same model size in the same run; a
scaling table (100k, 1M, 5.7M); optionally the whole DAG through ``airflow dags test``.

    python bench/scale.py                      # all of it (make bench-scale)
    python bench/scale.py --n 1000000 --no-dag # smaller, quicker
    python bench/scale.py --only-collaborative --n 1000000 --interactions 20000000   # just training with logs

Writes the ``scale`` section of docs/benchmarks.md, and ``scale-collaborative``: `train_rqvae` with and without
an interactions snapshot (synthetic logs of ``--interactions`` events), the streamed read and the SVD measured
on their own, each in its own process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import provenance, replace_section  # noqa: E402
from include.stages.plan_shards import plan_shards  # noqa: E402
from rqvae.config import (  # noqa: E402
    DEFAULT_SHARD_SIZE,
    CodeChecks,
    EncodeOptions,
    InputChecks,
    ModelConfig,
    RetrainPolicy,
    TrainConfig,
)

SEED_ITEMS = 5_689_519
STAGES = ("load_embeddings", "validate_dims", "train_rqvae", "encode_items", "resolve_collisions", "validate_codes",
          "publish")
SNAPSHOT = "2026-01-01"

# Each stage runs in a fresh interpreter so its peak RSS is its own; the child prints one JSON line.
STAGE_CODE = """
import json, sys
sys.path.insert(0, {root!r})
from rqvae import threads
threads.configure()  # what every pipeline task's on_execute_callback does, before torch loads
args = json.loads(sys.argv[1])
stage = args.pop("stage")
if stage == "encode_array":
    import time, numpy as np
    from rqvae.io.checkpoint import load_model
    from rqvae.encoding.encode import encode_array
    from rqvae.io.readers import read_embeddings
    x = read_embeddings(args["artifact"]).vectors
    model = load_model(args["model_dir"])
    times = []
    for _ in range(args["repeats"]):
        t = time.perf_counter(); encode_array(model, x); times.append(time.perf_counter() - t)
    print(json.dumps({{"times": times, "n": len(x)}}))
elif stage == "collab_prep":
    import time
    from rqvae.training.collaborative import collaborative_embeddings, read_sequences
    from rqvae.io.readers import read_embeddings
    ids = read_embeddings(args["artifact"]).ids
    t = time.perf_counter()
    seqs = read_sequences(args["interactions"], ids, holdout="temporal")
    read_s = time.perf_counter() - t
    t = time.perf_counter()
    collaborative_embeddings(seqs, args["dim"])
    print(json.dumps({{**seqs.summary(), "read_s": read_s, "svd_s": time.perf_counter() - t}}))
elif stage == "faiss_encode":
    import time, faiss, numpy as np
    from rqvae.io.readers import read_embeddings
    x = read_embeddings(args["artifact"]).vectors
    rq = faiss.ResidualQuantizer(x.shape[1], args["levels"], 8)
    rq.max_beam_size = 1
    rng = np.random.default_rng(0)
    rq.train(x[rng.choice(len(x), min(len(x), 100_000), replace=False)])
    times = []
    for _ in range(args["repeats"]):
        t = time.perf_counter(); rq.compute_codes(x); times.append(time.perf_counter() - t)
    print(json.dumps({{"times": times, "n": len(x), "threads": faiss.omp_get_max_threads()}}))
else:
    import importlib
    import include.params, rqvae.config
    def revive(value):  # config objects travel as {{"__config__": class name, **fields}}
        if isinstance(value, dict) and "__config__" in value:
            value = dict(value)
            name = value.pop("__config__")
            cls = getattr(rqvae.config, name, None) or getattr(include.params, name)
            return cls.from_dict(value) if hasattr(cls, "from_dict") else cls(**value)
        return value
    fn = getattr(importlib.import_module("include.stages." + stage), stage)
    positional = [revive(v) for v in args.pop("_args")]
    print(json.dumps(fn(*positional, **{{k: revive(v) for k, v in args.items()}}), default=str))
"""


def config_arg(config: Any) -> dict[str, Any]:
    """A config object as JSON for a stage child (STAGE_CODE revives it)."""
    return {"__config__": type(config).__name__, **config.to_dict()}


def run_stage(stage: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run one stage in a child process; returns its result plus wall seconds and the child's own peak RSS."""
    payload = json.dumps({"stage": stage, "_args": list(args), **kwargs})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-c", STAGE_CODE.format(root=str(ROOT)), payload],
                                stdout=out, stderr=err, env=env, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # wait4: this child's rusage, not the max over all children
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"stage {stage} failed:\n{stderr[-3000:]}")
    result = json.loads(stdout.strip().splitlines()[-1])
    return {"result": result, "seconds": wall, "peak_rss_mib": usage.ru_maxrss / 1024}  # KiB on Linux


def ensure_snapshot(root: Path, n: int, dim: int) -> Path:
    from rqvae.io.synth import synth

    folder = root / "embeddings" / f"n{n}" / SNAPSHOT
    if not (folder / "_SUCCESS").exists():
        print(f"generating {n:,} x {dim} with rqvae synth -> {folder}", flush=True)
        t0 = time.perf_counter()
        synth(folder, n=n, dim=dim, seed=0)
        print(f"  synth took {time.perf_counter() - t0:.1f}s", flush=True)
    return folder


def measure_pipeline(root: Path, snapshot_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    work = root / "work" / snapshot_dir.parent.name / SNAPSHOT
    publish_root = root / "published" / snapshot_dir.parent.name
    figures: dict[str, Any] = {}

    def step(name: str, *a: Any, label: str | None = None, **kw: Any) -> dict[str, Any]:
        r = run_stage(name, *a, **kw)
        figures[label or name] = {"seconds": r["seconds"], "peak_rss_mib": r["peak_rss_mib"]}
        print(f"  {label or name:22s} {r['seconds']:7.1f}s  peak RSS {r['peak_rss_mib']:7.0f} MiB", flush=True)
        return r["result"]

    load = step("load_embeddings", str(snapshot_dir), str(work))
    step("validate_dims", load["path"], str(work / "validation" / "input.json"),
         config_arg(InputChecks(min_items=1, min_norm=0.0, max_norm=1e6)))
    model = ModelConfig(input_dim=load["dim"], num_codebooks=args.levels, codebook_size=256)
    training = TrainConfig(epochs=args.epochs, max_train_items=args.max_train_items, device="cpu")
    run = {"snapshot": SNAPSHOT, "snapshot_dir": str(snapshot_dir), "work_dir": str(work),
           "publish_root": str(publish_root), "interactions_dir": str(work / "no-interactions"),
           "interactions_name": "none"}  # what wait_for_embeddings hands on (interactions: see the section below)
    train = step("train_rqvae", run, load["path"], config_arg(model), config_arg(training),
                 config_arg(RetrainPolicy()))
    encode_options = EncodeOptions(shard_size=args.shard_size)
    # As the DAG maps it: one encode_items process per shard, then one resolve_collisions over all of them.
    shards = [
        step("encode_items", run, load["path"], train, shard, "cpu", label=f"encode_items[{shard['index']}]")
        for shard in plan_shards(load["n_items"], encode_options, None)
    ]
    shard_figures = [figures.pop(f"encode_items[{s['index']}]") for s in shards]
    figures["encode_items"] = {"seconds": sum(f["seconds"] for f in shard_figures), "shards": len(shards),
                               "peak_rss_mib": max(f["peak_rss_mib"] for f in shard_figures)}
    enc = step("resolve_collisions", run, load["path"], train, shards, config_arg(encode_options))
    step("validate_codes", enc["path"], load["path"], str(work / "validation" / "codes.json"),
         config_arg(CodeChecks()), codebook_sizes=enc["codebook_size"], recon_mse=enc["recon_mse"])
    step("publish", run, {"__config__": "RunOptions", "export_json": True}, loaded=load, trained=train,
         encoded=enc)
    figures["n_items"] = load["n_items"]
    figures["encode_items_per_s"] = enc.get("items_per_second")
    figures["unique_ratio"] = enc["unique_ratio"]
    figures["recon_mse"] = enc["recon_mse"]
    figures["artifact"] = load["path"]
    figures["model_dir"] = train["model_path"]
    return figures


def ensure_interactions(root: Path, snapshot_dir: Path, n_events: int, seed: int = 0) -> Path:
    """Synthetic logs for the snapshot's items, written part by part (memory: one part): users of 50 events,
    each mostly around a "home" item (neighbouring rows) and otherwise on Zipf-popular items."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = root / "interactions" / f"{snapshot_dir.parent.name}-e{n_events}" / SNAPSHOT
    if (folder / "_SUCCESS").exists():
        return folder
    ids = np.concatenate([pq.read_table(p, columns=["item_id"]).column(0).to_numpy()
                          for p in sorted(snapshot_dir.glob("*.parquet"))])
    rng = np.random.default_rng(seed)
    per_user, part_users = 50, 100_000
    popular = rng.permutation(len(ids))
    zipf_p = 1.0 / np.arange(1, len(ids) + 1) ** 0.9
    zipf_c = np.cumsum(zipf_p / zipf_p.sum())
    folder.mkdir(parents=True, exist_ok=True)
    print(f"generating {n_events:,} synthetic interactions -> {folder}", flush=True)
    t0 = time.perf_counter()
    for part, first in enumerate(range(0, n_events // per_user, part_users)):
        users = np.arange(first, min(first + part_users, n_events // per_user), dtype=np.int64)
        home = rng.integers(0, len(ids), len(users))[:, None]
        near = np.clip(home + rng.integers(-200, 201, (len(users), per_user)), 0, len(ids) - 1)
        pop = popular[np.minimum(np.searchsorted(zipf_c, rng.random((len(users), per_user))), len(ids) - 1)]
        rows = np.where(rng.random((len(users), per_user)) < 0.7, near, pop)
        times = 1_700_000_000 + np.arange(per_user)[None, :] * 60 + rng.integers(0, 10**6, (len(users), 1))
        pq.write_table(pa.table({"user_id": np.repeat(users, per_user), "item_id": ids[rows].ravel(),
                                 "timestamp": times.ravel()}), folder / f"part-{part:05d}.parquet")
    (folder / "_SUCCESS").touch()
    print(f"  took {time.perf_counter() - t0:.1f}s", flush=True)
    return folder


def measure_collaborative(root: Path, snapshot_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """`train_rqvae` without and with the interactions snapshot (same artifact), and the log-side steps alone."""
    logs = ensure_interactions(root, snapshot_dir, args.interactions)
    work = root / "work-collab" / snapshot_dir.parent.name / SNAPSHOT
    out: dict[str, Any] = {}

    def step(label: str, stage: str, *a: Any, **kw: Any) -> dict[str, Any]:
        r = run_stage(stage, *a, **kw)
        out[label] = {"seconds": r["seconds"], "peak_rss_mib": r["peak_rss_mib"]}
        print(f"  {label:34s} {r['seconds']:7.1f}s  peak RSS {r['peak_rss_mib']:7.0f} MiB", flush=True)
        return r["result"]

    load = step("load_embeddings", "load_embeddings", str(snapshot_dir), str(work / "plain"))
    model = config_arg(ModelConfig(input_dim=load["dim"], num_codebooks=args.levels, codebook_size=256))
    training = TrainConfig(epochs=args.epochs, max_train_items=args.max_train_items, device="cpu")
    policy = config_arg(RetrainPolicy(align_retrain="off"))
    def run_of(folder: Path) -> dict[str, Any]:  # the RunInfo of a run whose day has the logs written above
        return {"snapshot": SNAPSHOT, "snapshot_dir": str(snapshot_dir), "work_dir": str(folder), "publish_root": None,
                "interactions_dir": str(logs), "interactions_name": logs.name}

    plain = step("train_rqvae (content only)", "train_rqvae", run_of(work / "plain"), load["path"], model,
                 config_arg(training), policy)
    out["prep"] = step("read + hold-out + SVD (alone)", "collab_prep", artifact=load["path"],
                       interactions=str(logs), dim=8)
    collab = step("train_rqvae (with interactions)", "train_rqvae", run_of(work / "collab"), load["path"], model,
                  config_arg(replace(training, collaborative_weight=1.0)), policy)
    out.update(n_items=load["n_items"], n_events=args.interactions, collaborative=collab["collaborative"],
               plain_metrics=plain["metrics"], collab_metrics=collab["metrics"])
    return out


def collaborative_markdown(c: dict[str, Any], dim: int, levels: int) -> str:
    plain, collab = c["train_rqvae (content only)"], c["train_rqvae (with interactions)"]
    prep = c["prep"]
    entry = c["collaborative"]
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} CPU cores, no GPU; "
        f"{c['n_items']:,} x {dim} synthetic items, {levels} x 256 codes, {c['n_events']:,} synthetic "
        f"interactions ({prep['n_users']:,} users of 50 events; each user's last two held out as the DAG does: "
        f"{entry['n_interactions']:,} learnt from, on {entry['n_items_with_interactions']:,} items). Each row ran in "
        "its own process. Command: `make bench-scale` (this section alone: `python bench/scale.py "
        f"--only-collaborative --n {c['n_items']} --interactions {c['n_events']}`).",
        "",
        "| step | seconds | peak RSS (MiB) |",
        "|---|---|---|",
        f"| train_rqvae, content only | {plain['seconds']:.1f} | {plain['peak_rss_mib']:.0f} |",
        f"| train_rqvae with interactions (weight 1) | {collab['seconds']:.1f} | {collab['peak_rss_mib']:.0f} |",
        f"| **added training time** | **{collab['seconds'] - plain['seconds']:+.1f}** | |",
        f"| of which: streamed read, hold-out, sort ({prep['read_s']:.1f} s) and SVD ({prep['svd_s']:.1f} s), "
        f"alone | {c['read + hold-out + SVD (alone)']['seconds']:.1f} | "
        f"{c['read + hold-out + SVD (alone)']['peak_rss_mib']:.0f} |",
        "",
        f"Recon MSE {c['plain_metrics']['recon_mse']:.6f} -> {c['collab_metrics']['recon_mse']:.6f}, unique-ID ratio "
        f"{c['plain_metrics']['unique_ratio']:.4f} -> {c['collab_metrics']['unique_ratio']:.4f} (synthetic logs: "
        "no quality claim). Memory bound: the logs are read part by part and kept as 20 bytes an event until "
        "sorted (user and time int64, item row int32), then 4 bytes (item rows) plus the user offsets; the SVD adds "
        "12 bytes an event and a few float32 [items, dim + 8] blocks; no items x items matrix exists.",
    ]
    return "\n".join(lines)


def measure_encode(artifact: str, model_dir: str, levels: int, repeats: int) -> dict[str, Any]:
    ours = run_stage("encode_array", artifact=artifact, model_dir=model_dir, repeats=repeats)
    peer = run_stage("faiss_encode", artifact=artifact, levels=levels, repeats=repeats)
    n = ours["result"]["n"]
    ours_rate = n / statistics.median(ours["result"]["times"])
    peer_rate = n / statistics.median(peer["result"]["times"])
    return {"ours_items_per_s": ours_rate, "faiss_items_per_s": peer_rate, "ratio": ours_rate / peer_rate,
            "repeats": repeats, "n": n}


def measure_dag(snapshot_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Whole DAG with `airflow dags test` on a project-local SQLite home, roots pointed at the bench data."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from airflow_env import airflow_env

    env = {**os.environ, **airflow_env()}
    home = ROOT / "var" / "bench" / "airflow"
    env.update({
        "AIRFLOW_HOME": str(home),
        "RQVAE_EMBEDDINGS_ROOT": str(snapshot_dir.parent),
        "RQVAE_WORK_ROOT": str(snapshot_dir.parents[2] / "dag-work"),
        "RQVAE_PUBLISH_ROOT": str(snapshot_dir.parents[2] / "dag-published"),
    })
    airflow = str(Path(sys.executable).parent / "airflow")
    home.mkdir(parents=True, exist_ok=True)
    subprocess.run([airflow, "db", "migrate"], env=env, check=True, capture_output=True)
    subprocess.run([airflow, "pools", "set", env.get("RQVAE_GPU_POOL", "rqvae_gpu"), "1", "gpu"], env=env,
                   check=True, capture_output=True)
    conf = json.dumps({"snapshot": SNAPSHOT, "num_codebooks": args.levels, "epochs": args.epochs,
                       "max_train_items": args.max_train_items, "export_json": True, "shard_size": args.shard_size})
    t0 = time.perf_counter()
    proc = subprocess.run([airflow, "dags", "test", "rqvae_semantic_ids", SNAPSHOT, "--conf", conf], env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    ok = proc.returncode == 0 and "state=success" in (proc.stdout + proc.stderr).replace(" ", "")
    return {"seconds": wall, "ok": ok, "returncode": proc.returncode}


def to_markdown(n: int, dim: int, levels: int, pipeline: dict, encode: dict, scaling: list[dict],
                dag: dict | None) -> str:
    cores = os.cpu_count()
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {cores} CPU cores, no GPU; {n:,} x {dim} "
        f"synthetic items (`rqvae synth`), {levels} x 256 codes. Each stage ran in its own process (peak RSS is "
        "that process's). Command: `make bench-scale` (this section alone: `python bench/scale.py --interactions "
        "0`).",
        "",
        "| stage | seconds | peak RSS (MiB) |",
        "|---|---|---|",
    ]
    for stage in STAGES:
        name = f"{stage} ({pipeline[stage]['shards']} shards, one process each)" if stage == "encode_items" else stage
        lines.append(f"| {name} | {pipeline[stage]['seconds']:.1f} | {pipeline[stage]['peak_rss_mib']:.0f} |")
    total = sum(pipeline[s]["seconds"] for s in STAGES)
    lines.append(f"| **stages total** | **{total:.1f}** | |")
    if dag is not None:
        lines.append(f"| whole DAG (`airflow dags test`, {'success' if dag['ok'] else 'FAILED'}) | "
                     f"{dag['seconds']:.1f} | |")
    lines += [
        "",
        f"Encoding throughput, median of {encode['repeats']} passes over all {encode['n']:,} items, same data and "
        f"model size ({levels} x 256), same run:",
        "",
        "| encoder | items/s | ratio |",
        "|---|---|---|",
        f"| rqvae `encode_array` (CPU, {cores} threads) | {encode['ours_items_per_s']:,.0f} | "
        f"{encode['ratio']:.2f} |",
        f"| faiss ResidualQuantizer beam 1 `compute_codes` | {encode['faiss_items_per_s']:,.0f} | 1.00 |",
        "",
        "Scaling of encoding: `encode_items` (every shard: stream in, encode, write a raw shard) plus "
        "`resolve_collisions` (dedup over all items, write the final parts), each size its own run:",
        "",
        "| items | shards | encode_items s | resolve_collisions s | items/s overall | peak RSS (MiB) |",
        "|---|---|---|---|---|---|",
    ]
    for s in scaling:
        seconds = s["encode_items"]["seconds"] + s["resolve_collisions"]["seconds"]
        peak = max(s["encode_items"]["peak_rss_mib"], s["resolve_collisions"]["peak_rss_mib"])
        lines.append(f"| {s['n']:,} | {s['encode_items']['shards']} | {s['encode_items']['seconds']:.1f} | "
                     f"{s['resolve_collisions']['seconds']:.1f} | {s['n'] / seconds:,.0f} | {peak:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=SEED_ITEMS)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=TrainConfig.epochs, help="(default: TrainConfig's)")
    parser.add_argument("--max-train-items", type=int, default=TrainConfig.max_train_items)
    parser.add_argument("--sizes", default="100000,1000000", help="extra sizes for the scaling table")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="items per encode_items shard")
    parser.add_argument("--no-dag", action="store_true", help="skip the whole-DAG run")
    parser.add_argument("--interactions", type=int, default=100_000_000,
                        help="synthetic interactions for the collaborative rows (0: skip them)")
    parser.add_argument("--only-collaborative", action="store_true",
                        help="only the collaborative rows (section scale-collaborative), on --n items")
    parser.add_argument("--root", default=str(ROOT / "var" / "bench" / "scale"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args(argv)
    run = provenance()  # before any work: the load average is the start's
    root = Path(args.root)
    if args.interactions:
        print(f"collaborative training on {args.n:,} items, {args.interactions:,} interactions:", flush=True)
        collab = measure_collaborative(root, ensure_snapshot(root, args.n, args.dim), args)
        table = collaborative_markdown(collab, args.dim, args.levels)
        print(table)
        replace_section(Path(args.out), "scale-collaborative", "## Seed scale: training with interactions", table, run)
    if args.only_collaborative:
        return 0

    scaling = []
    for n in [int(s) for s in args.sizes.split(",") if s] + [args.n]:
        snap = ensure_snapshot(root, n, args.dim)
        print(f"pipeline stages on {n:,} items:", flush=True)
        figures = measure_pipeline(root, snap, args)
        scaling.append({"n": n, "encode_items": figures["encode_items"],
                        "resolve_collisions": figures["resolve_collisions"]})
    pipeline = figures
    print("encode throughput (ours vs faiss, same run):", flush=True)
    encode = measure_encode(pipeline["artifact"], pipeline["model_dir"], args.levels, args.repeats)
    print(f"  ours {encode['ours_items_per_s']:,.0f}/s, faiss {encode['faiss_items_per_s']:,.0f}/s, "
          f"ratio {encode['ratio']:.2f}", flush=True)
    dag = None
    if not args.no_dag:
        print("whole DAG via airflow dags test:", flush=True)
        dag = measure_dag(ensure_snapshot(root, args.n, args.dim), args)
        print(f"  {dag['seconds']:.1f}s ok={dag['ok']}", flush=True)
    table = to_markdown(args.n, args.dim, args.levels, pipeline, encode, scaling, dag)
    print()
    print(table)
    replace_section(Path(args.out), "scale", "## Seed scale: 5.7M x 32 on one CPU box", table, run)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
