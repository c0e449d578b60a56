"""Quality benchmark: this project's RQ-VAE against residual k-means (faiss ResidualQuantizer), same data, same
L x K, same run. Prints a table and writes it into docs/benchmarks.md between the ``quality`` markers.

    python bench/quality.py                       # synth 100k x 32 and the shared MovieLens set, 3 x 256
    python bench/quality.py --sets synth --seeds 0,1,2

Ratios compare against the peer measured in the same run: ``mse_ratio`` < 1 and ``unique_delta`` > 0 favour
this project.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import replace_section  # noqa: E402

logger = logging.getLogger("bench.quality")

MOVIELENS = ROOT.parent / "shared" / "data" / "movielens_small" / "embeddings.parquet"


@dataclass
class Row:
    dataset: str
    method: str
    seed: int
    recon_mse: float
    unique_ratio: float
    max_bucket: int
    perplexity: list[float]
    train_s: float
    encode_s: float

    @property
    def wall_s(self) -> float:
        return self.train_s + self.encode_s


def load_dataset(name: str, cache: Path) -> np.ndarray | None:
    from rqvae.io import read_embeddings
    from rqvae.synth import synth

    if name == "synth":
        path = cache / "synth_100k_32.parquet"
        if not path.exists():
            synth(path, n=100_000, dim=32, seed=0)
        return read_embeddings(path).vectors
    if name == "movielens":
        if not MOVIELENS.exists():
            logger.warning("MovieLens set not found at %s; skipped", MOVIELENS)
            return None
        return read_embeddings(MOVIELENS).vectors
    raise SystemExit(f"unknown data set {name!r}; expected synth or movielens")


def run_faiss(name: str, x: np.ndarray, levels: int, k: int, seed: int, beam: int = 1) -> Row:
    import faiss

    from rqvae.metrics import code_metrics

    bits = int(np.log2(k))
    t0 = time.perf_counter()
    rq = faiss.ResidualQuantizer(x.shape[1], levels, bits)
    rq.max_beam_size = beam
    rq.cp.seed = seed
    rq.train(x)
    t1 = time.perf_counter()
    packed = rq.compute_codes(x)
    t2 = time.perf_counter()
    x_hat = rq.decode(packed)
    codes = _unpack(packed, levels, bits)
    m = code_metrics(codes, [k] * levels)
    return Row(name, f"faiss RQ beam {beam}", seed, float(np.mean((x - x_hat) ** 2)), m["unique_ratio"],
               m["max_bucket"], m["perplexity"], t1 - t0, t2 - t1)


def _unpack(packed: np.ndarray, levels: int, bits: int) -> np.ndarray:
    """faiss packs codes little-endian bit by bit; for 8-bit codes that is one byte per level."""
    if bits == 8:
        return packed[:, :levels].astype(np.int64)
    as_int = np.zeros(len(packed), dtype=np.int64)
    for i in range(packed.shape[1]):
        as_int |= packed[:, i].astype(np.int64) << (8 * i)
    return np.stack([(as_int >> (bits * level)) & ((1 << bits) - 1) for level in range(levels)], 1)


def run_ours(name: str, x: np.ndarray, levels: int, k: int, seed: int, epochs: int) -> Row:
    import torch

    from rqvae.config import ModelConfig, TrainConfig
    from rqvae.encode import encode_array
    from rqvae.metrics import code_metrics
    from rqvae.train import train

    t0 = time.perf_counter()
    result = train(x, ModelConfig(input_dim=x.shape[1], num_codebooks=levels, codebook_size=k),
                   TrainConfig(epochs=epochs, seed=seed), show_progress=False)
    t1 = time.perf_counter()
    codes = encode_array(result.model, x)
    t2 = time.perf_counter()
    with torch.no_grad():
        x_hat = result.model.decode_codes(torch.from_numpy(codes).long()).numpy()
    m = code_metrics(codes, [k] * levels)
    return Row(name, "rqvae (this project)", seed, float(np.mean((x - x_hat) ** 2)), m["unique_ratio"],
               m["max_bucket"], m["perplexity"], t1 - t0, t2 - t1)


def summarise(rows: list[Row]) -> list[dict]:
    """Mean over seeds per (dataset, method), with ratios to faiss beam 1 of the same data set."""
    out = []
    for dataset in dict.fromkeys(r.dataset for r in rows):
        peer = [r for r in rows if r.dataset == dataset and r.method.startswith("faiss RQ beam 1")]
        peer_mse = float(np.mean([r.recon_mse for r in peer]))
        peer_unique = float(np.mean([r.unique_ratio for r in peer]))
        peer_wall = float(np.mean([r.wall_s for r in peer]))
        for method in dict.fromkeys(r.method for r in rows if r.dataset == dataset):
            group = [r for r in rows if r.dataset == dataset and r.method == method]
            mse = float(np.mean([r.recon_mse for r in group]))
            unique = float(np.mean([r.unique_ratio for r in group]))
            wall = float(np.mean([r.wall_s for r in group]))
            out.append({
                "dataset": dataset, "method": method, "seeds": len(group), "recon_mse": mse,
                "unique_ratio": unique, "unique_std": float(np.std([r.unique_ratio for r in group])),
                "max_bucket": int(np.mean([r.max_bucket for r in group])),
                "perplexity": [round(float(p), 1) for p in np.mean([r.perplexity for r in group], 0)],
                "train_s": float(np.mean([r.train_s for r in group])),
                "encode_s": float(np.mean([r.encode_s for r in group])),
                "mse_ratio": mse / peer_mse, "unique_delta": unique - peer_unique, "wall_ratio": wall / peer_wall,
            })
    return out


def to_markdown(summary: list[dict], shapes: dict[str, tuple[int, int]], levels: int, k: int, epochs: int) -> str:
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} with {os.cpu_count()} CPU cores, "
        f"{levels} x {k} codes, this project's RQ-VAE trained {epochs} epochs (defaults otherwise). "
        "Ratios are against faiss ResidualQuantizer (beam 1) measured in the same run; `mse ratio` < 1 and "
        "`unique delta` > 0 favour this project. Command: `make bench`.",
        "",
        "| data | method | seeds | recon MSE | unique-ID ratio | max bucket | perplexity per level | train s | "
        "encode s | MSE ratio | unique delta | wall ratio |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        n, d = shapes[s["dataset"]]
        lines.append(
            f"| {s['dataset']} ({n:,} x {d}) | {s['method']} | {s['seeds']} | {s['recon_mse']:.6f} | "
            f"{s['unique_ratio']:.4f} ± {s['unique_std']:.4f} | {s['max_bucket']} | {s['perplexity']} | "
            f"{s['train_s']:.1f} | {s['encode_s']:.2f} | {s['mse_ratio']:.3f} | {s['unique_delta']:+.4f} | "
            f"{s['wall_ratio']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="synth,movielens")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--codebook-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--cache", default=str(ROOT / "var" / "bench"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows: list[Row] = []
    shapes: dict[str, tuple[int, int]] = {}
    for name in args.sets.split(","):
        x = load_dataset(name, cache)
        if x is None:
            continue
        shapes[name] = x.shape
        for seed in seeds:
            for row in (run_faiss(name, x, args.levels, args.codebook_size, seed),
                        run_ours(name, x, args.levels, args.codebook_size, seed, args.epochs)):
                print(f"{row.dataset:10s} {row.method:22s} seed {seed}: mse {row.recon_mse:.6f} "
                      f"unique {row.unique_ratio:.4f} wall {row.wall_s:.1f}s", flush=True)
                rows.append(row)
    table = to_markdown(summarise(rows), shapes, args.levels, args.codebook_size, args.epochs)
    print()
    print(table)
    replace_section(Path(args.out), "quality", "## Quality: RQ-VAE vs residual k-means", table)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
