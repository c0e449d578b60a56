"""Downstream benchmark: are this project's semantic IDs better at their job than residual k-means?

On the MovieLens small set every ID set (3 x 256 by default) is built with several ID seeds and judged by the same
small TIGER-style retriever (``rqvae.retrieval``) with several retriever seeds, under both protocols (temporal:
each user's last 20% of events, the power to resolve small gaps; leave-one-out: TIGER's protocol), in one run:

- ``random``: the floor; ``faiss``: faiss residual k-means on content (the strongest cheap peer, bench only);
- ``rqkmeans`` and ``rqvae``: the product's content-only methods;
- ``rqvae_old``: ``rqvae`` with the training budget before issue 28 (five passes, no refit);
- ``collab``: the product's collaborative IDs (content + the training part of the ratings);
- ``oracle``: residual k-means on behaviour factors of ALL ratings, test events included: a leaky upper bound,
  never a product option, that says how much room behaviour leaves.

Every ID set that learns from interactions gets only the temporal split's training part (what the pipeline's
``train_rqvae`` holds out, which includes leave-one-out's last two events). Each metric is the mean over test
events of the per-event value averaged over runs (ID seed x retriever seed); standard errors are clustered by user
and include the spread between runs; differences are paired against faiss. Gains are also given as a share of
the headroom (oracle - faiss). Written into docs/benchmarks.md and docs/collaborative.md (``downstream`` markers).

    python bench/downstream.py                                         # everything: ~hours on 2 cores
    python bench/downstream.py --sets faiss,random --id-seeds 0 --seeds 0 --epochs 2 --protocols temporal

Finished retriever runs are cached (``--cache``), so the benchmark can run in pieces (several processes on
disjoint ``--sets``, then all sets once to write the tables).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.report import Provenance, provenance, replace_section  # noqa: E402
from rqvae.io.interactions import Interactions  # noqa: E402
from rqvae.retrieval import IdTable, RetrievalConfig, RetrievalReport  # noqa: E402

logger = logging.getLogger("bench.downstream")

DATA = ROOT.parent / "shared" / "data" / "movielens_small"
BASELINE, ORACLE = "faiss", "oracle"
MANY_SE = 3.0  # a gap of this many SEs is taken as clearly resolved
SECTION = ("downstream", "## Downstream: next-item retrieval with each ID set")
METRICS = ("recall@10", "ndcg@10", "nll")


@dataclass(frozen=True)
class BenchInputs:
    """What an ID-set builder may use. ``all_interactions`` is for the leaky oracle only."""

    item_ids: np.ndarray  # int64 [N]
    vectors: np.ndarray  # float32 [N, D], rows aligned with item_ids
    train_interactions: Interactions  # the temporal split's training part: all a tokenizer may learn from
    all_interactions: Interactions  # every rating, test events included (the oracle's leak)
    levels: int
    codebook_size: int
    seed: int


Built = tuple[IdTable, dict[str, float]]  # the IDs, and recon_mse / unique_ratio (nan when meaningless)


@dataclass(frozen=True)
class IdSetSpec:
    label: str
    build: Callable[[BenchInputs], Built]


def _dedup(inputs: BenchInputs, codes: np.ndarray, recon_mse: float) -> Built:
    from rqvae.ids.collisions import resolve_collisions
    from rqvae.modes import CollisionMode
    from rqvae.quantize.metrics import code_metrics

    sizes = [inputs.codebook_size] * inputs.levels
    codes = np.asarray(codes, np.int32)
    dedup = resolve_collisions(inputs.item_ids, codes, sizes, CollisionMode.DEDUP).dedup
    table = IdTable(inputs.item_ids, codes, dedup, tuple(sizes))
    return table, {"recon_mse": recon_mse, "unique_ratio": code_metrics(codes, sizes)["unique_ratio"]}


# The training budget before issue 28 (five passes of 1,024-item steps, no codebook refit): the new default must
# not be worse downstream than this by more than 1 paired SE.
OLD_BUDGET = {"epochs": 5, "batch_size": 1024, "refit_codebooks": False}


def _ours(inputs: BenchInputs, method: str, budget: dict | None = None) -> Built:
    """The project's content-only model with its defaults at this L x K (``budget`` overrides the training's)."""
    from rqvae.config import ModelConfig, TrainConfig
    from rqvae.retrieval import model_ids

    cfg = ModelConfig(input_dim=inputs.vectors.shape[1], num_codebooks=inputs.levels,
                      codebook_size=inputs.codebook_size, method=method)
    return model_ids(inputs.item_ids, inputs.vectors, cfg, TrainConfig(seed=inputs.seed, **(budget or {})))


def _collaborative(inputs: BenchInputs) -> Built:
    """The product's collaborative IDs: content plus the training part of the ratings, as train_rqvae makes them."""
    from rqvae.config import ModelConfig, TrainConfig
    from rqvae.retrieval import model_ids

    cfg = ModelConfig(input_dim=inputs.vectors.shape[1], num_codebooks=inputs.levels,
                      codebook_size=inputs.codebook_size)
    tcfg = TrainConfig(seed=inputs.seed)  # collaborative_weight: the default
    return model_ids(inputs.item_ids, inputs.vectors, cfg, tcfg, interactions=inputs.train_interactions)


