"""Serving-side benchmark: the serving index at seed scale, and ID churn of aligned retrains.

    python bench/serving.py                    # both parts (make bench-serving)
    python bench/serving.py --part index       # index only: 5,689,519 items, about a minute
    python bench/serving.py --part churn --n 50000 --epochs 2   # churn only, smaller and quicker

Index: semantic IDs for 5,689,519 items (3 x 256 codes drawn with Zipf-like skew, dedup digits assigned as the
pipeline does; no model needed to time the index), written as a version's `serving_index/` the way `publish`
builds it, then loaded in a fresh process (time, peak RSS) that measures lookups/s. Churn: `rqvae synth`
items (seed-like, 200k x 32 by default) through the real stages (train, encode, resolve, publish) with 3 x 256
codes: two retrains of the same data with different seeds, and a retrain after 5% of the items changed, each
aligned to the version before; churn of level-1 codes and of full IDs before / after alignment.

Writes the ``serving`` and ``alignment`` sections of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import provenance, replace_section  # noqa: E402

SEED_ITEMS = 5_689_519
FIRST, SECOND = "2026-01-01", "2026-01-02"
log = logging.getLogger("bench.serving")

# The load / query half runs in a fresh interpreter so load time and peak RSS are its own.
LOAD_CODE = """
import json, resource, sys, time
import numpy as np
sys.path.insert(0, {root!r})
t0 = time.perf_counter()
from rqvae.ids.serving import ServingIndex
imported = time.perf_counter() - t0
folder, mmap = sys.argv[1], sys.argv[2] == "mmap"
def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20
rss0 = rss()
t0 = time.perf_counter(); index = ServingIndex.load(folder, mmap=mmap); load = time.perf_counter() - t0
rss_load = rss()
rng = np.random.default_rng(0)
n = len(index)
items = index.trie.items[rng.integers(0, n, 200_000)]
def rate(fn, count, repeat=3):
    best = min(_timed(fn) for _ in range(repeat))
    return count / best
def _timed(fn):
    t = time.perf_counter(); fn(); return time.perf_counter() - t
codes, dedup, found = index.codes_of(items)
out = {{"n": n, "mmap": mmap, "import_s": imported, "load_s": load, "rss_before_mib": rss0,
       "rss_after_load_mib": rss_load, "array_mib": sum(a.nbytes for a in index.arrays().values()) / 2**20,
       "dense_mib": [b / 2**20 for b in index.dense_bytes()]}}
out["item_to_codes_per_s"] = rate(lambda: index.codes_of(items), len(items))
out["codes_to_item_per_s"] = rate(lambda: index.lookup(codes, dedup), len(items))
full = np.column_stack([codes, dedup])
for depth in range(index.levels + 1):
    prefixes = full[:20_000, :depth]
    out[f"allowed_batch_d{{depth}}_per_s"] = rate(lambda: index.allowed_mask(prefixes), len(prefixes))
