"""Airflow UI plugin: the published semantic-ID versions and their reports, as a page in the Airflow 3 UI.

A FastAPI sub-app mounted by the API server at `/semantic-ids` lists every published version (per data-set
namespace: snapshot, items, unique-ID ratio, recon MSE, churn, interactions, downstream evaluation, which one
`latest` names) and serves each version's `report/` folder, manifest and evaluation files; an external view
puts it in the UI's Browse menu (shown in an iframe at /plugin/semantic-ids). Only those files are served,
never the IDs or the model, and no path can leave the publish root.

Airflow authenticates its own routers only: a mounted plugin app inherits none of that, so every route here
asks Airflow's auth manager itself (the UI's `_token` cookie, or an `Authorization: Bearer` JWT) and requires
read access to the runs of the `rqvae_semantic_ids` DAG, since manifests carry run ids and run configs.
Importing this module is cheap (no torch, no pandas, no API-server security module): the API server imports
every plugin at start, and so does every task process, for macros.
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Annotated, Any

from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from include.versions import (
    EVALUATION,
    MANIFEST,
    REPORT_DIR,
    REPORT_INDEX,
    Version,
    list_versions,
    read_latest,
    stored_copy_as_name,
)

URL_PREFIX = "/semantic-ids"
DAG_ID = "rqvae_semantic_ids"
REPORT_SUFFIXES = {".html", ".png", ".json"}
VERSION_FILES = {MANIFEST, EVALUATION}  # plus evaluation*.png, next to the manifest
MAX_DEPTH = 3  # namespaces nest at most this deep under the publish root (e.g. movielens/)
MAX_PATH_CHARS = 1024  # far above any real report path; longer requests are refused before touching the disk
MAX_NAME_BYTES = 255  # the filesystem's own limit: a longer name would raise instead of "not found"

_bearer = HTTPBearer(auto_error=False)


def default_publish_root() -> Path:
    """The pipeline's publish root as the DAGs resolve it (include.settings.configured_roots: environment, then
    Airflow Variables, then the project default), read at each request, so a changed Variable applies at once."""
    from include.settings import configured_roots

    return configured_roots().publish


# ------------------------------------------------------------------------------------------ access control


async def current_user(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> BaseUser:
    """The caller as Airflow's auth manager sees them (bearer JWT first, else the UI's `_token` cookie).

    Airflow's own `get_user` does the work; it is imported here, at request time, so that processes that
    merely import plugins (task runners) do not load the API server's security module.
    """
    from airflow.api_fastapi.core_api.security import get_user

    return await get_user(request, bearer_credentials=credentials)


def require_reader(request: Request, user: Annotated[BaseUser, Depends(current_user)]) -> None:
    """403 unless the user may read the DAG's runs: what the runs API asks for the same run ids and configs."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
    from airflow.api_fastapi.core_api.security import requires_access_dag

    requires_access_dag("GET", DagAccessEntity.RUN, param_dag_id=DAG_ID)(request, user)


def _is_page_navigation(request: Request) -> bool:
    """A browser opening a page (address bar, link, iframe), as opposed to a script or an API client."""
    headers = request.headers
    return headers.get("sec-fetch-mode") == "navigate" and headers.get("sec-fetch-dest") in ("document", "iframe")


async def refused(request: Request, exc: StarletteHTTPException) -> Response:
    """Send a logged-out browser to the UI's login page (back here afterwards); everyone else gets the error."""
    if exc.status_code == 401 and _is_page_navigation(request):
        from airflow.api_fastapi.app import get_auth_manager

        return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)))
    return await http_exception_handler(request, exc)


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
    """The Downstream column as (text, state): state is passed, failed, skipped, absent or unreadable.

    evaluation.json is written later, by another DAG, and may be absent, half-known or malformed: each case
    gets its own short text instead of an error page.
    """
    path = Version(version).evaluation
    if not path.is_file():
        return "—", "absent"
    document = _read_json(path)
    summary = document.get("summary") if isinstance(document, dict) else None
    status = summary.get("status") if isinstance(summary, dict) else None
    if not isinstance(summary, dict) or status not in ("passed", "failed", "skipped"):
        return "unreadable", "unreadable"
    if status == "failed":
        return f"FAILED: {summary.get('reason') or 'no reason recorded'}", "failed"
    if status == "skipped":
        return "skipped", "skipped"
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
    return text, "passed"


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
        "created_at": manifest.get("created_at"),
        "report": files.report_index.is_file(),
        "evaluation": files.evaluation.is_file(),
        "evaluation_plots": sorted(p.name for p in version.glob("evaluation*.png") if p.is_file()),
    }


# ------------------------------------------------------------------------------------------ the page

COLUMNS = ["snapshot", "items", "unique ratio", "recon MSE", "mode", "collisions", "churn", "Migration",
           "Interactions", "Downstream", "files"]


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _files(prefix: str, version: Path, s: dict[str, Any]) -> str:
    base = html.escape(prefix + version.name)
    links = [f'<a href="{base}/{REPORT_DIR}/{REPORT_INDEX}">report</a>' if s["report"] else "–",
             f'<a href="{base}/{MANIFEST}">manifest</a>']
    if s["evaluation"]:
        links.append(f'<a href="{base}/{EVALUATION}">evaluation</a>')
    links += [f'<a href="{base}/{html.escape(name)}">{html.escape(name)}</a>' for name in s["evaluation_plots"]]
    return " · ".join(links)