def _faiss_codes(x: np.ndarray, inputs: BenchInputs) -> tuple[np.ndarray, float]:
    from bench.quality import run_faiss

    row = run_faiss("movielens", np.ascontiguousarray(x, np.float32), inputs.levels, inputs.codebook_size,
                    inputs.seed)
    return row.codes, row.recon_mse


def _faiss(inputs: BenchInputs) -> Built:
    codes, mse = _faiss_codes(inputs.vectors, inputs)
    return _dedup(inputs, codes, mse)


def _oracle(inputs: BenchInputs) -> Built:
    """LEAKY upper bound: faiss residual k-means on unit behaviour factors (a truncated SVD) of ALL ratings."""
    from rqvae.training.collaborative import ItemSequences, collaborative_embeddings

    sequences = ItemSequences.from_interactions(inputs.all_interactions, inputs.item_ids)
    factors = collaborative_embeddings(sequences, 64, seed=inputs.seed).vectors
    codes, _ = _faiss_codes(factors, inputs)
    return _dedup(inputs, codes, float("nan"))


def _random(inputs: BenchInputs) -> Built:
    from rqvae.retrieval import random_ids

    codes = random_ids(inputs.item_ids, [inputs.codebook_size] * inputs.levels, inputs.seed).codes
    return _dedup(inputs, codes, float("nan"))


ID_SETS: dict[str, IdSetSpec] = {
    "random": IdSetSpec("random", _random),
    "faiss": IdSetSpec("faiss residual k-means (content)", _faiss),
    "rqkmeans": IdSetSpec("rqkmeans (this project, content)", lambda inputs: _ours(inputs, "rqkmeans")),
    "rqvae": IdSetSpec("rqvae (this project, content)", lambda inputs: _ours(inputs, "rqvae")),
    "rqvae_old": IdSetSpec("rqvae, the budget before issue 28 (content)",
                           lambda inputs: _ours(inputs, "rqvae", OLD_BUDGET)),
    "collab": IdSetSpec("collaborative (this project)", _collaborative),
    "oracle": IdSetSpec("oracle: all ratings, leaky (upper bound)", _oracle),
}


def build_cached(name: str, inputs: BenchInputs, cache: Path | None) -> tuple[Built, float]:
    """An ID set and its build seconds, from ``cache`` when the same code, inputs and seed built it before."""
    key = hashlib.sha256(json.dumps([name, inputs.levels, inputs.codebook_size, inputs.seed,
                                     len(inputs.train_interactions), _code_stamp()]).encode()).hexdigest()[:16]
    path = cache / f"{name}-{key}.npz" if cache else None
    if path is not None and path.exists():
        with np.load(path) as data:
            table = IdTable(data["item_ids"], data["codes"], data["dedup"], tuple(int(k) for k in data["sizes"]))
            meta = json.loads(str(data["meta"]))
        return (table, meta["quality"]), meta["seconds"]
    t0 = time.perf_counter()
    table, quality = ID_SETS[name].build(inputs)
    seconds = time.perf_counter() - t0
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, item_ids=table.item_ids, codes=table.codes, dedup=table.dedup,
                 sizes=np.asarray(table.codebook_sizes), meta=json.dumps({"quality": quality, "seconds": seconds}))
    return (table, quality), seconds


