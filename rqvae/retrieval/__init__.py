"""Downstream evaluation of semantic-ID sets by next-item generative retrieval (TIGER / OneRec style).

Reconstruction error and unique-ID ratio say how well IDs describe items; whether a recommender can *use* them
is a different question. This package trains one small decoder on users' histories per ID set, decodes with a
beam constrained to real IDs and reports Recall@5/10, NDCG@10 and the exact next-item NLL, with standard errors
and paired differences on the same users::

    from rqvae.io.interactions import read_interactions
    from rqvae.retrieval import IdTable, RetrievalConfig, evaluate_id_sets, random_ids

    ours = IdTable.from_parquet("semantic_ids.parquet")
    report = evaluate_id_sets({"ours": ours, "random": random_ids(ours.item_ids, ours.codebook_sizes)},
                              read_interactions("ratings.parquet"), RetrievalConfig(epochs=4), seeds=(0, 1, 2))
    print(report.table())

Token layout: :mod:`rqvae.retrieval.tokens`. Only PyTorch and numpy are used.
"""

from __future__ import annotations

from .baselines import model_ids, random_ids, rqkmeans_ids
from .data import PreparedSplit, Sequences, prepare_split
from .decode import beam_search, exact_nll, rank_of, ranking_metrics
from .evaluate import cold_mask, common_items, eval_users, evaluate_id_sets
from .index import PrefixIndex
from .model import Retriever
from .report import METRICS, RetrievalReport, Stat, mean_se, paired_diff
from .tokens import IdTable, TokenLayout
from .train import RetrievalConfig, RunResult, train_and_score

__all__ = [
    "METRICS",
    "IdTable",
    "PrefixIndex",
    "PreparedSplit",
    "RetrievalConfig",
    "RetrievalReport",
    "Retriever",
    "RunResult",
    "Sequences",
    "Stat",
    "TokenLayout",
    "beam_search",
    "cold_mask",
    "common_items",
    "eval_users",
    "evaluate_id_sets",
    "exact_nll",
    "mean_se",
    "model_ids",
    "paired_diff",
    "prepare_split",
    "random_ids",
    "rank_of",
    "ranking_metrics",
    "rqkmeans_ids",
    "train_and_score",
]
