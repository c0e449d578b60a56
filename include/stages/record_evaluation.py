"""Stage `record_evaluation`: put the downstream verdict next to the published IDs, and apply the gate.

The published IDs are never touched: consumers may be reading them, and a worse evaluation is a reason to
look, not to unpublish. What consumers are given is decided next: the DAG's `promote` task moves the `serving`
alias only after this stage passed (include.stages.promote). What is added to the version folder:

- `evaluation.json`: the verdict (`summary`, read by the UI page), the gate, every ID set's metrics with
  standard errors and the paired differences;
- `report/evaluation.png`: Recall@10 and NLL per ID set with error bars;
- a "Downstream evaluation" section in `report/index.html`;
- a `downstream` entry in `manifest.json`, whose file list gains the new files' checksums.

Every file is written to a temporary name and renamed, under the same lock as `publish`, after checking that
the version still holds the IDs that were evaluated (a re-publish meanwhile makes the result stale). The
manifest is replaced last, so it never lists a file that is not there.
"""

from __future__ import annotations

import html
import logging
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from include.files import read_json, write_json_atomic
from include.params import EvaluationOptions
from include.results import EvaluationSummary, Recorded
from include.versions import EVALUATION, EVALUATION_PLOT, Version, publish_lock
from rqvae.errors import PermanentError
from rqvae.io.fsutil import atomic_path, sha256_file, write_bytes_atomic
from rqvae.modes import Protocol, Verdict

log = logging.getLogger(__name__)

SECTION_START, SECTION_END = "<!-- downstream:start -->", "<!-- downstream:end -->"
GATE_METRICS = {"nll": "lower", "recall@10": "higher"}  # which direction is better
GATE_PEERS = ("rqkmeans", "previous")


class QualityGateFailed(PermanentError, ValueError):
    """This version retrieves worse than a peer by more than the allowed standard errors (no retry helps)."""


class StaleEvaluation(PermanentError, RuntimeError):
    """The version was re-published while it was being evaluated: the result describes other IDs.

    Permanent: a retry compares the same upstream result with the same new manifest; the run the new
    publish triggers evaluates the new IDs.
    """


def gate(result: dict[str, Any], max_se: float) -> list[str]:
    """The reasons this version fails: worse than a peer by more than `max_se` paired standard errors."""
    reasons = []
    for peer in GATE_PEERS:
        paired = result.get("paired", {}).get(f"this-{peer}")
        if not paired:
            continue
        for metric, better in GATE_METRICS.items():
            diff = paired.get(metric) or {}
            mean, se = diff.get("mean"), diff.get("se")
            if mean is None or se is None:
                continue
            worse_by = mean if better == "lower" else -mean
            if worse_by > max_se * se:
                reasons.append(
                    f"{metric} worse than {peer} by {abs(mean):.4f} ({worse_by / se if se else math.inf:.1f} "
                    f"paired SE > max_se={max_se})"
                )
    return reasons


def summary(result: dict[str, Any], reasons: list[str]) -> EvaluationSummary:
    """The few figures the UI page shows per version (keys fixed: the page reads them)."""
    this = result["retrieval"]["id_sets"]["this"]["all"]
    vs = result.get("paired", {}).get("this-rqkmeans", {}).get("nll", {})
    return EvaluationSummary(
        status=Verdict.FAILED if reasons else Verdict.PASSED,
        protocol=result.get("protocol") or result["retrieval"].get("protocol") or Protocol.LEAVE_ONE_OUT.value,
        recall_at_10=this["recall@10"]["mean"],
        recall_at_10_se=this["recall@10"]["se"],
        nll=this["nll"]["mean"],
        nll_se=this["nll"]["se"],
        vs_rqkmeans_nll=vs.get("mean"),
        vs_rqkmeans_nll_se=vs.get("se"),
        reason="; ".join(reasons),
    )


def record_evaluation(
    version_path: str | Path,
    result_path: str | Path,
    options: EvaluationOptions,
    run_id: str | None = None,
) -> Recorded:
    """Write the evaluation into the version; raise QualityGateFailed after writing when the gate fails.

    `options.max_se`: the gate's tolerance in paired standard errors; `run_id`: the evaluating Airflow run."""
    max_se = options.max_se
    version = Version(Path(version_path))
    result = read_json(result_path)
    reasons = gate(result, max_se)
    evaluation = {
        "summary": summary(result, reasons),
        "gate": {"max_se": max_se, "peers": list(GATE_PEERS), "metrics": GATE_METRICS, "failures": reasons},
        "evaluated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "run_id": run_id,
        **{k: v for k, v in result.items() if k != "version_path"},
    }
    with publish_lock(version.path.parent):
        manifest = read_json(version.manifest)
        evaluated = result.get("semantic_ids_sha256")
        if evaluated and evaluated != manifest["checksums"]["semantic_ids"]:
            raise StaleEvaluation(
                f"{version.name} was re-published while it was being evaluated; the result describes other IDs: "
                "the run triggered by the new publish evaluates them"
            )
        written = [_plot(version.evaluation_plot, result)]
        written.append(write_json_atomic(version.evaluation, evaluation))
        index = version.report_index
        if index.is_file():
            write_bytes_atomic(index, with_section(index.read_text(encoding="utf-8"), evaluation).encode("utf-8"))
            written.append(index)
        files = dict(manifest.get("files", {}))
        for path in written:
            path.chmod(0o644)
            digest = sha256_file(path, tagged=True)
            files[path.relative_to(version.path).as_posix()] = {"bytes": path.stat().st_size, "sha256": digest}
        manifest["files"] = files
        manifest["downstream"] = {**evaluation["summary"], "evaluation": EVALUATION, "run_id": run_id}
        write_json_atomic(version.manifest, manifest)
        version.manifest.chmod(0o644)
    status = evaluation["summary"]["status"]
    log.info("record_evaluation: %s %s (%s)", version.path, status, evaluation["summary"])
    if reasons:
        raise QualityGateFailed(
            f"downstream quality gate failed for {version.name} (flagged in {EVALUATION}; still published, "
            "not promoted: serving stays where it was): " + "; ".join(reasons)
        )
    return Recorded(version_path=str(version.path), **evaluation["summary"])


