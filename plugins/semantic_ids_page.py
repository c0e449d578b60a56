"""The Semantic IDs page of the UI plugin: every published version with its figures and verdict, the two
aliases (`serving`, what consumers read; `latest`, the newest published), the promotion log, the serving and the
latest report inline, and, for users who may edit the `rqvae_semantic_ids` DAG, a promote button per version.

Reading only: the page is rendered from the publish root at each request; a missing, half-written or malformed
file gets its own short text, never an error page. The button opens a confirmation whose form posts to the
plugin's `promote` route (semantic_ids_plugin), with a reason, `force` for a version that failed the gate, and
the CSRF token the route checks. Kept apart from the routes and their access control so that each stays readable.
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Any

from include.versions import (
    EVALUATION,
    MANIFEST,
    PROMOTIONS,
    REPORT_DIR,
    REPORT_INDEX,
    SERVING,
    SERVING_JSON,
    Version,
    list_versions,
    read_latest,
)
from rqvae.ids.promotion import judge, read_promotions, read_serving
from rqvae.modes import PromotionKind, Verdict

MAX_DEPTH = 3  # namespaces nest at most this deep under the publish root (e.g. movielens/)
SKIPPED = "skipped"  # an evaluation.json status the page shows as it is (promotion reads it as not evaluated)
LOG_ROWS = 50  # newest lines of promotions.jsonl shown per namespace
CSRF_FIELD = "csrf_token"  # the form field the promote route checks

# ------------------------------------------------------------------------------------------ reading versions


def _read_json(path: Path) -> Any:
    """The parsed file, or None when it is missing or not JSON: one bad file must not break the page."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _versions(folder: Path) -> list[Path]:
    """Published versions, newest first: `{snapshot}` symlinks to their stored copies (include.versions)."""
    return [version.path for version in reversed(list_versions(folder))]


def namespaces(root: Path) -> list[Path]:
    """Folders holding published versions: the root and data-set sub-folders (e.g. movielens/)."""
    found: list[Path] = []
    if not root.is_dir():
        return found
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        if read_latest(folder) is not None or list_versions(folder):
            found.append(folder)
        if depth < MAX_DEPTH:
            for child in folder.iterdir():
                inner = child.is_dir() and not child.is_symlink() and not child.name.startswith(".")
                if inner and not Version(child).is_complete():
                    stack.append((child, depth + 1))
    return sorted(found)


