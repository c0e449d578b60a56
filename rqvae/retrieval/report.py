"""Results of a downstream comparison: per-user metrics, their means with standard errors, paired differences.

Differences between ID sets are paired on the same users: most of the per-user variance (some users are easy,
some hard) cancels, so the SE of a paired difference is much smaller than the two SEs of the means suggest.
Over several retriever seeds each user's metric is averaged over the seeds first, then paired, so seed noise
shrinks the user-level spread instead of being counted as extra users.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

METRICS = ("recall@5", "recall@10", "ndcg@10", "nll")
SUBSETS = ("all", "cold")


@dataclass(frozen=True)
class Stat:
    mean: float
    se: float  # sample std (ddof=1) / sqrt(n); nan when n < 2
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return {"mean": _num(self.mean), "se": _num(self.se), "n": self.n}


def mean_se(values: np.ndarray) -> Stat:
    """Mean and standard error of the mean of per-user values."""
    values = np.asarray(values, np.float64)
    n = len(values)
    if n == 0:
        return Stat(math.nan, math.nan, 0)
    se = float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return Stat(float(np.mean(values)), se, n)


def paired_diff(a: np.ndarray, b: np.ndarray) -> Stat:
    """Mean and SE of the per-user differences a - b (same users, same order)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same users: {a.shape} vs {b.shape}")
    return mean_se(a - b)


def _num(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 6)


@dataclass
class RetrievalReport:
    """Per-user metrics of every ID set and seed on the same evaluated users.

    ``per_user[name][metric]`` is [seeds, users]; ``cold`` [users] marks test items with few training
    interactions; ``runs[name]`` holds each seed's training summary; ``info`` the split's counts.
    """

    names: list[str]
    seeds: list[int]
    users: np.ndarray
    cold: np.ndarray
    per_user: dict[str, dict[str, np.ndarray]]
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)

    def values(self, name: str, metric: str, subset: str = "all", seed: int | None = None) -> np.ndarray:
        """Per-user values: of one seed, or averaged over seeds; ``subset`` "all" or "cold"."""
        if subset not in SUBSETS:
            raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
        matrix = self.per_user[name][metric]
        row = matrix.mean(0) if seed is None else matrix[self.seeds.index(seed)]
        return row[self.cold] if subset == "cold" else row

    def summary(self, name: str, metric: str, subset: str = "all", seed: int | None = None) -> Stat:
        return mean_se(self.values(name, metric, subset, seed))

    def paired(self, name: str, baseline: str, metric: str, subset: str = "all") -> Stat:
        """``name`` minus ``baseline`` on the same users (seed-averaged per user first)."""
        return paired_diff(self.values(name, metric, subset), self.values(baseline, metric, subset))

    def to_dict(self, baseline: str | None = None) -> dict[str, Any]:
        """Everything but the per-user arrays, as plain JSON types; paired differences against ``baseline``
        (default: the first ID set)."""
        baseline = baseline or self.names[0]
        out: dict[str, Any] = {"seeds": self.seeds, "n_users": len(self.users), "n_cold": int(self.cold.sum()),
                               "baseline": baseline, "info": self.info, "config": self.config, "id_sets": {}}
        for name in self.names:
            entry: dict[str, Any] = {"runs": self.runs.get(name, [])}
            for subset in SUBSETS:
                entry[subset] = {m: self.summary(name, m, subset).to_dict() for m in METRICS}
                entry[f"{subset}_per_seed"] = {
                    str(s): {m: self.summary(name, m, subset, s).to_dict() for m in METRICS} for s in self.seeds
                }
                if name != baseline:
                    entry[f"{subset}_vs_{baseline}"] = {m: self.paired(name, baseline, m, subset).to_dict()
                                                        for m in METRICS}
            out["id_sets"][name] = entry
        return out

    def table(self, baseline: str | None = None, metrics: tuple[str, ...] = METRICS) -> str:
        """A Markdown table: mean ± SE per ID set and subset, then the paired difference to ``baseline``."""
        baseline = baseline or self.names[0]
        head = "| ID set | users | " + " | ".join(metrics) + " | " + " | ".join(f"Δ{m}" for m in metrics) + " |"
        lines = [head, "|" + "---|" * (2 + 2 * len(metrics))]
        for subset in SUBSETS:
            for name in self.names:
                n = int(self.cold.sum()) if subset == "cold" else len(self.users)
                cells = [_fmt(self.summary(name, m, subset)) for m in metrics]
                diffs = ["-" if name == baseline else _fmt(self.paired(name, baseline, m, subset), signed=True)
                         for m in metrics]
                label = name if subset == "all" else f"{name} (cold)"
                lines.append(f"| {label} | {n} | " + " | ".join(cells + diffs) + " |")
        return "\n".join(lines)


def _fmt(stat: Stat, signed: bool = False) -> str:
    if stat.n == 0:
        return "n/a"
    sign = "+" if signed else ""
    se = "n/a" if math.isnan(stat.se) else f"{stat.se:.4f}"
    return f"{stat.mean:{sign}.4f} ± {se}"
