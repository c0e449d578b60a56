"""A visual report per published version: PNG plots and one self-contained HTML page linking them.

Whoever consumes the IDs should see at a glance what a version looks like: whether every level's codes are
used evenly (collapse shows as a few tall bars), how items pile into buckets (collisions), how well items are
reconstructed, and how many IDs changed since the previous version. Plots use matplotlib's Agg backend (no
display on workers); the page only uses relative links, so the folder can be copied or served anywhere.
"""

from __future__ import annotations

import html
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..io.idfile import iter_semantic_ids, read_semantic_ids
from ..io.packed import CHUNK_ROWS, count_rows, fits, pack, small_dtype
from ..quantize.metrics import pack_codes

logger = logging.getLogger(__name__)

USAGE_PNG = "usage_per_level.png"
BUCKETS_PNG = "bucket_sizes.png"
RECON_PNG = "recon_error.png"
CHURN_PNG = "churn.png"
INDEX = "index.html"


def write_report(
    out_dir: str | Path,
    semantic_ids: str | Path,
    codebook_sizes: Sequence[int],
    metrics: dict[str, Any],
    *,
    recon_errors: np.ndarray | None = None,
    churn: dict[str, Any] | None = None,
    title: str = "Semantic IDs",
) -> list[str]:
    """Write the plots and index.html into out_dir; returns the file names written (relative)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sizes = [int(k) for k in codebook_sizes]
    tally = _tally(semantic_ids, sizes)
    written = []
    try:
        _usage_plot(plt, tally, sizes, out / USAGE_PNG)
        written.append(USAGE_PNG)
        _bucket_plot(plt, tally, out / BUCKETS_PNG)
        written.append(BUCKETS_PNG)
        if recon_errors is not None and len(recon_errors):
            _recon_plot(plt, np.asarray(recon_errors, np.float64), out / RECON_PNG)
            written.append(RECON_PNG)
        if churn and churn.get("churn") is not None:
            _churn_plot(plt, churn, out / CHURN_PNG)
            written.append(CHURN_PNG)
    finally:
        plt.close("all")
    (out / INDEX).write_text(_page(title, metrics, churn, written), encoding="utf-8")
    written.append(INDEX)
    logger.info("report: %s -> %s", written, out)
    return written


def training_signal(collaborative: dict[str, Any] | None) -> str:
    """One line saying whether a version learnt from interactions and with what weight (manifest["collaborative"])."""
    if not collaborative or not collaborative.get("used"):
        return "content only (no interactions)"
    return (f"content + interactions {collaborative.get('interactions')} (collaborative weight "
            f"{_format(float(collaborative.get('weight', 0.0)))}; {int(collaborative.get('n_interactions', 0)):,} "
            f"interactions on {int(collaborative.get('n_items_with_interactions', 0)):,} items)")


@dataclass(frozen=True)
class _Tally:
    """What the code plots show: items, items per code of each level, and buckets[s] = code tuples of s items."""

    n_items: int
    usage: list[np.ndarray]
    buckets: np.ndarray


def _tally(semantic_ids: str | Path, sizes: list[int]) -> _Tally:
    """Count codes and code tuples batch by batch: one packed tuple key per item (4 bytes at 4 x 256 codes) is all
    that is held. Codes outside the sizes, or tuples too wide to pack, are counted from the whole table instead."""
    n = count_rows(semantic_ids)
    key_dtype = small_dtype(math.prod(sizes) - 1) if fits(sizes) else None
    if n == 0 or key_dtype is None:
        return _tally_in_memory(semantic_ids, sizes)
    usage = [np.zeros(k, np.int64) for k in sizes]
    keys = np.empty(n, key_dtype)
    row = 0
    for _, codes, _ in iter_semantic_ids(semantic_ids):
        if codes.shape[1] != len(sizes) or codes.min() < 0 or (codes.max(0) >= np.asarray(sizes)).any():
            return _tally_in_memory(semantic_ids, sizes)
        for level, k in enumerate(sizes):
            usage[level] += np.bincount(codes[:, level], minlength=k)
        keys[row : row + len(codes)] = pack(codes, None, sizes)
        row += len(codes)
    keys.sort()
    return _Tally(n, usage, _run_lengths(keys))


def _tally_in_memory(semantic_ids: str | Path, sizes: list[int]) -> _Tally:
    _, codes, _ = read_semantic_ids(semantic_ids)
    usage = [np.bincount(codes[:, level].astype(np.int64), minlength=k) for level, k in enumerate(sizes)]
    _, counts = np.unique(pack_codes(codes, sizes), return_counts=True)
    return _Tally(len(codes), usage, np.bincount(counts))


def _run_lengths(sorted_keys: np.ndarray) -> np.ndarray:
    """hist[s]: how many distinct values occur s times in a sorted array, slice by slice (no [N] temporaries)."""
    hist = np.zeros(1, np.int64)
    run, last = 0, None  # the run still open at the end of the previous slice, and its value
    for start in range(0, len(sorted_keys), CHUNK_ROWS):
        chunk = sorted_keys[start : start + CHUNK_ROWS]
        runs = np.diff(np.r_[0, np.flatnonzero(chunk[1:] != chunk[:-1]) + 1, len(chunk)])
        if last is not None and chunk[0] == last:
            runs[0] += run
        elif last is not None:
            runs = np.r_[run, runs]
        hist = _add_counts(hist, runs[:-1])
        run, last = int(runs[-1]), chunk[-1]
    return _add_counts(hist, np.array([run])) if last is not None else hist


def _add_counts(hist: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    more = np.bincount(lengths, minlength=len(hist))
    more[: len(hist)] += hist
    return more


def _usage_plot(plt, tally: _Tally, sizes: list[int], path: Path) -> None:
    """Items per code, one panel per level, codes sorted by count: a flat profile means even usage."""
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.2 * len(sizes), 3.2), squeeze=False)
    for level, (ax, k) in enumerate(zip(axes[0], sizes, strict=True)):
        counts = np.sort(tally.usage[level])[::-1]
        used = int((counts > 0).sum())
        ax.bar(np.arange(k), counts, width=1.0, color="#4c72b0")
        ax.axhline(tally.n_items / k, color="#c44e52", lw=1, ls="--", label="even")
        ax.set_title(f"level {level}: {used}/{k} codes used")
        ax.set_xlabel("code (sorted by items)")
        ax.set_ylabel("items")
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def _bucket_plot(plt, tally: _Tally, path: Path) -> None:
    """How many code tuples hold 1, 2, 3, ... items (before dedup / after reassignment)."""
    size = np.flatnonzero(tally.buckets)
    n_buckets = tally.buckets[size]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.bar(size, n_buckets, width=0.8, color="#55a868")
    ax.set_yscale("log")
    if size.max() > 30:
        ax.set_xscale("log")
    ax.set_xlabel("items per code tuple")
    ax.set_ylabel("code tuples")
    shared = float((size[size > 1] * n_buckets[size > 1]).sum()) / tally.n_items
    ax.set_title(f"bucket sizes: {int(n_buckets.sum())} tuples, largest {int(size.max())}, {shared:.1%} items share")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def _recon_plot(plt, errors: np.ndarray, path: Path) -> None:
    """Per-item mean squared reconstruction error, with the median and the 99th percentile marked."""
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.hist(errors, bins=60, color="#8172b2")
    for q, style in ((50, "-"), (99, "--")):
        value = float(np.quantile(errors, q / 100))
        ax.axvline(value, color="#c44e52", ls=style, lw=1, label=f"p{q} {value:.3g}")
    ax.set_xlabel("per-item recon MSE")
    ax.set_ylabel("items")
    ax.set_title(f"reconstruction error ({len(errors):,} items)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def _churn_plot(plt, churn: dict[str, Any], path: Path) -> None:
    """Items kept, renamed, added and removed against the previous version."""
    common = int(churn.get("common_items", 0))
    changed = int(churn.get("changed_items", 0))
    labels = ["same ID", "ID changed", "added", "removed"]
    values = [common - changed, changed, int(churn.get("added_items", 0)), int(churn.get("removed_items", 0))]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.bar(labels, values, color=["#55a868", "#c44e52", "#4c72b0", "#8c8c8c"])
    ax.set_ylabel("items")
    ax.set_title(f"vs {churn.get('previous')}: churn {float(churn['churn']):.2%} of {common:,} common items")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list | tuple):
        return ", ".join(_format(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k} {_format(v)}" for k, v in value.items())
    return str(value)


def _page(title: str, metrics: dict[str, Any], churn: dict[str, Any] | None, images: list[str]) -> str:
    rows = "\n".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_format(v))}</td></tr>"
        for k, v in metrics.items()
        if v is not None
    )
    if churn and churn.get("previous"):
        rows += "\n" + "\n".join(
            f"<tr><th>churn: {html.escape(k)}</th><td>{html.escape(_format(v))}</td></tr>"
            for k, v in churn.items()
        )
    figures = "\n".join(
        f'<figure><a href="{name}"><img src="{name}" alt="{name}"></a><figcaption>{name}</figcaption></figure>'
        for name in images
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; font-size: 0.9rem; }}
th {{ background: #f4f4f4; font-weight: 600; }}
figure {{ display: inline-block; margin: 0 1rem 1rem 0; }}
img {{ max-width: 100%; border: 1px solid #ddd; }}
</style></head>
<body>
<h1>{html.escape(title)}</h1>
<table>
{rows}
</table>
{figures}
</body></html>
"""