def _number(value: Any) -> float | None:
    """A finite JSON number, else None (booleans and strings are not figures)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _with_se(value: float, se: float | None, digits: int, signed: bool = False) -> str:
    text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
    return text if se is None else f"{text} ± {se:.{digits}f}"


def interactions(manifest: dict[str, Any]) -> str:
    """Whether training mixed in collaborative (interaction) signal, and how strongly."""
    collaborative = manifest.get("collaborative")
    if not isinstance(collaborative, dict) or collaborative.get("used") is not True:
        return "content only"
    weight = _number(collaborative.get("weight"))
    return f"w={weight:g}" if weight is not None else "w=?"


def migration(manifest: dict[str, Any]) -> str | None:
    """Items kept / changed / new / removed against the previous version, and full-ID churn after alignment."""
    moved = manifest.get("migration")
    if not isinstance(moved, dict) or moved.get("previous") is None:
        return None
    counts = [f"{name} {_number(moved.get(name)):,.0f}" for name in ("kept", "changed", "new", "removed")
              if _number(moved.get(name)) is not None]
    text = " · ".join(counts)
    align = moved.get("alignment")
    if isinstance(align, dict) and align.get("applied"):
        before, after = _number(align.get("id_churn_before")), _number(align.get("id_churn_after"))
        if before is not None and after is not None:
            text += f" (aligned: churn {before:.0%} -> {after:.0%})"
    return f"vs {moved['previous']}: {text}"


def downstream(version: Path) -> tuple[str, str]:
    """The Downstream column as (text, state): state is passed, failed, skipped, absent or unreadable (the
    Verdict column says what promotion makes of it: rqvae.ids.promotion.judge).

    evaluation.json is written later, by another DAG, and may be absent, half-known or malformed: each case
    gets its own short text instead of an error page.
    """
    path = Version(version).evaluation
    if not path.is_file():
        return "—", "absent"
    document = _read_json(path)
    summary = document.get("summary") if isinstance(document, dict) else None
    status = summary.get("status") if isinstance(summary, dict) else None
    if not isinstance(summary, dict) or status not in (Verdict.PASSED, Verdict.FAILED, SKIPPED):
        return "unreadable", "unreadable"
    if status == Verdict.FAILED:
        return f"FAILED: {summary.get('reason') or 'no reason recorded'}", Verdict.FAILED.value
    if status == SKIPPED:
        return SKIPPED, SKIPPED
    recall, nll = _number(summary.get("recall_at_10")), _number(summary.get("nll"))
    if recall is None or nll is None:
        return "unreadable", "unreadable"
    text = (
        f"passed · R@10 {_with_se(recall, _number(summary.get('recall_at_10_se')), 3)}"
        f" · NLL {_with_se(nll, _number(summary.get('nll_se')), 2)}"
    )
    versus = _number(summary.get("vs_rqkmeans_nll"))
    if versus is not None:
        text += f" (vs rq-kmeans {_with_se(versus, _number(summary.get('vs_rqkmeans_nll_se')), 2, signed=True)})"
    return text, Verdict.PASSED.value


def version_summary(version: Path) -> dict[str, Any]:
    """The figures the index shows, read from the version's manifest (all None if it cannot be read)."""
    files = Version(version)
    manifest = _read_json(files.manifest)
    readable = isinstance(manifest, dict)
    manifest = manifest if readable else {}

    def section(key: str) -> dict[str, Any]:
        value = manifest.get(key)
        return value if isinstance(value, dict) else {}

    metrics = section("metrics")
    encode = metrics.get("encode") if isinstance(metrics.get("encode"), dict) else {}
    codes = metrics.get("codes") if isinstance(metrics.get("codes"), dict) else {}
    evaluation, evaluation_state = downstream(version)
    judged = judge(version)
    return {
        "readable": readable,
        "snapshot": manifest.get("snapshot", version.name),
        "n_items": section("counts").get("n_items"),
        "unique_ratio": encode.get("unique_ratio", codes.get("unique_ratio")),
        "recon_mse": encode.get("recon_mse", codes.get("recon_mse")),
        "collision_mode": section("collisions").get("collision_mode", "dedup"),
        "mode": section("mode").get("used", "retrain"),
        "churn": section("churn").get("churn"),
        "migration": migration(manifest) if readable else None,
        "interactions": interactions(manifest) if readable else None,
        "downstream": evaluation,
        "downstream_state": evaluation_state,
        "verdict": judged.verdict,
        "verdict_detail": judged.detail,
        "created_at": manifest.get("created_at"),
        "report": files.report_index.is_file(),
        "evaluation": files.evaluation.is_file(),
        "evaluation_plots": sorted(p.name for p in version.glob("evaluation*.png") if p.is_file()),
    }




# ------------------------------------------------------------------------------------------ the page

COLUMNS = ["snapshot", "items", "unique ratio", "recon MSE", "mode", "collisions", "churn", "Migration",
           "Interactions", "Downstream", "Verdict", "files", "Serving"]


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _pointer(link: Path) -> str | None:
    """Where a symlink points (relative, as publish and promotion write it), else None."""
    return os.readlink(link) if link.is_symlink() else None


def _files(prefix: str, version: Path, s: dict[str, Any]) -> str:
    base = html.escape(prefix + version.name)
    links = [f'<a href="{base}/{REPORT_DIR}/{REPORT_INDEX}">report</a>' if s["report"] else "–",
             f'<a href="{base}/{MANIFEST}">manifest</a>']
    if s["evaluation"]:
        links.append(f'<a href="{base}/{EVALUATION}">evaluation</a>')
    links += [f'<a href="{base}/{html.escape(name)}">{html.escape(name)}</a>' for name in s["evaluation_plots"]]
    return " · ".join(links)


def _markers(folder: Path, version: Path, latest: str | None, serving: str | None) -> str:
    """` (latest)` and ` (serving)` after a snapshot; serving on an older copy of a re-published snapshot says so."""
    marker = " <b>(latest)</b>" if version.name == latest else ""
    if version.name == serving:
        same = _pointer(version) == _pointer(folder / SERVING)
        marker += " <b>(serving)</b>" if same else " <b>(serving: an earlier copy)</b>"
    return marker


