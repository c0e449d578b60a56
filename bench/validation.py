"""Validation stages at seed scale: `validate_dims` and `validate_codes` against GX on the full per-row frames.

Each stage runs in a fresh process (imports included, as an Airflow task pays them) on a seed-sized artifact;
the peer, in the same run, is the same GX rules on the whole per-row frame (the stages before issue 16).
Reports wall seconds and peak RSS; writes the table into docs/benchmarks.md between the ``validation`` markers.

    python bench/validation.py                    # 5,689,519 x 32, 4 x 256
    python bench/validation.py --items 500000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cotenancy import clean_env, load_average, timed  # noqa: E402
from bench.report import provenance, replace_section  # noqa: E402

PREPARE = """
import sys
import numpy as np
from rqvae.io.idfile import SemanticIdWriter
from rqvae.io.readers import read_embeddings
from rqvae.quantize.metrics import assign_dedup
emb, out, levels, k = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ids = read_embeddings(emb).ids
rng = np.random.default_rng(0)
codes = rng.integers(0, k, size=(len(ids), levels), dtype=np.int32)
with SemanticIdWriter(out, levels) as writer:
    writer.write(ids, codes, assign_dedup(ids, codes, [k] * levels))
"""

STAGE = """
import json, resource, sys, time
t0 = time.perf_counter()
sys.path.insert(0, {root!r})
stage, way, emb, ids, levels, k, report = sys.argv[1:8]
levels, k = int(levels), int(k)
if way == "stage":
    from include.stages.validate_codes import validate_codes
    from include.stages.validate_dims import validate_dims
    from rqvae.config import CodeChecks, InputChecks
    if stage == "dims":
        out = validate_dims(emb, report, InputChecks(min_items=1, min_norm=0.0, max_norm=1e6))
    else:
        out = validate_codes(ids, emb, report, CodeChecks(min_unique_ratio=0.0), codebook_sizes=[k] * levels,
                             recon_mse=0.01)
else:  # the peer: the same rules on the whole per-row frame
    import pyarrow.parquet as pq
from include.gx_suites import ID_COLUMN, ROW_COLUMN, Batch, run_suite
    from include.gx_rules import codes_expectations, input_expectations
    from include.stages.validate_codes import joined_frame
    from include.stages.validate_dims import row_stats
    from rqvae.io.idfile import read_semantic_ids
    if stage == "dims":
        stats = row_stats(emb)
        dim = int(stats["dim"].mode().iloc[0])
        rules = input_expectations(dim, 1, 0.0, 1e6, 1e3)
        out = run_suite("input", [Batch("rows", stats, rules, index_columns=[ID_COLUMN, ROW_COLUMN])]).success
    else:
        input_ids = pq.read_table(emb, columns=[ID_COLUMN]).column(ID_COLUMN).to_numpy()
        i, c, d = read_semantic_ids(ids)
        frame = joined_frame(input_ids, i, c, d)
        rules = codes_expectations([k] * levels, 0.0, 0.5)
        out = run_suite("codes", [Batch("rows", frame, rules, index_columns=[ID_COLUMN])]).success
usage = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({{"seconds": time.perf_counter() - t0, "cpu": usage.ru_utime + usage.ru_stime,
                  "rss_mib": usage.ru_maxrss / 1024, "ok": bool(out)}}))
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=5_689_519)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--codebook-size", type=int, default=256)
    parser.add_argument("--skip-peer", action="store_true", help="only the stages (the peer takes minutes)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--cache", default=str(ROOT / "var" / "bench"))
    args = parser.parse_args(argv)
    run = provenance()  # before any work: the load average is the start's
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    env = clean_env()
    emb = cache / f"synth_{args.items}_{args.dim}.parquet"
    if not emb.exists():
        timed([sys.executable, "-m", "rqvae.cli", "-q", "synth", "--n", str(args.items), "--dim", str(args.dim),
             "--out", str(emb)], env)
    ids = cache / f"validation_ids_{args.items}_{args.levels}x{args.codebook_size}.parquet"
    if not ids.exists():
        timed([sys.executable, "-c", PREPARE, str(emb), str(ids), str(args.levels), str(args.codebook_size)], env)
    load = load_average()
    rows = []
    for stage in ("dims", "codes"):
        for way in ("stage",) if args.skip_peer else ("stage", "full frame"):
            wall, stdout = timed([sys.executable, "-c", STAGE.format(root=str(ROOT)), stage,
                                way.replace(" ", "_") if way != "stage" else way, str(emb), str(ids),
                                str(args.levels), str(args.codebook_size), str(cache / f"report_{stage}.json")], env)
            result = json.loads(stdout.strip().splitlines()[-1])
            rows.append({"stage": f"validate_{stage}", "way": way, "wall": wall, **result})
            print(f"validate_{stage} ({way}): {wall:.1f}s, cpu {result['cpu']:.1f}s, peak RSS "
                  f"{result['rss_mib']:.0f} MiB", flush=True)
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} CPU cores; "
        f"`python bench/validation.py --items {args.items}`. {args.items:,} synthetic items x {args.dim} "
        f"(Parquet, fixed-size lists), {args.levels} x {args.codebook_size} random codes. Each stage in a fresh "
        "process, imports included (GX's import alone is several seconds). `full frame`: the same GX rules on "
        "the whole per-row frame, as the stages ran before (the peer, same run). Load average before: "
        f"{load}; after: {load_average()}. CPU seconds (user + system of the process) are less sensitive to "
        "other jobs on the box than wall time.",
        "",
        "| stage | how | wall (s) | CPU (s) | peak RSS (MiB) |",
        "|---|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['way']} | {r['wall']:.1f} | {r['cpu']:.1f} | {r['rss_mib']:.0f} |")
    if not args.skip_peer:
        for stage in ("validate_dims", "validate_codes"):
            found = {r["way"]: r for r in rows if r["stage"] == stage}
            ours, peer = found["stage"], found["full frame"]
            lines.append(f"\n{stage}: {peer['wall'] / ours['wall']:.1f}x less wall time, "
                         f"{peer['cpu'] / ours['cpu']:.1f}x less CPU than GX on the full frame.")
    table = "\n".join(lines)
    print(table)
    replace_section(Path(args.out), "validation", "## Validation stages at seed scale", table, run)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
