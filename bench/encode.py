"""Whole-process encoding benchmark: `rqvae encode` as a user runs it (Parquet in, Parquet out) against faiss.

Two peers, measured in the same run on the same items with faiss's ResidualQuantizer (beam 1, the same L x K,
trained beforehand and read from disk): a whole faiss process as a user would write it (read the Parquet with
pyarrow, ``compute_codes``, write the codes as Parquet: process against process, the fair pair) and
``compute_codes`` alone on items already in memory (the search against the search). The
breakdown says where our wall time goes: start-up (interpreter + imports + model), reading and converting the
input, the code search with every item's reconstruction error, collision resolution (dedup), writing, and the
rest (metrics, exit). Writes the table into docs/benchmarks.md between the ``encode`` markers.

    python bench/encode.py                    # the seed scale: 5,689,519 items x 32, 4 x 256
    python bench/encode.py --items 500000 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cotenancy import clean_env, load_average, timed  # noqa: E402
from bench.report import provenance, replace_section  # noqa: E402

MODEL_CODE = """
import sys
from rqvae import threads
threads.configure()
import numpy as np, torch
from rqvae.io.checkpoint import save_model
from rqvae.io.readers import read_embeddings
from rqvae.model import RQVAE
data, out, levels, k = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
x = read_embeddings(data).vectors[:50_000]
torch.manual_seed(0)
model = RQVAE(x.shape[1], [64], x.shape[1], levels, k, kmeans_method="kmeans", kmeans_iters=5, device="cpu")
model.initialize(torch.from_numpy(x), torch.Generator().manual_seed(0))
save_model(model, out)
"""

FAISS_CODE = """
import json, sys, time
import faiss, numpy as np
from rqvae.io.readers import read_embeddings
data, levels, k, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
x = np.ascontiguousarray(read_embeddings(data).vectors)
rq = faiss.ResidualQuantizer(x.shape[1], levels, int(np.log2(k)))
rq.max_beam_size = 1
rq.cp.seed = 0
rq.train(x[:50_000].copy())
times = []
for _ in range(repeats):
    t = time.perf_counter(); rq.compute_codes(x); times.append(time.perf_counter() - t)
print(json.dumps({"n": len(x), "times": times, "threads": faiss.omp_get_max_threads()}))
"""

# The faiss user's whole process: the trained quantizer from disk, the Parquet in, the codes out as Parquet.
FAISS_PROCESS_CODE = """
import sys
import faiss, numpy as np, pyarrow as pa, pyarrow.parquet as pq
index_path, data, out = sys.argv[1], sys.argv[2], sys.argv[3]
faiss.omp_set_num_threads(faiss.omp_get_max_threads())
index = faiss.read_index(index_path)
rq = faiss.downcast_index(index).rq
rq.max_beam_size = 1
table = pq.read_table(data, columns=["item_id", "embedding"])
column = table.column("embedding").combine_chunks()
x = np.ascontiguousarray(column.flatten().to_numpy(zero_copy_only=False).reshape(len(table), -1), np.float32)
packed = rq.compute_codes(x)
codes = np.zeros((len(x), rq.M), np.int32)
for level in range(rq.M):  # unpack the bit-packed codes, nbits per level
    bits = int(rq.nbits.at(level))
    offset = sum(int(rq.nbits.at(i)) for i in range(level))
    value = np.zeros(len(x), np.int64)
    for b in range(bits):
        byte, shift = divmod(offset + b, 8)
        value |= ((packed[:, byte] >> shift) & 1).astype(np.int64) << b
    codes[:, level] = value
pq.write_table(pa.table({"item_id": table.column("item_id"),
                         "codes": pa.FixedSizeListArray.from_arrays(pa.array(codes.reshape(-1)), rq.M)}), out)
