"""Downstream benchmark: do this project's semantic IDs help a generative retriever more than residual k-means?

On the MovieLens small set, each ID set (3 x 256 by default) gets the same small TIGER-style retriever
(``rqvae.retrieval``), trained per retriever seed on the same leave-one-out split; the table gives Recall@10,
NDCG@10 and the exact next-item NLL with SEs, paired differences against faiss residual k-means, the cold
subset, and the reconstruction MSE / unique-ID ratio of every set. Written into docs/benchmarks.md between the
``downstream`` markers.

    python bench/downstream.py                       # rqvae, collab, rqkmeans, faiss, random; seeds 0,1,2
    python bench/downstream.py --sets faiss,random --seeds 0 --epochs 2     # a quick look

Adding an ID set is one entry in ``ID_SETS``: a builder gets :class:`BenchInputs`; one that learns from
interactions must use ``inputs.train_interactions`` (the split's training part, never a validation or test item).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import replace_section  # noqa: E402
from rqvae.io.interactions import Interactions  # noqa: E402
from rqvae.retrieval import IdTable, RetrievalConfig, RetrievalReport  # noqa: E402

logger = logging.getLogger("bench.downstream")

DATA = ROOT.parent / "shared" / "data" / "movielens_small"
BASELINE = "faiss"
MANY_SE = 3.0  # a gap of this many SEs is taken as clearly resolved
SECTIONS = {  # docs/benchmarks.md sections this script writes (marker key -> title)
    "downstream": "## Downstream: next-item retrieval with each ID set",
    "downstream-collaborative": "## Downstream: IDs trained with interactions",
}


@dataclass(frozen=True)
class BenchInputs:
    """What an ID-set builder may use."""

    item_ids: np.ndarray  # int64 [N]
    vectors: np.ndarray  # float32 [N, D], rows aligned with item_ids
    train_interactions: Interactions  # only the split's training part
    levels: int
    codebook_size: int
    seed: int


Built = tuple[IdTable, dict[str, float]]  # the IDs, and recon_mse / unique_ratio (nan when meaningless)


@dataclass(frozen=True)
class IdSetSpec:
    label: str
    build: Callable[[BenchInputs], Built]


def _ours(inputs: BenchInputs, method: str) -> Built:
    """The project's model with its defaults at this L x K (5 epochs, as bench/quality.py trains it)."""
    from rqvae.config import ModelConfig, TrainConfig
    from rqvae.retrieval import model_ids

    cfg = ModelConfig(input_dim=inputs.vectors.shape[1], num_codebooks=inputs.levels,
                      codebook_size=inputs.codebook_size, method=method)
    return model_ids(inputs.item_ids, inputs.vectors, cfg, TrainConfig(epochs=5, seed=inputs.seed))


def _collaborative(inputs: BenchInputs) -> Built:
    """The project's model trained with interactions (rqvae.training.collaborative, default weight): the split's
    training part only, so no validation or test event reaches the IDs it is judged on."""
    import torch

    from rqvae.config import ModelConfig, TrainConfig
    from rqvae.encoding.encode import encode_array
    from rqvae.ids.collisions import resolve_collisions
    from rqvae.modes import CollisionMode
    from rqvae.quantize.metrics import code_metrics
    from rqvae.training.collaborative import DEFAULT_WEIGHT
    from rqvae.training.loop import train

    cfg = ModelConfig(input_dim=inputs.vectors.shape[1], num_codebooks=inputs.levels,
                      codebook_size=inputs.codebook_size)
    tcfg = TrainConfig(epochs=5, seed=inputs.seed, collaborative_weight=DEFAULT_WEIGHT)
    model = train(inputs.vectors, cfg, tcfg, show_progress=False, interactions=inputs.train_interactions,
                  item_ids=inputs.item_ids).model
    codes = encode_array(model, inputs.vectors)
    with torch.no_grad():
        x_hat = model.decode_codes(torch.from_numpy(codes).long().to(model.device)).cpu().numpy()
    sizes = [inputs.codebook_size] * inputs.levels
    dedup = resolve_collisions(inputs.item_ids, codes, sizes, CollisionMode.DEDUP).dedup
    table = IdTable(inputs.item_ids, codes, dedup, tuple(sizes))
    return table, {"recon_mse": float(np.mean((inputs.vectors - x_hat) ** 2)),
                   "unique_ratio": code_metrics(codes, sizes)["unique_ratio"]}


def _faiss(inputs: BenchInputs) -> Built:
    from bench.quality import run_faiss
    from rqvae.ids.collisions import resolve_collisions
    from rqvae.modes import CollisionMode

    row = run_faiss("movielens", inputs.vectors, inputs.levels, inputs.codebook_size, inputs.seed)
    sizes = [inputs.codebook_size] * inputs.levels
    codes = row.codes.astype(np.int32)
    dedup = resolve_collisions(inputs.item_ids, codes, sizes, CollisionMode.DEDUP).dedup
    table = IdTable(inputs.item_ids, codes, dedup, tuple(sizes))
    return table, {"recon_mse": row.recon_mse, "unique_ratio": row.unique_ratio}