def _row(prefix: str, version: Path, s: dict[str, Any], marker: str) -> str:
    if not s["readable"]:
        snapshot = f"{_cell(version.name)}{marker}"
        return f'<tr><td>{snapshot}</td><td colspan="{len(COLUMNS) - 2}">unreadable manifest</td>' \
               f"<td>{_files(prefix, version, s)}</td></tr>"
    state = s["downstream_state"]
    title = f' title="{html.escape(s["downstream"])}"' if state == "failed" else ""
    cells = [f"{_cell(s['snapshot'])}{marker}", _cell(s["n_items"]), _cell(s["unique_ratio"]), _cell(s["recon_mse"]),
             _cell(s["mode"]), _cell(s["collision_mode"]), _cell(s["churn"]), _cell(s["migration"]),
             _cell(s["interactions"])]
    return (
        "<tr>" + "".join(f"<td>{c}</td>" for c in cells)
        + f'<td class="downstream {state}"{title}>{_cell(s["downstream"])}</td>'
        + f"<td>{_files(prefix, version, s)}</td></tr>"
    )


def render_index(root: Path) -> str:
    sections = []
    latest_frame = ""
    header = "<thead><tr>" + "".join(f"<th>{name}</th>" for name in COLUMNS) + "</tr></thead>"
    for folder in namespaces(root):
        rel = folder.relative_to(root).as_posix()
        prefix = "" if rel == "." else f"{rel}/"
        latest = read_latest(folder)
        rows = []
        for version in _versions(folder):
            s = version_summary(version)
            marker = " <b>(latest)</b>" if version.name == latest else ""
            rows.append(_row(prefix, version, s, marker))
            if marker and s["report"] and not latest_frame:
                link = html.escape(f"{prefix}{version.name}/{REPORT_DIR}/{REPORT_INDEX}")
                latest_frame = (
                    f'<h2>Latest report: {html.escape(prefix + version.name)}</h2>'
                    f'<iframe src="{link}" title="latest report"></iframe>'
                )
        title = "publish root" if rel == "." else rel
        sections.append(f"<h2>{html.escape(title)}</h2><table>{header}<tbody>{''.join(rows)}</tbody></table>")
    body = "".join(sections) or "<p>No published versions yet.</p>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Semantic IDs</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.25rem 0.6rem; font-size: 0.9rem; }}
th {{ background: #f4f4f4; }}
td.failed {{ background: #fde2e1; color: #8a1c1c; font-weight: 600; }}
td.unreadable {{ color: #8a5a00; }}
iframe {{ width: 100%; height: 80vh; border: 1px solid #ddd; }}
</style></head>
<body><h1>Published semantic IDs</h1>{body}{latest_frame}</body></html>
"""


# ------------------------------------------------------------------------------------------ serving files


def _request_parts(path: str) -> list[str] | None:
    """The path's segments, or None when it is malformed: NUL, backslash, dot segment or over-long.

    Dot segments cover `..` (in any encoding: the server decodes `%2e%2e` and `%2F` before routing) and the
    publisher's hidden staging folders; the length caps keep the filesystem from raising on a name it would
    never hold.
    """
    if len(path) > MAX_PATH_CHARS or "\x00" in path or "\\" in path:
        return None
    parts = [part for part in path.split("/") if part]
    if not parts or any(p.startswith(".") or len(p.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES for p in parts):
        return None
    return parts


def servable(base: Path, target: Path) -> bool:
    """Report files of a version, and its manifest / evaluation files: judged on the resolved path."""
    rel = target.relative_to(base).parts
    if any(part.startswith(".") for part in stored_copy_as_name(rel)):  # hidden parts other than stored copies
        return False
    if REPORT_DIR in rel[1:-1]:
        version = Version(base.joinpath(*rel[: rel.index(REPORT_DIR, 1)]))
        return target.suffix in REPORT_SUFFIXES and version.is_complete()
    plot = target.name.startswith("evaluation") and target.suffix == ".png"
    return (target.name in VERSION_FILES or plot) and Version(target.parent).is_complete()


def create_app(publish_root: str | Path | None = None) -> FastAPI:
    """The sub-app; `publish_root` None reads the pipeline's setting at each request (it may change)."""
    app = FastAPI(
        title="Semantic IDs", docs_url=None, redoc_url=None, openapi_url=None,
        dependencies=[Depends(require_reader)],  # every route: no anonymous reader, no reader without access
    )
    app.add_exception_handler(StarletteHTTPException, refused)  # type: ignore[arg-type]

    def root() -> Path:
        return Path(publish_root) if publish_root is not None else default_publish_root()

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return render_index(root())

    @app.get("/latest")
    def latest_report() -> RedirectResponse:
        base = root()
        for folder in namespaces(base):
            name = read_latest(folder)
            if name and Version(folder / name).report_index.is_file():
                rel = (folder / name).relative_to(base).as_posix()
                return RedirectResponse(f"{rel}/{REPORT_DIR}/{REPORT_INDEX}")
        raise HTTPException(404, "no published version with a report yet")

    @app.get("/{path:path}")
    def report_file(path: str) -> FileResponse:
        parts = _request_parts(path)
        if parts is not None:
            try:
                base = root().resolve()
                target = base.joinpath(*parts).resolve()
                if base in target.parents and servable(base, target) and target.is_file():
                    return FileResponse(target)
            except (OSError, ValueError):
                pass
        raise HTTPException(404, "Not Found")  # the same answer for every refusal: nothing about the disk

    return app


class SemanticIdsPlugin(AirflowPlugin):
    """Registers the sub-app and its entry in the UI's Browse menu."""

    name = "semantic_ids"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Semantic IDs"}]
    external_views = [
        {
            "name": "Semantic IDs",
            "href": f"{URL_PREFIX}/",
            "destination": "nav",
            "category": "browse",
            "url_route": "semantic-ids",
        }
    ]