def _code_stamp() -> str:
    """The library's source, hashed: cached IDs are reused only while the code that built them is the same."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "rqvae").rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def merge_runs(reports: list[RetrievalReport], id_seeds: list[int]) -> RetrievalReport:
    """One report whose runs are every (ID seed, retriever seed) pair, labelled 100 x ID seed + retriever seed."""
    first = reports[0]
    per_event = {name: {m: np.concatenate([r.per_event[name][m] for r in reports]) for m in first.per_event[name]}
                 for name in first.names}
    labels = [100 * s + r for s, report in zip(id_seeds, reports, strict=True) for r in report.seeds]
    runs = {name: [run for report in reports for run in report.runs[name]] for name in first.names}
    return RetrievalReport(first.names, labels, first.users, first.groups, first.cold, per_event, runs, first.info,
                           first.config, first.protocol)


def _pm(mean: float, se: float, signed: bool = False, digits: int = 4) -> str:
    return f"{mean:{'+' if signed else ''}.{digits}f} ± {se:.{digits}f}"


def _share(report: RetrievalReport, name: str, metric: str, subset: str = "all") -> str:
    """The method's gain over faiss as a share of the oracle's gain (the headroom)."""
    if ORACLE not in report.names or BASELINE not in report.names or name in (BASELINE, ORACLE):
        return "-"
    room = report.paired(ORACLE, BASELINE, metric, subset).mean
    gain = report.paired(name, BASELINE, metric, subset).mean
    return f"{gain / room:+.0%}" if room and np.isfinite(room) and abs(room) > 1e-9 else "-"


def protocol_markdown(report: RetrievalReport, labels: dict[str, str], quality: dict[str, dict[str, float]],
                      build_s: dict[str, float]) -> str:
    """The table of one protocol: every ID set against faiss, then the cold subset and the instrument check."""
    base = BASELINE if BASELINE in report.names else report.names[0]
    lines = [
        f"**{report.protocol}**: {len(report.groups):,} test events of {len(report.users)} users "
        f"({int(report.cold.sum()):,} cold: the item has < {report.config.get('cold_threshold')} training events); "
        f"runs {report.seeds} (100 x ID seed + retriever seed).",
        "",
        "| ID set | unique-ID ratio | IDs s | " + " | ".join(METRICS) + f" | ΔRecall@10 vs {base} | Recall@10 x | "
        f"ΔNLL vs {base} | headroom share (NLL) | detectable Δ (2 SE) |",
        "|---|---|---|" + "---|" * (len(METRICS) + 5),
    ]
    for name in report.names:
        cells = [_pm(s.mean, s.se) for s in (report.summary(name, m) for m in METRICS)]
        if name == base:
            diff = ["-", "-", "-", "-", "-"]
        else:
            r10, nll = report.paired(name, base, "recall@10"), report.paired(name, base, "nll")
            ratio = report.summary(name, "recall@10").mean / report.summary(base, "recall@10").mean
            mde = report.mde(name, base)
            diff = [f"{_pm(r10.mean, r10.se, True)} ({r10.mean / r10.se:+.1f} SE)", f"x{ratio:.2f}",
                    f"{_pm(nll.mean, nll.se, True)} ({nll.mean / nll.se:+.1f} SE)", _share(report, name, "nll"),
                    f"R@10 {mde['recall@10']:.4f}, NLL {mde['nll']:.4f}"]
        q = quality[name]
        lines.append(f"| {labels[name]} | {q['unique_ratio']:.4f} | {build_s[name]:.1f} | "
                     + " | ".join(cells + diff) + " |")
    lines += ["", f"Cold test events only (the item has < {report.config.get('cold_threshold')} training events):", "",
              "| ID set | " + " | ".join(METRICS) + f" | ΔRecall@10 vs {base} | ΔNLL vs {base} |",
              "|---|" + "---|" * (len(METRICS) + 2)]
    for name in report.names:
        cells = [_pm(s.mean, s.se) for s in (report.summary(name, m, "cold") for m in METRICS)]
        diff = ["-", "-"] if name == base else [
            _pm(d.mean, d.se, True) for d in (report.paired(name, base, m, "cold") for m in ("recall@10", "nll"))]
        lines.append(f"| {labels[name]} | " + " | ".join(cells + diff) + " |")
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
    verdict = (f"resolved (>= {MANY_SE:.0f} SE) on {', '.join(resolved)}" if resolved else
               "not resolved on any metric: add seeds or epochs before reading the smaller gaps")
    return f"Instrument check, random IDs vs {labels[base]}: {', '.join(parts)}: {verdict}."


def to_markdown(reports: dict[str, RetrievalReport], labels: dict[str, str], quality: dict[str, dict[str, float]],
                build_s: dict[str, float], cfg: RetrievalConfig, args: argparse.Namespace, wall_s: float,
                info: dict[str, int]) -> str:
    head = (
        f"MovieLens small: {info['n_items']:,} items x 384 (MiniLM text embeddings), {info['n_interactions']:,} "
        f"ratings of {info['n_users']} users; {args.levels} x {args.codebook_size} codes. ID sets built with seeds "
        f"{sorted(set(args.id_seeds) | set(args.loo_id_seeds or []))} (per protocol below); those that learn from "
        "ratings see only the temporal split's training part "
        f"({info['n_train']:,} events). Retriever: decoder-only transformer (d_model {cfg.d_model}, {cfg.layers} "
        f"layers, {cfg.heads} heads), history {cfg.history}, {cfg.epochs} epochs (best validation NLL kept), beam "
        f"{cfg.beam} constrained to real IDs, seeds {args.seeds}. Per test event the metric is averaged over the "
        f"runs; mean ± SE over events, clustered by user, with the spread between runs added; Δ = paired "
        f"difference to faiss residual k-means on the same events. NLL in nats per item, exact over valid IDs "
        f"(lower is better). {wall_s / 60:.0f} min for this call (runs reused from the cache count only their "
        f"loading)."
    )
    parts = [head]
    for protocol, report in reports.items():
        parts += ["", f"### {protocol}: ID seeds {protocol_id_seeds(args, protocol)} x retriever seeds {args.seeds}",
                  "", protocol_markdown(report, labels, quality, build_s)]
    return "\n".join(parts)


def protocol_id_seeds(args: argparse.Namespace, protocol: str) -> list[int]:
    """The ID seeds a protocol is run with: ``--loo-id-seeds`` for leave-one-out when given, else ``--id-seeds``."""
    from rqvae.modes import Protocol

    return args.loo_id_seeds if protocol == Protocol.LEAVE_ONE_OUT and args.loo_id_seeds else args.id_seeds


def _plain(value: object) -> object:
    """NaN (no reconstruction for random IDs) as null, so the JSON stays standard."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sets", default=",".join(ID_SETS), help=f"of {list(ID_SETS)}")
    parser.add_argument("--protocols", default="temporal,leave_one_out")
    parser.add_argument("--id-seeds", type=_ints, default=[0, 1, 2], help="seeds of the ID sets' own building")
    parser.add_argument("--loo-id-seeds", type=_ints, default=None,
                        help="ID seeds for the leave-one-out protocol (default: --id-seeds)")
    parser.add_argument("--seeds", type=_ints, default=[0, 1, 2], help="retriever seeds")
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--codebook-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--max-users", type=int, default=0)
    parser.add_argument("--data", default=str(DATA), help="folder with embeddings.parquet and ratings.parquet")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--collab-doc", default=str(ROOT / "docs" / "collaborative.md"),
                        help="a second document that gets the same table ('' = none)")
    parser.add_argument("--json", default=str(ROOT / "var" / "bench" / "downstream.json"))
    parser.add_argument("--cache", default=str(ROOT / "var" / "bench" / "downstream-runs"),
                        help="finished retriever runs and built ID sets, reused when nothing that decides them "
                        "changed ('' = off)")
    parser.add_argument("--no-write", action="store_true", help="print the tables, write no document")
    args = parser.parse_args(argv)
    run = provenance()  # before any work: the load average is the start's
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    report = run_benchmark(args)
    print(report)
    if not args.no_write:
        write_docs(args, report, run)
    return 0