def _promote_cell(prefix: str, version: Path, s: dict[str, Any], serving: str | None, token: str | None) -> str:
    """`serving` on the served row; for editors, per other version, a button that opens the confirmation: the
    question, a reason, `force` for a failed version, and the button that posts. (The UI shows the page in a
    sandboxed iframe without modals, so the confirmation is part of the page, not a `confirm()` dialog.)"""
    if version.name == serving and _pointer(version) == _pointer(version.parent / SERVING):
        return '<td class="serving">serving</td>'
    if token is None or not s["readable"]:
        return "<td>–</td>"
    target = prefix + version.name
    action = "Roll back" if serving is not None and version.name < serving else "Promote"
    question = f"{action} serving to {target}" + (f" (serving {serving} now)" if serving else "") + "?"
    force = ""
    if s["verdict"] == Verdict.FAILED:
        question += " It FAILED the downstream gate: the log will mark the move forced."
        force = '<label><input type="checkbox" name="force" value="true" required> force (failed the gate)</label>'
    q = html.escape
    return (
        f'<td><details class="promote"><summary>{action}…</summary>'
        f'<form method="post" action="promote"><p class="confirm">{q(question)}</p>'
        f'<input type="hidden" name="version" value="{q(target)}">'
        f'<input type="hidden" name="{CSRF_FIELD}" value="{q(token)}">'
        f'<input name="reason" required maxlength="500" placeholder="reason (logged)" '
        f'aria-label="reason for {q(target)}">{force}'
        f'<button type="submit">Yes, {action.lower()} to {q(target)}</button></form></details></td>'
    )


def _row(prefix: str, version: Path, s: dict[str, Any], marker: str, promote: str) -> str:
    if not s["readable"]:
        snapshot = f"{_cell(version.name)}{marker}"
        return f'<tr><td>{snapshot}</td><td colspan="{len(COLUMNS) - 3}">unreadable manifest</td>' \
               f"<td>{_files(prefix, version, s)}</td>{promote}</tr>"
    state = s["downstream_state"]
    title = f' title="{html.escape(s["downstream"])}"' if state == Verdict.FAILED else ""
    verdict = str(s["verdict"])
    detail = f' title="{html.escape(s["verdict_detail"])}"' if s["verdict_detail"] else ""
    cells = [f"{_cell(s['snapshot'])}{marker}", _cell(s["n_items"]), _cell(s["unique_ratio"]), _cell(s["recon_mse"]),
             _cell(s["mode"]), _cell(s["collision_mode"]), _cell(s["churn"]), _cell(s["migration"]),
             _cell(s["interactions"])]
    return (
        "<tr>" + "".join(f"<td>{c}</td>" for c in cells)
        + f'<td class="downstream {state}"{title}>{_cell(s["downstream"])}</td>'
        + f'<td class="verdict {verdict.replace(" ", "-")}"{detail}>{_cell(verdict)}</td>'
        + f"<td>{_files(prefix, version, s)}</td>{promote}</tr>"
    )


def _aliases(folder: Path, latest: str | None, serving: str | None) -> str:
    """One line per namespace: what `serving` names (and the move that set it) and what `latest` names."""
    if serving is None:
        served = ("<b>none yet</b>: no version has passed the downstream gate or been promoted by hand, so "
                  "consumers reading <code>serving</code> find nothing")
    else:
        served = f"<b>{_cell(serving)}</b>"
        pointer = _read_json(folder / SERVING_JSON)
        move = pointer.get("promotion") if isinstance(pointer, dict) else None
        if isinstance(move, dict) and move.get("to") == serving:
            forced = ", forced" if move.get("forced") else ""
            served += (f" ({_cell(move.get('verdict'))}; {_cell(move.get('kind'))}{forced} by {_cell(move.get('by'))}"
                       f" at {_cell(move.get('at'))})")
    return (f'<p class="aliases">serving (what consumers read): {served} · latest (newest published): '
            f"<b>{_cell(latest)}</b></p>")


