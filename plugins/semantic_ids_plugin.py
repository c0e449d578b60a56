"""Airflow UI plugin: the published semantic-ID versions and their reports, as a page in the Airflow 3 UI.

A FastAPI sub-app mounted by the API server at `/semantic-ids` lists every published version (per data-set
namespace: snapshot, items, unique-ID ratio, recon MSE, churn, which one `latest` names) and serves each
version's `report/` folder and manifest; an external view puts it in the UI's Browse menu (shown in an
iframe at /plugin/semantic-ids). Only report files and manifests are served, never the IDs or the model, and
no path can leave the publish root. Importing this module is cheap (no torch, no pandas): the API server
imports every plugin at start.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path
from typing import Any

from airflow.plugins_manager import AirflowPlugin
from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

URL_PREFIX = "/semantic-ids"
SERVED_SUFFIXES = {".html", ".png", ".json"}
MAX_DEPTH = 3  # namespaces nest at most this deep under the publish root (e.g. movielens/)


def default_publish_root() -> Path:
    """The pipeline's publish root (env var, else the project default), as the DAG resolves it."""
    from include.settings import load_roots

    return load_roots().publish


def _latest(folder: Path) -> str | None:
    link = folder / "latest"
    if link.is_symlink():
        return Path(os.readlink(link)).name
    pointer = folder / "latest.json"
    if pointer.is_file():
        return str(json.loads(pointer.read_text()).get("snapshot"))
    return None


def _versions(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.is_symlink() and (p / "manifest.json").is_file()),
        key=lambda p: p.name,
        reverse=True,
    )


def namespaces(root: Path) -> list[Path]:
    """Folders holding published versions: the root and data-set sub-folders (e.g. movielens/)."""
    found: list[Path] = []
    if not root.is_dir():
        return found
    stack = [(root, 0)]
    while stack:
        folder, depth = stack.pop()
        if _latest(folder) is not None or any((p / "manifest.json").is_file() for p in folder.iterdir() if p.is_dir()):
            found.append(folder)
        if depth < MAX_DEPTH:
            for child in folder.iterdir():
                inner = child.is_dir() and not child.is_symlink() and not child.name.startswith(".")
                if inner and not (child / "manifest.json").is_file():
                    stack.append((child, depth + 1))
    return sorted(found)


def version_summary(version: Path) -> dict[str, Any]:
    """The figures the index shows, read from the version's manifest."""
    manifest = json.loads((version / "manifest.json").read_text())
    metrics = manifest.get("metrics", {})
    encode, codes = metrics.get("encode", {}), metrics.get("codes", {})
    churn = manifest.get("churn") or {}
    return {
        "snapshot": manifest.get("snapshot", version.name),
        "n_items": manifest.get("counts", {}).get("n_items"),
        "unique_ratio": encode.get("unique_ratio", codes.get("unique_ratio")),
        "recon_mse": encode.get("recon_mse", codes.get("recon_mse")),
        "collision_mode": (manifest.get("collisions") or {}).get("collision_mode", "dedup"),
        "mode": (manifest.get("mode") or {}).get("used", "retrain"),
        "churn": churn.get("churn"),
        "created_at": manifest.get("created_at"),
        "report": (version / "report" / "index.html").is_file(),
    }


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def render_index(root: Path) -> str:
    sections = []
    latest_frame = ""
    for folder in namespaces(root):
        rel = folder.relative_to(root).as_posix()
        prefix = "" if rel == "." else f"{rel}/"
        latest = _latest(folder)
        rows = []
        for version in _versions(folder):
            s = version_summary(version)
            link = f"{prefix}{version.name}/report/index.html"
            report = f'<a href="{html.escape(link)}">report</a>' if s["report"] else "–"
            manifest = f'<a href="{html.escape(prefix + version.name)}/manifest.json">manifest</a>'
            marker = " <b>(latest)</b>" if version.name == latest else ""
            rows.append(
                f"<tr><td>{_cell(s['snapshot'])}{marker}</td><td>{_cell(s['n_items'])}</td>"
                f"<td>{_cell(s['unique_ratio'])}</td><td>{_cell(s['recon_mse'])}</td><td>{_cell(s['mode'])}</td>"
                f"<td>{_cell(s['collision_mode'])}</td><td>{_cell(s['churn'])}</td><td>{report} · {manifest}</td></tr>"
            )
            if marker and s["report"] and not latest_frame:
                latest_frame = (
                    f'<h2>Latest report: {html.escape(prefix + version.name)}</h2>'
                    f'<iframe src="{html.escape(link)}" title="latest report"></iframe>'
                )
        title = "publish root" if rel == "." else rel
        sections.append(
            f"<h2>{html.escape(title)}</h2><table><tr><th>snapshot</th><th>items</th><th>unique ratio</th>"
            f"<th>recon MSE</th><th>mode</th><th>collisions</th><th>churn</th><th>files</th></tr>"
            + "".join(rows) + "</table>"
        )
    body = "".join(sections) or "<p>No published versions yet.</p>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Semantic IDs</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }}
table {{ border-collapse: collapse; margin-bottom: 1.5rem; }}
th, td {{ border: 1px solid #ccc; padding: 0.25rem 0.6rem; font-size: 0.9rem; }}
th {{ background: #f4f4f4; }}
iframe {{ width: 100%; height: 80vh; border: 1px solid #ddd; }}
</style></head>
<body><h1>Published semantic IDs</h1>{body}{latest_frame}</body></html>
"""


def create_app(publish_root: str | Path | None = None) -> FastAPI:
    """The sub-app; `publish_root` None reads the pipeline's setting at each request (it may change)."""
    app = FastAPI(title="Semantic IDs", docs_url=None, redoc_url=None, openapi_url=None)

    def root() -> Path:
        return Path(publish_root) if publish_root is not None else default_publish_root()

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return render_index(root())

    @app.get("/latest")
    def latest_report() -> RedirectResponse:
        base = root()
        for folder in namespaces(base):
            name = _latest(folder)
            if name and (folder / name / "report" / "index.html").is_file():
                rel = (folder / name).relative_to(base).as_posix()
                return RedirectResponse(f"{rel}/report/index.html")
        raise HTTPException(404, "no published version with a report yet")

    @app.get("/{path:path}")
    def report_file(path: str) -> FileResponse:
        base = root().resolve()
        target = (base / path).resolve()
        parts = Path(path).parts
        allowed = target.suffix in SERVED_SUFFIXES and ("report" in parts or target.name == "manifest.json")
        if base not in target.parents or not allowed or not target.is_file():
            raise HTTPException(404, f"no report file {path!r}")
        return FileResponse(target)

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
