"""Airflow UI plugin: the published semantic-ID versions, their reports and the `serving` alias, as a page in
the Airflow 3 UI.

A FastAPI sub-app mounted by the API server at `/semantic-ids` shows the page (semantic_ids_page: every version
per data-set namespace with its figures and verdict, which one `serving` and `latest` name, the promotion log,
the serving report inline), serves each version's `report/` folder, manifest and evaluation files, and takes
promotions and rollbacks (`POST /semantic-ids/promote`); an external view puts it in the UI's Browse menu
(shown in an iframe at /plugin/semantic-ids). Only those files are served, never the IDs or the model, and no
path can leave the publish root.

Airflow authenticates its own routers only: a mounted plugin app inherits none of that, so every route here
asks Airflow's auth manager itself (the UI's `_token` cookie, or an `Authorization: Bearer` JWT) and requires
read access to the runs of the `rqvae_semantic_ids` DAG, since manifests carry run ids and run configs.
Promoting needs edit access to that DAG (what Airflow's own API asks to change a DAG). A promotion sent with
the session cookie (the page's form) must carry the CSRF token the page was rendered with, signed with the
API server's secret key for that user; one sent with a bearer token (an API client) needs none, as on the
core API, since a browser never adds that header by itself. Importing this module is cheap (no torch, no
pandas, no API-server security module): the API server imports every plugin at start, and so does every task
process, for macros.
"""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from semantic_ids_page import CSRF_FIELD, MAX_DEPTH, namespaces, render_index
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from include.versions import (
    EVALUATION,
    MANIFEST,
    REPORT_DIR,
    REPORT_INDEX,
    Version,
    read_latest,
    stored_copy_as_name,
)

log = logging.getLogger(__name__)

URL_PREFIX = "/semantic-ids"
DAG_ID = "rqvae_semantic_ids"
REPORT_SUFFIXES = {".html", ".png", ".json"}
VERSION_FILES = {MANIFEST, EVALUATION}  # plus evaluation*.png, next to the manifest
MAX_PATH_CHARS = 1024  # far above any real report path; longer requests are refused before touching the disk
MAX_NAME_BYTES = 255  # the filesystem's own limit: a longer name would raise instead of "not found"
MAX_FORM_BYTES = 16 * 1024  # a promotion is a version, a reason and a token
CSRF_SALT = "semantic-ids-promote"  # tokens signed for this form are good for nothing else
CSRF_MAX_AGE_S = 12 * 3600  # a page left open longer is reloaded before promoting
TRUE_VALUES = {"true", "1", "on", "yes"}  # how a form or JSON says `force`

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


def require_editor(request: Request, user: Annotated[BaseUser, Depends(current_user)]) -> None:
    """403 unless the user may edit the DAG (PUT, as Airflow's own API asks to change a DAG): who may promote."""
    from airflow.api_fastapi.core_api.security import requires_access_dag

    requires_access_dag("PUT", param_dag_id=DAG_ID)(request, user)


def may_promote(request: Request, user: BaseUser) -> bool:
    """Whether the page shows this user the promote buttons (the route checks again, whatever the page showed)."""
    try:
        require_editor(request, user)
    except HTTPException:
        return False
    return True


def _csrf_serializer() -> Any:
    from airflow.configuration import conf
    from itsdangerous import URLSafeTimedSerializer

    return URLSafeTimedSerializer(conf.get("api", "secret_key"), salt=CSRF_SALT)


def csrf_token(user: BaseUser) -> str:
    """The token the page puts in each promote form: the user's id, signed and timed with the API secret key."""
    return str(_csrf_serializer().dumps(str(user.get_id())))


def check_csrf(token: Any, user: BaseUser) -> None:
    """403 unless `token` was signed for this user within CSRF_MAX_AGE_S: another site's form cannot know it."""
    from itsdangerous import BadSignature

    try:
        valid = isinstance(token, str) and bool(token) and \
            _csrf_serializer().loads(token, max_age=CSRF_MAX_AGE_S) == str(user.get_id())
    except BadSignature:  # tampered, expired or another user's
        valid = False
    if not valid:
        raise HTTPException(403, "CSRF token missing or invalid: reload the Semantic IDs page and try again")


def _is_page_navigation(request: Request) -> bool:
    """A browser opening a page (address bar, link, iframe, form), as opposed to a script or an API client."""
    headers = request.headers
    return headers.get("sec-fetch-mode") == "navigate" and headers.get("sec-fetch-dest") in ("document", "iframe")


