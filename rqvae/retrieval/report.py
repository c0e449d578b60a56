"""Results of a downstream comparison: per-event metrics, their means with standard errors, paired differences.

A test event is one (user, item) a retriever had to predict: one per user under leave-one-out, up to twenty
under the temporal protocol. Events of one user are not independent (an easy user is easy every time), so every
standard error is clustered by user (CR1)::

    SE^2 = G / (G - 1) * sum_g (sum_{e in g} (x_e - mean))^2 / N^2        (G users, N events)

which is the usual sample SE (ddof=1) when each user has one event. Differences between ID sets are paired on
the same events: most of the per-user variance cancels. Each event's metric is first averaged over the runs
(retriever seeds, and ID-building seeds in the benchmark); when there are several runs, the spread of the runs'
own means is added (``var(run means) / runs``), so the SE covers seed noise too, not only which users were
sampled. Every comparison also states its minimum detectable effect: two standard errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

METRICS = ("recall@5", "recall@10", "ndcg@10", "nll")
SUBSETS = ("all", "cold")
MDE_SE = 2.0  # a difference smaller than this many SEs is not detectable
MDE_METRICS = ("recall@10", "nll")


@dataclass(frozen=True)
class Stat:
    mean: float
    se: float  # clustered by user (see the module docstring); nan with fewer than two users
    n: int  # events
    users: int = 0  # clusters

    def to_dict(self) -> dict[str, float | int | None]:
        return {"mean": _num(self.mean), "se": _num(self.se), "n": self.n, "users": self.users}


def mean_se(values: np.ndarray, groups: np.ndarray | None = None, run_means: np.ndarray | None = None) -> Stat:
    """Mean of per-event ``values`` and its SE clustered by ``groups`` (the user of each event; None: one user
    per event). ``run_means`` [R]: the mean of each run, whose spread is added when there are several."""
    values = np.asarray(values, np.float64)
    n = len(values)
    if n == 0:
        return Stat(math.nan, math.nan, 0, 0)
    groups = np.arange(n) if groups is None else np.asarray(groups)
    _, cluster = np.unique(groups, return_inverse=True)
    g = int(cluster.max()) + 1
    mean = float(np.mean(values))
    if g < 2:
        return Stat(mean, math.nan, n, g)
    sums = np.bincount(cluster, weights=values - mean, minlength=g)
    variance = g / (g - 1) * float(np.sum(sums**2)) / n**2
    if run_means is not None and len(run_means) > 1:
        variance += float(np.var(np.asarray(run_means, np.float64), ddof=1)) / len(run_means)
    return Stat(mean, math.sqrt(variance), n, g)


def paired_diff(a: np.ndarray, b: np.ndarray, groups: np.ndarray | None = None) -> Stat:
    """Mean and clustered SE of the per-event differences a - b (same events, same order)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same events: {a.shape} vs {b.shape}")
    return mean_se(a - b, groups)


def _num(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 6)


@dataclass
class RetrievalReport:
    """Per-event metrics of every ID set and run on the same test events.

    ``per_event[name][metric]`` is [runs, events]; ``groups`` [events] the index (into ``users``) of each event's
    user; ``cold`` [events] marks test items with few training interactions; ``runs[name]`` holds each run's
    training summary; ``info`` the split's counts; ``protocol`` which events were tested.
    """

    names: list[str]
    seeds: list[int]
    users: np.ndarray
    groups: np.ndarray
    cold: np.ndarray
    per_event: dict[str, dict[str, np.ndarray]]
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    protocol: str = ""

    def _mask(self, subset: str) -> np.ndarray:
        if subset not in SUBSETS:
            raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
        return self.cold if subset == "cold" else np.ones(len(self.groups), bool)

    def values(self, name: str, metric: str, subset: str = "all", seed: int | None = None) -> np.ndarray:
        """Per-event values: of one run, or averaged over runs; ``subset`` "all" or "cold"."""
        matrix = self.per_event[name][metric]
        row = matrix.mean(0) if seed is None else matrix[self.seeds.index(seed)]
        return row[self._mask(subset)]

    def summary(self, name: str, metric: str, subset: str = "all", seed: int | None = None) -> Stat:
        mask = self._mask(subset)
        matrix = self.per_event[name][metric][:, mask]
        runs = matrix.mean(1) if seed is None and len(matrix) > 1 else None
        return mean_se(self.values(name, metric, subset, seed), self.groups[mask], runs)

    def paired(self, name: str, baseline: str, metric: str, subset: str = "all") -> Stat:
        """``name`` minus ``baseline`` on the same events (run-averaged per event first; with several runs, paired
        by run index, the spread of the runs' mean differences is added to the SE)."""
        mask = self._mask(subset)
        a, b = self.per_event[name][metric][:, mask], self.per_event[baseline][metric][:, mask]
        runs = (a - b).mean(1) if len(a) == len(b) and len(a) > 1 else None
        return mean_se(a.mean(0) - b.mean(0), self.groups[mask], runs)

    def mde(self, name: str, baseline: str, subset: str = "all") -> dict[str, float | None]:
        """The smallest difference this comparison can detect (MDE_SE standard errors), per metric."""
        return {m: _num(MDE_SE * self.paired(name, baseline, m, subset).se) for m in MDE_METRICS}

    def to_dict(self, baseline: str | None = None) -> dict[str, Any]:
        """Everything but the per-event arrays, as plain JSON types; paired differences against ``baseline``
        (default: the first ID set)."""
        baseline = baseline or self.names[0]
        out: dict[str, Any] = {"protocol": self.protocol, "seeds": self.seeds, "n_users": len(self.users),
                               "n_events": len(self.groups), "n_cold": int(self.cold.sum()), "baseline": baseline,
                               "mde_se": MDE_SE, "info": self.info, "config": self.config, "id_sets": {}}
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
                    entry[f"{subset}_mde_vs_{baseline}"] = self.mde(name, baseline, subset)
            out["id_sets"][name] = entry
        return out

    def table(self, baseline: str | None = None, metrics: tuple[str, ...] = METRICS) -> str:
        """A Markdown table: mean ± SE per ID set and subset, the paired difference to ``baseline``, and the
        difference each comparison could detect (2 SE)."""
        baseline = baseline or self.names[0]
        head = "| ID set | events | " + " | ".join(metrics) + " | " + " | ".join(f"Δ{m}" for m in metrics) + \
            " | detectable Δ (2 SE) |"
        lines = [head, "|" + "---|" * (3 + 2 * len(metrics))]
        for subset in SUBSETS:
            for name in self.names:
                n = int(self._mask(subset).sum())
                cells = [_fmt(self.summary(name, m, subset)) for m in metrics]
                diffs = ["-" if name == baseline else _fmt(self.paired(name, baseline, m, subset), signed=True)
                         for m in metrics]
                mde = "-" if name == baseline else ", ".join(
                    f"{m} {v:.4f}" for m, v in self.mde(name, baseline, subset).items() if v is not None)
                label = name if subset == "all" else f"{name} (cold)"
                lines.append(f"| {label} | {n} | " + " | ".join(cells + diffs) + f" | {mde} |")
        return "\n".join(lines)


def _fmt(stat: Stat, signed: bool = False) -> str:
    if stat.n == 0:
        return "n/a"
    sign = "+" if signed else ""
    se = "n/a" if math.isnan(stat.se) else f"{stat.se:.4f}"
    return f"{stat.mean:{sign}.4f} ± {se}"