def with_section(page: str, evaluation: dict[str, Any]) -> str:
    """The report page with its downstream section inserted before `</body>` or replaced in place."""
    block = f"{SECTION_START}\n{section_html(evaluation)}\n{SECTION_END}"
    start, end = page.find(SECTION_START), page.find(SECTION_END)
    if start != -1 and end != -1:
        return page[:start] + block + page[end + len(SECTION_END):]
    close = page.rfind("</body>")
    return (page[:close] + block + "\n" + page[close:]) if close != -1 else page + block


def section_html(evaluation: dict[str, Any]) -> str:
    """The gate's protocol: each ID set's metrics (mean ± SE), the paired differences of this version and what
    each could detect; then, when it was run, the same under leave-one-out (TIGER's protocol)."""
    info = evaluation["summary"]
    verdict = Verdict.PASSED.value if info["status"] == Verdict.PASSED else f"FAILED: {info['reason']}"
    blocks = [f"<h2>Downstream evaluation</h2>\n<p>Gate: <strong>{html.escape(verdict)}</strong>. NLL: negative "
              "log-likelihood of the true next item among all valid IDs (lower is better). Differences are paired "
              "over the same test events; standard errors are clustered by user; \"detectable\" is two of them.</p>"]
    blocks.append(_protocol_tables(evaluation["retrieval"], evaluation.get("paired", {}), evaluation))
    loo = evaluation.get("leave_one_out")
    if loo:
        blocks.append(_protocol_tables(loo["retrieval"], loo.get("paired", {}), evaluation))
    blocks.append(f'<figure><a href="{EVALUATION_PLOT}"><img src="{EVALUATION_PLOT}" alt="{EVALUATION_PLOT}"></a>'
                  f"<figcaption>{EVALUATION_PLOT}</figcaption></figure>")
    return "\n".join(blocks)


def _protocol_tables(retrieval: dict[str, Any], pairs: dict[str, Any], evaluation: dict[str, Any]) -> str:
    metrics = ("recall@5", "recall@10", "ndcg@10", "nll")
    labels = evaluation.get("labels", {})
    rows = []
    for name, entry in retrieval["id_sets"].items():
        cells = "".join(f"<td>{_pm(entry['all'][m])}</td>" for m in metrics)
        cold = _pm(entry["cold"]["nll"])
        rows.append(f"<tr><th>{html.escape(labels.get(name, name))}</th>{cells}<td>{cold}</td></tr>")
    paired = "".join(
        f"<tr><th>{html.escape(pair)}</th>"
        + "".join(f"<td>{_pm(diffs.get(m), signed=True)}</td>" for m in ("recall@10", "ndcg@10", "nll"))
        + f"<td>{html.escape(_mde(diffs.get('mde')))}</td></tr>"
        for pair, diffs in pairs.items()
    )
    protocol = retrieval.get("protocol") or Protocol.LEAVE_ONE_OUT.value  # results written before protocols
    return f"""<h3>{html.escape(protocol)}: {retrieval.get('n_events', retrieval['n_users'])} test events of \
{retrieval['n_users']} users (seeds {retrieval['seeds']})</h3>
<table>
<tr><th>ID set</th>{''.join(f'<th>{m}</th>' for m in metrics)}<th>nll (cold items)</th></tr>
{''.join(rows)}
</table>
<table>
<tr><th>paired difference</th><th>Δ recall@10</th><th>Δ ndcg@10</th><th>Δ nll</th><th>detectable (2 SE)</th></tr>
{paired}
</table>"""


def _mde(mde: dict[str, float | None] | None) -> str:
    return ", ".join(f"{m} {v:.4f}" for m, v in (mde or {}).items() if v is not None) or "n/a"


def _pm(stat: dict[str, Any] | None, signed: bool = False) -> str:
    if not stat or stat.get("mean") is None:
        return "n/a"
    se = stat.get("se")
    mean = f"{stat['mean']:+.4f}" if signed else f"{stat['mean']:.4f}"
    return f"{mean} ± {se:.4f}" if se is not None else mean


def _plot(path: Path, result: dict[str, Any]) -> Path:
    """Recall@10 and NLL per ID set, error bars = 1 SE."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib import pyplot as plt

    sets = result["retrieval"]["id_sets"]
    names = list(sets)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    try:
        for ax, metric in zip(axes, ("recall@10", "nll"), strict=True):
            means = [sets[n]["all"][metric]["mean"] or 0.0 for n in names]
            ses = [sets[n]["all"][metric]["se"] or 0.0 for n in names]
            ax.bar(names, means, yerr=ses, capsize=4, color=["#3b6ea8" if n == "this" else "#9aa5b1" for n in names])
            ax.set_title(f"{metric} ({'lower' if metric == 'nll' else 'higher'} is better)")
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    finally:
        plt.close(fig)
    return path