single = [tuple(r) for r in full[:2000, :index.levels]]
out["allowed_single_per_s"] = rate(lambda: [index.allowed(p) for p in single], len(single))
layout = index.layout
offsets = layout.offsets[:-1]
prefixes = sorted({{tuple(r[:d]) for r in full[:20_000].tolist() for d in range(index.levels + 1)}})
seqs = [[layout.bos, *(np.asarray(p, np.int64) + offsets[: len(p)]).tolist()] for p in prefixes]
fn = index.prefix_allowed_tokens_fn()
out["hf_fn_cold_per_s"] = rate(lambda: [fn(0, s) for s in seqs], len(seqs), 1)  # every prefix new to the cache
out["hf_fn_per_s"] = rate(lambda: [fn(0, s) for s in seqs], len(seqs))
out["rss_after_queries_mib"] = rss()
print(json.dumps(out))
"""


def skewed_codes(n: int, levels: int, k: int, seed: int):
    """Codes with Zipf-like popularity per level (as real catalogues and `rqvae synth` have), ids 11 digits."""
    import numpy as np

    rng = np.random.default_rng(seed)
    cols = []
    for _ in range(levels):
        p = (1.0 + np.arange(k)) ** -0.7
        cols.append(rng.permutation(k)[rng.choice(k, n, p=p / p.sum())])
    ids = 20_000_000_000 + rng.permutation(n * 3)[:n].astype(np.int64)
    return ids, np.column_stack(cols).astype(np.int32)


def measure_index(work: Path, n: int, levels: int) -> dict[str, Any]:
    from include.versions import Version
    from rqvae.encoding.encode import _write_ids
    from rqvae.ids.serving import write_serving_index
    from rqvae.quantize.metrics import assign_dedup

    ids_path = Version(work).semantic_ids  # the bench folder is laid out as a published version
    if not ids_path.exists():
        log.info("writing %d semantic IDs (%d x 256, skewed) to %s", n, levels, ids_path)
        ids, codes = skewed_codes(n, levels, 256, seed=0)
        _write_ids(ids_path, levels, ids, codes, assign_dedup(ids, codes, [256] * levels))
    folder = Version(work).serving_index
    shutil.rmtree(folder, ignore_errors=True)
    t0 = time.perf_counter()
    info = write_serving_index(ids_path, folder, [256] * levels)
    build = time.perf_counter() - t0
    runs = {}
    for mode in ("read", "mmap"):
        proc = subprocess.run([sys.executable, "-c", LOAD_CODE.format(root=str(ROOT)), str(folder), mode],
                              capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        runs[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        log.info("load (%s): %s", mode, runs[mode])
    return {"n": n, "levels": levels, "sizes": info["sizes"], "bytes": info["bytes"], "build_s": build,
            "parquet_bytes": ids_path.stat().st_size, **{f"{m}": r for m, r in runs.items()}}


def index_markdown(fig: dict[str, Any]) -> str:
    read, mmap = fig["read"], fig["mmap"]
    sizes = fig["sizes"]
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} CPU cores (shared with "
        f"other jobs); {fig['n']:,} items, {fig['levels']} x 256 codes drawn with Zipf-like skew, dedup level size "
        f"{sizes[-1]} (largest bucket). Index written as `publish` writes it, then loaded and queried in a fresh "
        "process. Command: `make bench-serving` (`python bench/serving.py --part index`).",
        "",
        "| figure | value |",
        "|---|---|",
        f"| `serving_index/` on disk | {fig['bytes'] / 2**20:.0f} MiB (semantic_ids.parquet: "
        f"{fig['parquet_bytes'] / 2**20:.0f} MiB) |",
        f"| build from semantic_ids.parquet (in `publish`) | {fig['build_s']:.1f} s |",
        f"| `ServingIndex.load` (memory-mapped, the default) | {mmap['load_s'] * 1000:.1f} ms |",
        f"| `ServingIndex.load(mmap=False)` (every array read into memory) | {read['load_s'] * 1000:.0f} ms |",
        f"| index arrays in memory | {read['array_mib']:.0f} MiB |",
        f"| process RSS (torch, numpy imported), mapped: before load / after load / after all queries | "
        f"{mmap['rss_before_mib']:.0f} / {mmap['rss_after_load_mib']:.0f} / {mmap['rss_after_queries_mib']:.0f} MiB "
        "(mapped pages are shared by every process on the host) |",
        f"| the same with `mmap=False` | {read['rss_before_mib']:.0f} / {read['rss_after_load_mib']:.0f} / "
        f"{read['rss_after_queries_mib']:.0f} MiB |",
        "| dense per-level tables for GPU decoding (`dense()`; code levels, dedup level) | "
        + ", ".join(f"{b:,.0f}" for b in read["dense_mib"]) + " MiB |",
        f"| codes -> item id (`lookup`, batches of 200k) | {mmap['codes_to_item_per_s']:,.0f} /s |",
        f"| item id -> codes (`codes_of`, batches of 200k) | {mmap['item_to_codes_per_s']:,.0f} /s |",
    ]
    for depth in range(fig["levels"] + 1):
        what = "first code" if depth == 0 else ("dedup digit" if depth == fig["levels"] else f"level {depth} code")
        lines.append(f"| allowed next codes, {what} (`allowed_mask`, batches of 20k prefixes) | "
                     f"{mmap[f'allowed_batch_d{depth}_per_s']:,.0f} prefixes/s |")
    lines += [
        f"| allowed next codes, one prefix per call (`allowed`) | {mmap['allowed_single_per_s']:,.0f} /s |",
        f"| `prefix_allowed_tokens_fn` calls (as `generate` makes them; prefix new / cached) | "
        f"{mmap['hf_fn_cold_per_s']:,.0f} / {mmap['hf_fn_per_s']:,.0f} /s |",
        f"| with `mmap=False`: codes -> item / item -> codes | {read['codes_to_item_per_s']:,.0f} / "
        f"{read['item_to_codes_per_s']:,.0f} /s |",
    ]
    return "\n".join(lines)


def measure_churn(work: Path, n: int, epochs: int) -> dict[str, Any]:
    """One first version, then per scenario and alignment method a second version published beside a copy of it."""
    import numpy as np

    from include.versions import version_for
    from rqvae.io.readers import read_embeddings, write_embeddings
    from rqvae.io.synth import synth

    data = read_embeddings(synth(work / "pool.parquet", n + n // 10, dim=32, seed=0))
    ids, x = data.ids[:n], data.vectors[:n]
    rng = np.random.default_rng(1)
    changed = np.sort(rng.choice(n, n // 20, replace=False))
    x_changed = x.copy()
    x_changed[changed] = data.vectors[n : n + len(changed)]  # 5% of the items get another item's embedding
    out: dict[str, Any] = {"n": n, "epochs": epochs, "changed": len(changed), "runs": {}}
    first = work / "first"
    if not version_for(first / "published", FIRST).is_complete():
        shutil.rmtree(first, ignore_errors=True)
        _write_day(first, FIRST, ids, x, write_embeddings)
        t0 = time.perf_counter()
        _stage_run(first, FIRST, 0, epochs, "off")
        log.info("first version: %.1fs", time.perf_counter() - t0)
    for scenario, second_x, seed in (("seeds", x, 1), ("changed5", x_changed, 0)):
        for method in ("permute", "anchor"):
            root = work / f"{scenario}-{method}"
            shutil.rmtree(root, ignore_errors=True)
            shutil.copytree(first / "published" / FIRST, root / "published" / FIRST)
            _write_day(root, SECOND, ids, second_x, write_embeddings)
            t0 = time.perf_counter()
            manifest = _stage_run(root, SECOND, seed, epochs, method)
            log.info("%s / %s: %.1fs, migration %s", scenario, method, time.perf_counter() - t0, manifest["migration"])
            out["runs"][f"{scenario}-{method}"] = {"migration": manifest["migration"],
                                                   "recon_mse": manifest["metrics"]["encode"]["recon_mse"]}
    return out


def _write_day(root: Path, day: str, ids, vectors, write_embeddings) -> None:
    folder = root / "emb" / day
    write_embeddings(folder / "part-0.parquet", ids, vectors)
    (folder / "_SUCCESS").touch()


def _stage_run(root: Path, day: str, seed: int, epochs: int, align: str) -> dict[str, Any]:
    from include.files import read_json
    from include.layout import RunFolder
    from include.params import RunOptions
    from include.stages.encode_items import encode_items
    from include.stages.load_embeddings import load_embeddings
    from include.stages.plan_shards import plan_shards
    from include.stages.publish import publish
    from include.stages.resolve_collisions import resolve_collisions
    from include.stages.train_rqvae import train_rqvae
    from include.stages.validate_codes import validate_codes
    from include.stages.validate_dims import validate_dims
    from rqvae.config import CodeChecks, EncodeOptions, InputChecks, ModelConfig, RetrainPolicy, TrainConfig

    work, publish_root = root / "work" / day, root / "published"
    folder = RunFolder(work)
    loaded = load_embeddings(root / "emb" / day, work)
    validate_dims(loaded["path"], folder.input_report, InputChecks(min_items=1, min_norm=0.0, max_norm=1e6))
    model = ModelConfig(input_dim=loaded["dim"], num_codebooks=3, codebook_size=256)
    run = {"snapshot": day, "snapshot_dir": str(root / "emb" / day), "work_dir": str(work),
           "publish_root": str(publish_root), "interactions_dir": str(root / "no-interactions"),
           "interactions_name": "none"}
    trained = train_rqvae(run, loaded["path"], model, TrainConfig(epochs=epochs, seed=seed, device="cpu"),
                          RetrainPolicy(align_retrain=align))
    options = EncodeOptions()
    shards = [encode_items(run, loaded["path"], trained, shard, "cpu")
              for shard in plan_shards(loaded["n_items"], options, None)]
    encoded = resolve_collisions(run, loaded["path"], trained, shards, options)
    validate_codes(encoded["path"], loaded["path"], folder.codes_report, CodeChecks(),
                   codebook_sizes=encoded["codebook_size"], recon_mse=encoded["recon_mse"])
    result = publish(run, RunOptions(), loaded=loaded, trained=trained, encoded=encoded)
    return read_json(result["manifest"])


def churn_markdown(fig: dict[str, Any]) -> str:
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} CPU cores (shared with other "
        f"jobs); {fig['n']:,} x 32 `rqvae synth` items (seed-like, a smaller set than the 5.7M one), 3 x 256 codes, "
        f"{fig['epochs']} epochs, `dedup` collisions. One first version, then a second one through the real stages "
        "(train_rqvae with `align_retrain`, encode, resolve_collisions, publish). *Before* = the retrained model's "
        "codes as trained, with dedup digits by item id, measured on the alignment sample (here every shared item); "
        "*after* = the published IDs against the first version (migration map). `permute` only relabels codes; "
        "`anchor` refits the codebooks from the previous ones (kept when recon MSE rises <= 2%), then relabels. "
        "Command: `make bench-serving` (`python bench/serving.py --part churn`).",
        "",
        "| second version | align_retrain | used | level-1 churn before -> after | code-tuple churn before -> after | "
        "full-ID churn before -> after | recon MSE (sample) trained -> published model |",
        "|---|---|---|---|---|---|---|",
    ]
    labels = {"seeds": "retrain of the same data, another seed",
              "changed5": f"retrain after {fig['changed']:,} items (5%) changed, same seed"}
    for key, run in fig["runs"].items():
        scenario, method = key.rsplit("-", 1)
        a = run["migration"]["alignment"]
        lines.append(
            f"| {labels[scenario]} | `{method}` | {a['method']} | {a['level1_churn_before']:.1%} -> "
            f"{a['level1_churn_after']:.1%} | {a['codes_churn_before']:.1%} -> {a['codes_churn_after']:.1%} | "
            f"{a['id_churn_before']:.1%} -> **{a['id_churn_after']:.1%}** | {a['recon_mse_trained']:.5f} -> "
            f"{a['recon_mse_aligned']:.5f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["all", "index", "churn"], default="all")
    parser.add_argument("--items", type=int, default=SEED_ITEMS, help="items in the index benchmark")
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--n", type=int, default=200_000, help="items in the churn benchmark")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--root", default=str(ROOT / "var" / "bench" / "serving"))
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args(argv)
    run = provenance()  # before any work: the load average is the start's
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    if args.part in ("all", "index"):
        fig = measure_index(root / f"index-{args.items}", args.items, args.levels)
        table = index_markdown(fig)
        log.info("\n%s", table)
        replace_section(Path(args.out), "serving", "## Serving index at seed scale", table, run)
    if args.part in ("all", "churn"):
        fig = measure_churn(root / f"churn-{args.n}", args.n, args.epochs)
        table = churn_markdown(fig)
        log.info("\n%s", table)
        replace_section(Path(args.out), "alignment", "## ID churn of retrains, before and after alignment", table, run)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