"""

FAISS_INDEX_CODE = """
import sys
import faiss, numpy as np
from rqvae.io.readers import read_embeddings
data, out, levels, k = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
x = np.ascontiguousarray(read_embeddings(data).vectors[:50_000])
index = faiss.IndexResidualQuantizer(x.shape[1], levels, int(np.log2(k)))
index.rq.max_beam_size = 1
index.rq.cp.seed = 0
index.train(x)
faiss.write_index(index, out)
"""

# The same CLI call, with a clock around the imports: where the start-up time goes (the wall time of the
# process minus what the CLI itself reports is the interpreter's own start and exit).
PROFILED_CODE = """
import json, sys, time
t0 = time.perf_counter()
from rqvae import threads
threads.configure()  # what rqvae.cli.main does first; here before the imports, which load torch
import rqvae.io.checkpoint, rqvae.cli, rqvae.encoding.encode
t1 = time.perf_counter()
code = rqvae.cli.main(sys.argv[1:])
print(json.dumps({"imports": t1 - t0, "main": time.perf_counter() - t1}))
sys.exit(code)
"""


def prepare(cache: Path, args: argparse.Namespace, env: dict[str, str]) -> tuple[Path, Path]:
    data = cache / f"synth_{args.items}_{args.dim}.parquet"
    if not data.exists():
        timed([sys.executable, "-m", "rqvae.cli", "-q", "synth", "--n", str(args.items), "--dim", str(args.dim),
               "--out", str(data)], env)
    model = cache / f"encode_model_{args.dim}_{args.levels}x{args.codebook_size}"
    if not (model / "config.json").exists():
        timed([sys.executable, "-c", MODEL_CODE, str(data), str(model), str(args.levels), str(args.codebook_size)],
              env)
    return data, model


def measure(data: Path, model: Path, out: Path, args: argparse.Namespace, env: dict[str, str]) -> dict:
    load = load_average()
    cli = ["-q", "encode", "--model", str(model), "--embeddings", str(data), "--out", str(out)]
    walls = [timed([sys.executable, "-m", "rqvae.cli", *cli], env)[0] for _ in range(args.repeats)]
    wall, stdout = timed([sys.executable, "-c", PROFILED_CODE, *cli], env)
    result, clock = (json.loads(line) for line in stdout.strip().splitlines()[-2:])
    _, stdout = timed([sys.executable, "-c", FAISS_CODE, str(data), str(args.levels), str(args.codebook_size),
                       str(args.repeats)], env)
    faiss = json.loads(stdout.strip().splitlines()[-1])
    index = out.with_name(f"faiss_rq_{args.levels}x{args.codebook_size}.index")
    timed([sys.executable, "-c", FAISS_INDEX_CODE, str(data), str(index), str(args.levels), str(args.codebook_size)],
          env)
    faiss_walls = [timed([sys.executable, "-c", FAISS_PROCESS_CODE, str(index), str(data),
                          str(out.with_name("faiss_codes.parquet"))], env)[0] for _ in range(args.repeats)]
    n = result["n_items"]
    read = result["read_seconds"]
    search = result["encode_seconds"] - read
    parts = {"interpreter start and exit": wall - clock["imports"] - clock["main"], "imports (torch ...)":
             clock["imports"], "read + convert Parquet": read, "code search + recon errors": search,
             "collisions (dedup)": result["resolve_seconds"], "write Parquet": result["write_seconds"]}
    parts["other (model load, duplicate check, metrics)"] = max(0.0, wall - sum(parts.values()))
    faiss_s = statistics.median(faiss["times"])
    best = min(walls)
    return {"n": n, "wall": best, "walls": walls, "rate": n / best, "search_rate": n / search,
            "faiss_rate": faiss["n"] / faiss_s, "faiss_process_rate": n / min(faiss_walls),
            "faiss_walls": faiss_walls, "parts": parts, "parts_wall": wall, "load": load,
            "load_after": load_average(), "faiss_threads": faiss["threads"]}


def to_markdown(m: dict, args: argparse.Namespace) -> str:
    ratio = m["rate"] / m["faiss_rate"]
    process = m["rate"] / m["faiss_process_rate"]
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()}, {os.cpu_count()} CPU cores; "
        f"`python bench/encode.py --items {args.items} --repeats {args.repeats}` (also run by `make bench`). "
        f"{m['n']:,} synthetic items x {args.dim}, {args.levels} x {args.codebook_size}. Ours: the wall time of "
        "`rqvae -q encode --model M --embeddings in.parquet --out ids.parquet` in a fresh process (best of the "
        "repeats). Peers in the same run, faiss ResidualQuantizer (beam 1, trained beforehand, "
        f"{m['faiss_threads']} OpenMP threads): a whole process as a faiss user writes it (the quantizer read from "
        "disk, the Parquet read with pyarrow, `compute_codes`, the codes written as Parquet; best of the repeats), "
        f"and `compute_codes` alone on the items already in memory. Load average before / after: {m['load']} / "
        f"{m['load_after']}.",
        "",
        "| | items/s | vs faiss whole process | vs faiss in memory |",
        "|---|---:|---:|---:|",
        f"| `rqvae encode`, whole process | {m['rate'] / 1e6:.3f}M | {process:.2f}x | {ratio:.2f}x |",
        f"| its code search + recon errors alone | {m['search_rate'] / 1e6:.3f}M | - | "
        f"{m['search_rate'] / m['faiss_rate']:.2f}x |",
        f"| faiss, whole process | {m['faiss_process_rate'] / 1e6:.3f}M | 1.00x | - |",
        f"| faiss `compute_codes`, in memory | {m['faiss_rate'] / 1e6:.3f}M | - | 1.00x |",
        "",
        f"`rqvae encode` wall times: {', '.join(f'{w:.2f} s' for w in m['walls'])}; faiss whole process: "
        f"{', '.join(f'{w:.2f} s' for w in m['faiss_walls'])}. Where the time goes, from one "
        f"more run of the same command with clocks around its imports ({m['parts_wall']:.2f} s):",
        "",
        "| part | seconds | share |",
        "|---|---:|---:|",
    ]
    for name, seconds in m["parts"].items():
        lines.append(f"| {name} | {seconds:.2f} | {seconds / m['parts_wall']:.0%} |")
    lines += ["", "Targets (issue 28): `rqvae encode` >= 3x a whole faiss process (process against process) at the "
              "seed scale; the code search >= 4x faiss's in-memory `compute_codes` (issue 16)."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=5_689_519, help="default: the seed scale")
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--codebook-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--cache", default=str(ROOT / "var" / "bench"))
    args = parser.parse_args(argv)
    run = provenance()  # before any work: the load average is the start's
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    env = clean_env()
    data, model = prepare(cache, args, env)
    m = measure(data, model, cache / "encode_ids.parquet", args, env)
    table = to_markdown(m, args)
    print(table)
    replace_section(Path(args.out), "encode", "## Whole-process encoding: `rqvae encode` vs faiss", table, run)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