def _random(inputs: BenchInputs) -> Built:
    from rqvae.quantize.metrics import code_metrics
    from rqvae.retrieval import random_ids

    sizes = [inputs.codebook_size] * inputs.levels
    table = random_ids(inputs.item_ids, sizes, inputs.seed)
    return table, {"recon_mse": float("nan"), "unique_ratio": code_metrics(table.codes, sizes)["unique_ratio"]}


ID_SETS: dict[str, IdSetSpec] = {
    "rqvae": IdSetSpec("rqvae (this project)", lambda inputs: _ours(inputs, "rqvae")),
    "collab": IdSetSpec("rqvae + interactions (this project)", _collaborative),
    "rqkmeans": IdSetSpec("rqkmeans (this project)", lambda inputs: _ours(inputs, "rqkmeans")),
    "faiss": IdSetSpec("faiss residual k-means", _faiss),
    "random": IdSetSpec("random", _random),
}


def _fmt(mean: float, se: float, signed: bool = False, digits: int = 4) -> str:
    return f"{mean:{'+' if signed else ''}.{digits}f} ± {se:.{digits}f}"


def to_markdown(report: RetrievalReport, labels: dict[str, str], quality: dict[str, dict[str, float]],
                build_s: dict[str, float], cfg: RetrievalConfig, args: argparse.Namespace, wall_s: float) -> str:
    from rqvae.model import resolve_device

    info = report.info
    base = BASELINE if BASELINE in report.names else report.names[0]
    metrics = ("recall@10", "ndcg@10", "nll")
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.machine()} with {os.cpu_count()} CPU cores "
        f"(retriever on {resolve_device(cfg.device).type}), {wall_s / 60:.1f} min for this call (a run reused from "
        f"the --cache counts only its loading). MovieLens small: "
        f"{info['n_items']:,} items x 384, {info['n_interactions']:,} ratings, {len(report.users)} users; "
        f"{args.levels} x {args.codebook_size} codes, ID sets built with seed {args.id_seed}. Leave-one-out by time "
        f"(last item = test, second last = validation, the rest = training). Retriever: decoder-only transformer "
        f"(d_model {cfg.d_model}, {cfg.layers} layers, {cfg.heads} heads), history {cfg.history}, "
        f"{cfg.epochs} epochs (the one with the best validation NLL kept), beam {cfg.beam} constrained to real "
        f"IDs, seeds {report.seeds}. Each user's metric is averaged over seeds, then mean ± SE over users; "
        f"Δ = paired difference to {labels[base]} on the same users (± its SE). NLL is in nats per item, exact "
        f"over valid IDs (lower is better). Command: `make bench-downstream` "
        f"(`python bench/downstream.py --sets {','.join(report.names)} --seeds {','.join(map(str, report.seeds))} "
        f"--epochs {cfg.epochs}{'' if args.section == 'downstream' else ' --section ' + args.section}`).",
        "",
        "| ID set | recon MSE | unique-ID ratio | IDs s | retriever s/seed | " + " | ".join(metrics) + " | "
        + " | ".join(f"Δ{m}" for m in metrics) + " |",
        "|---|---|---|---|---|" + "---|" * (2 * len(metrics)),
    ]
    for name in report.names:
        q = quality[name]
        mse = "-" if np.isnan(q["recon_mse"]) else f"{q['recon_mse']:.6f}"
        seconds = np.mean([r["seconds"] for r in report.runs[name]])
        cells = [_fmt(s.mean, s.se) for s in (report.summary(name, m) for m in metrics)]
        diffs = ["-"] * len(metrics) if name == base else [
            _fmt(d.mean, d.se, True) for d in (report.paired(name, base, m) for m in metrics)]
        lines.append(f"| {labels[name]} | {mse} | {q['unique_ratio']:.4f} | {build_s[name]:.1f} | {seconds:.0f} | "
                     + " | ".join(cells + diffs) + " |")
    n_cold = int(report.cold.sum())
    lines += ["", f"Cold subset: the {n_cold} test users whose true next item has fewer than "
              f"{cfg.cold_threshold} training interactions.", "",
              "| ID set | " + " | ".join(metrics) + " | " + " | ".join(f"Δ{m}" for m in metrics) + " |",
              "|---|" + "---|" * (2 * len(metrics))]
    for name in report.names:
        cells = [_fmt(s.mean, s.se) for s in (report.summary(name, m, "cold") for m in metrics)]
        diffs = ["-"] * len(metrics) if name == base else [
            _fmt(d.mean, d.se, True) for d in (report.paired(name, base, m, "cold") for m in metrics)]
        lines.append(f"| {labels[name]} | " + " | ".join(cells + diffs) + " |")
    lines += ["", instrument_check(report, labels, base)]
    return "\n".join(lines)