def _log(folder: Path) -> str:
    """The newest lines of `promotions.jsonl`, newest first."""
    moves = read_promotions(folder)
    if not moves:
        return f"<p>No promotions yet ({PROMOTIONS} is empty).</p>"
    rows = []
    for move in reversed(moves[-LOG_ROWS:]):
        kind = _cell(move.get("kind")) + (" <b>(forced)</b>" if move.get("forced") else "")
        rollback = ' class="rollback"' if move.get("kind") == PromotionKind.ROLLBACK else ""
        cells = [_cell(move.get("at")), f"{_cell(move.get('by'))} ({_cell(move.get('via'))})", kind,
                 _cell(move.get("from")), _cell(move.get("to")), _cell(move.get("verdict")), _cell(move.get("reason"))]
        rows.append(f"<tr{rollback}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    earlier = f"<p>{len(moves) - LOG_ROWS} earlier moves in {PROMOTIONS}.</p>" if len(moves) > LOG_ROWS else ""
    header = "".join(f"<th>{c}</th>" for c in ("when", "who", "kind", "from", "to", "verdict", "reason"))
    return f'<table class="log"><thead><tr>{header}</tr></thead><tbody>{"".join(rows)}</tbody></table>{earlier}'


def _frame(title: str, heading: str, link: str) -> str:
    return f"<h2>{html.escape(heading)}</h2><iframe src=\"{html.escape(link)}\" title=\"{title}\"></iframe>"


def render_index(root: Path, promote_token: str | None = None) -> str:
    """The page. `promote_token`: the CSRF token of a user who may promote (None: no promote buttons)."""
    sections = []
    frames: dict[str, str] = {}
    header = "<thead><tr>" + "".join(f"<th>{name}</th>" for name in COLUMNS) + "</tr></thead>"
    for folder in namespaces(root):
        rel = folder.relative_to(root).as_posix()
        prefix = "" if rel == "." else f"{rel}/"
        latest, serving = read_latest(folder), read_serving(folder)
        rows = []
        for version in _versions(folder):
            s = version_summary(version)
            promote = _promote_cell(prefix, version, s, serving, promote_token)
            rows.append(_row(prefix, version, s, _markers(folder, version, latest, serving), promote))
        link = f"{prefix}{{}}/{REPORT_DIR}/{REPORT_INDEX}"
        serving_copy = _pointer(folder / SERVING)
        also_serving = latest is not None and serving_copy is not None and serving_copy == _pointer(folder / latest)
        if latest and Version(folder / latest).report_index.is_file() and "latest" not in frames:
            heading = f"Latest report{' (also serving)' if also_serving else ''}: {prefix}{latest}"
            frames["latest"] = _frame("latest report", heading, link.format(latest))
        has_report = serving is not None and Version(folder / SERVING).report_index.is_file()
        if has_report and not also_serving and "serving" not in frames:
            frames["serving"] = _frame("serving report", f"Serving report: {prefix}{serving}", link.format(SERVING))
        title = "publish root" if rel == "." else rel
        sections.append(f"<h2>{html.escape(title)}</h2>{_aliases(folder, latest, serving)}"
                        f"<table>{header}<tbody>{''.join(rows)}</tbody></table>"
                        f"<h3>Promotion log</h3>{_log(folder)}")
    body = "".join(sections) or "<p>No published versions yet.</p>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Semantic IDs</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.25rem 0.6rem; font-size: 0.9rem; }}
th {{ background: #f4f4f4; }}
td.failed {{ background: #fde2e1; color: #8a1c1c; font-weight: 600; }}
td.verdict.passed, td.serving {{ background: #e3f4e1; color: #1d5e18; font-weight: 600; }}
td.unreadable {{ color: #8a5a00; }}
tr.rollback td {{ background: #fff4dc; }}
details.promote form {{ display: flex; flex-direction: column; gap: 0.3rem; margin-top: 0.3rem; }}
details.promote p.confirm {{ margin: 0; max-width: 18rem; font-weight: 600; }}
iframe {{ width: 100%; height: 80vh; border: 1px solid #ddd; }}
</style></head>
<body><h1>Published semantic IDs</h1>{body}{frames.get("serving", "")}{frames.get("latest", "")}</body></html>
"""