async def refused(request: Request, exc: StarletteHTTPException) -> Response:
    """Send a logged-out browser to the UI's login page (back here afterwards); show a refused form's reason as a
    page with a way back; everyone else gets the error as JSON."""
    if exc.status_code == 401 and _is_page_navigation(request):
        from airflow.api_fastapi.app import get_auth_manager

        status = 307 if request.method == "GET" else 303  # after a POST, the login page is fetched with GET
        return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)), status_code=status)
    if request.method == "POST" and _is_page_navigation(request):
        page = (f"<!doctype html><title>Not promoted</title><h1>Not promoted ({exc.status_code})</h1>"
                f"<p>{html.escape(str(exc.detail))}</p><p><a href=\"./\">Back to the Semantic IDs page</a></p>")
        return HTMLResponse(page, status_code=exc.status_code)
    return await http_exception_handler(request, exc)


# ------------------------------------------------------------------------------------------ promotion


async def posted_fields(request: Request) -> dict[str, Any]:
    """The fields of a promotion: a form (the page) or a JSON object (an API client)."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise HTTPException(413, f"a promotion is at most {MAX_FORM_BYTES} bytes")
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            fields = json.loads(body or b"{}")
        except ValueError:
            raise HTTPException(400, "the body is not JSON") from None
        if not isinstance(fields, dict):
            raise HTTPException(400, "send a JSON object: version, reason, force")
        return fields
    if kind == "application/x-www-form-urlencoded":
        parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True, max_num_fields=20)
        return {name: values[-1] for name, values in parsed.items()}
    raise HTTPException(415, "send the promotion as a form (application/x-www-form-urlencoded) or as JSON")


def emit_serving_event(extra: dict[str, Any]) -> bool:
    """Record a `semantic_ids_serving` asset event, as the core API's `POST /assets/events` does, so consumers
    scheduled on the asset run for a promotion made here too. False when the asset is not registered yet (no
    DAG declaring it has been parsed): the move stands, and the log and serving.json say it."""
    from airflow.assets.manager import asset_manager
    from airflow.models.asset import AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from include.dag_defaults import SERVING_ASSET

    with create_session() as session:
        asset = session.scalar(select(AssetModel).where(AssetModel.name == SERVING_ASSET).limit(1))
        if asset is None:
            log.warning("asset %s is not registered yet: no event for this promotion", SERVING_ASSET)
            return False
        event = asset_manager.register_asset_change(asset=asset, extra=extra, source_is_api=True, session=session)
    return event is not None


def promote_request(root: Path, fields: dict[str, Any], user: BaseUser, via: str) -> dict[str, Any]:
    """Move `serving` as a request asks (rqvae.ids.promotion); HTTP errors for what the library refuses.

    An unknown or malformed version is 404 whatever the reason (nothing about the disk is told), a failed one
    without force 409, a missing reason 400; nothing moves then.
    """
    from include.promotion import event_extra, promoted, resolve_version
    from include.settings import PathOutsideRootError
    from rqvae.ids.promotion import NeedsForce, ReasonRequired, UnknownVersion, promote

    version = fields.get("version")
    parts = _request_parts(version) if isinstance(version, str) else None
    if parts is None or len(parts) > MAX_DEPTH + 1:
        raise HTTPException(404, "Not Found")
    reason = fields.get("reason")
    force = fields.get("force") is True or str(fields.get("force", "")).strip().lower() in TRUE_VALUES
    try:
        folder, snapshot = resolve_version(root, "/".join(parts))
        outcome = promote(folder, snapshot, by=user.get_name(), via=via, reason=str(reason or ""), force=force)
    except (UnknownVersion, PathOutsideRootError, OSError):
        raise HTTPException(404, "Not Found") from None
    except NeedsForce as exc:
        raise HTTPException(409, str(exc)) from None
    except ReasonRequired as exc:
        raise HTTPException(400, str(exc)) from None
    result = promoted(root, folder, snapshot, outcome)
    event = emit_serving_event(event_extra(result)) if outcome.moved else False
    return {**outcome.to_dict(), "version": result["version"], "asset_event": event}


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
    def index(request: Request, user: Annotated[BaseUser, Depends(current_user)]) -> str:
        return render_index(root(), csrf_token(user) if may_promote(request, user) else None)

    @app.post("/promote", dependencies=[Depends(require_editor)])
    async def promote_version(
        request: Request,
        user: Annotated[BaseUser, Depends(current_user)],
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Response:
        """Promote or roll back: 303 back to the page for its form, the outcome as JSON for an API client."""
        fields = await posted_fields(request)
        by_token = credentials is not None and credentials.scheme.lower() == "bearer"
        if not by_token:
            check_csrf(fields.get(CSRF_FIELD), user)
        via = "api" if by_token else "ui"
        # the root (an Airflow Variable maybe), the lock and the asset event block: off the event loop
        answer = await run_in_threadpool(lambda: promote_request(root(), fields, user, via))
        if _is_page_navigation(request):
            return RedirectResponse("./", status_code=303)
        return JSONResponse(answer)

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