def run_benchmark(args: argparse.Namespace) -> str:
    from rqvae.io.interactions import read_interactions, split_events
    from rqvae.io.readers import read_embeddings
    from rqvae.modes import Protocol
    from rqvae.retrieval import evaluate_id_sets
    from rqvae.retrieval.cache import RunCache

    data = Path(args.data)
    if not (data / "embeddings.parquet").exists():
        raise SystemExit(f"MovieLens set not found in {data}")
    t0 = time.perf_counter()
    emb = read_embeddings(data / "embeddings.parquet")
    interactions = read_interactions(data / "ratings.parquet")
    known = interactions.restrict_items(emb.ids)
    train = split_events(known, Protocol.TEMPORAL).train_interactions()
    names = [n for n in args.sets.split(",") if n]
    unknown = sorted(set(names) - set(ID_SETS))
    if unknown:
        raise SystemExit(f"unknown ID sets {unknown}; expected some of {list(ID_SETS)}")
    cache = Path(args.cache) if args.cache else None
    tables: dict[str, dict[int, IdTable]] = {n: {} for n in names}
    quality: dict[str, dict[str, float]] = {}
    build_s: dict[str, float] = {}
    for name in names:
        per_seed = []
        for seed in sorted(set(args.id_seeds) | set(args.loo_id_seeds or [])):
            inputs = BenchInputs(emb.ids, emb.vectors, train, known, args.levels, args.codebook_size, seed)
            (table, q), seconds = build_cached(name, inputs, cache / "ids" if cache else None)
            if len(table) != len(emb.ids):  # a smaller set would change everyone's split
                raise SystemExit(f"ID set {name!r} covers {len(table)} of {len(emb.ids)} items")
            tables[name][seed] = table
            per_seed.append((q, seconds))
        quality[name] = {k: float(np.mean([q[k] for q, _ in per_seed])) for k in ("recon_mse", "unique_ratio")}
        build_s[name] = float(np.mean([s for _, s in per_seed]))
        print(f"{name:10s} IDs in {build_s[name]:.1f}s per seed: {quality[name]}", flush=True)
    reports: dict[str, RetrievalReport] = {}
    for protocol in [Protocol.parse(p) for p in args.protocols.split(",") if p]:
        cfg = RetrievalConfig(protocol=protocol, epochs=args.epochs, max_users=args.max_users)
        id_seeds = protocol_id_seeds(args, protocol)
        per_id_seed = [evaluate_id_sets({n: tables[n][s] for n in names}, interactions, cfg, args.seeds,
                                        RunCache(cache / "runs") if cache else None) for s in id_seeds]
        reports[protocol.value] = merge_runs(per_id_seed, id_seeds)
    wall = time.perf_counter() - t0
    labels = {n: ID_SETS[n].label for n in names}
    info = {"n_items": len(emb.ids), "n_interactions": len(interactions), "n_users": interactions.n_users,
            "n_train": len(train)}
    cfg = RetrievalConfig(epochs=args.epochs, max_users=args.max_users)
    markdown = to_markdown(reports, labels, quality, build_s, cfg, args, wall, info)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(_plain({
        "protocols": {p: r.to_dict(BASELINE if BASELINE in names else None) for p, r in reports.items()},
        "quality": quality, "build_seconds": build_s, "wall_seconds": wall, "args": vars(args)}), indent=1,
        default=str))
    return markdown


def write_docs(args: argparse.Namespace, markdown: str, run: Provenance) -> None:
    replace_section(Path(args.out), *SECTION, markdown, run)
    if args.collab_doc:
        replace_section(Path(args.collab_doc), *SECTION, markdown, run)
    print(f"\nwrote {args.out}" + (f" and {args.collab_doc}" if args.collab_doc else "") + f"; {args.json}")


if __name__ == "__main__":
    sys.exit(main())