def instrument_check(report: RetrievalReport, labels: dict[str, str], base: str) -> str:
    """Whether random IDs and residual k-means are many SEs apart: a metric that cannot separate those cannot
    resolve the smaller gaps between real ID sets either."""
    if "random" not in report.names or base == "random":
        return "Instrument check not run (needs the random ID set and a residual k-means baseline)."
    parts, resolved = [], []
    for metric in ("nll", "recall@10", "ndcg@10"):
        d = report.paired("random", base, metric)
        z = abs(d.mean) / d.se if d.se > 0 else float("inf")
        parts.append(f"{metric} {d.mean:+.4f} ± {d.se:.4f} ({z:.1f} SE)")
        if z >= MANY_SE:
            resolved.append(metric)
    if not resolved:
        verdict = ("not many SEs apart on any metric, so this budget cannot resolve the gaps between the other ID "
                   "sets; add seeds or epochs before reading them")
    else:
        verdict = (f"many (>= {MANY_SE:.0f}) SEs apart on {', '.join(resolved)}, so the instrument resolves ID quality "
                   f"there; read the smaller gaps above on {'that metric' if len(resolved) == 1 else 'those metrics'}"
                   f" and against their own SEs")
        if len(resolved) < 3:
            verdict += " (the others are too coarse at this number of users to call smaller gaps)"
    return f"Instrument check: random IDs vs {labels[base]}: {', '.join(parts)}: {verdict}."


def _plain(quality: dict[str, dict[str, float]]) -> dict[str, dict[str, float | None]]:
    """NaN (no reconstruction for random IDs) as null, so the JSON stays standard."""
    return {n: {k: None if np.isnan(v) else float(v) for k, v in q.items()} for n, q in quality.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default=",".join(ID_SETS), help=f"of {list(ID_SETS)}")
    parser.add_argument("--seeds", default="0,1,2", help="retriever seeds")
    parser.add_argument("--id-seed", type=int, default=0, help="seed of the ID sets' own training")
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--codebook-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=RetrievalConfig.epochs)
    parser.add_argument("--max-users", type=int, default=0)
    parser.add_argument("--data", default=str(DATA), help="folder with embeddings.parquet and ratings.parquet")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--section", default="downstream", choices=list(SECTIONS),
                        help="section of --out to write (downstream-collaborative: the rows of docs/collaborative.md)")
    parser.add_argument("--json", default=str(ROOT / "var" / "bench" / "downstream.json"))
    parser.add_argument("--cache", default=str(ROOT / "var" / "bench" / "downstream-runs"),
                        help="finished retriever runs, reused when IDs, split, config and seed match ('' = off): "
                        "run disjoint --sets in parallel processes, then all sets once to write the table")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from rqvae.io.interactions import read_interactions
    from rqvae.io.readers import read_embeddings
    from rqvae.retrieval import evaluate_id_sets, prepare_split
    from rqvae.retrieval.cache import RunCache

    data = Path(args.data)
    if not (data / "embeddings.parquet").exists():
        raise SystemExit(f"MovieLens set not found in {data}")
    t0 = time.perf_counter()
    emb = read_embeddings(data / "embeddings.parquet")
    interactions = read_interactions(data / "ratings.parquet")
    cfg = RetrievalConfig(epochs=args.epochs, max_users=args.max_users)
    prepared = prepare_split(interactions, emb.ids, cfg.min_interactions)
    inputs = BenchInputs(emb.ids, emb.vectors, prepared.split.train_interactions(), args.levels,
                         args.codebook_size, args.id_seed)
    names = [n for n in args.sets.split(",") if n]
    unknown = sorted(set(names) - set(ID_SETS))
    if unknown:
        raise SystemExit(f"unknown ID sets {unknown}; expected some of {list(ID_SETS)}")
    tables, quality, build_s = {}, {}, {}
    for name in names:
        t = time.perf_counter()
        tables[name], quality[name] = ID_SETS[name].build(inputs)
        build_s[name] = time.perf_counter() - t
        if len(tables[name]) != len(emb.ids):  # a smaller set would change everyone's split
            raise SystemExit(f"ID set {name!r} covers {len(tables[name])} of {len(emb.ids)} items")
        print(f"{name:10s} IDs in {build_s[name]:.1f}s: {quality[name]}", flush=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    report = evaluate_id_sets(tables, interactions, cfg, seeds, RunCache(args.cache) if args.cache else None)
    wall = time.perf_counter() - t0
    labels = {n: ID_SETS[n].label for n in names}
    table = to_markdown(report, labels, quality, build_s, cfg, args, wall)
    print()
    print(table)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({**report.to_dict(BASELINE if BASELINE in names else None),
                                           "quality": _plain(quality), "build_seconds": build_s,
                                           "wall_seconds": wall}, indent=1, default=str))
    replace_section(Path(args.out), args.section, SECTIONS[args.section], table)
    print(f"\nwrote {args.out} and {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
