"""The Airflow UI plugin: discovered by Airflow's plugin manager, mounted like the API server mounts it,
listing published versions (latest marked, interactions, downstream evaluation) and serving their reports and
evaluation files, and nothing outside them; every route behind Airflow's auth manager.

These run the sub-app in-process (TestClient) with Airflow's real simple auth manager and JWTs; the same
routes are refused to anonymous callers on a real `airflow standalone` in tests/system/test_security.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from include.layout import RunFolder
from include.params import RunOptions
from include.stages.load_embeddings import load_embeddings
from include.stages.publish import publish
from include.stages.train_rqvae import train_rqvae
from include.stages.validate_codes import validate_codes
from include.stages.validate_dims import validate_dims
from rqvae.config import CodeChecks, InputChecks, ModelConfig, RetrainPolicy, TrainConfig
from rqvae.io.synth import synth
from tests.helpers import encode_all, run_info

ROUTES = ["/semantic-ids/", "/semantic-ids/latest", "/semantic-ids/2026-03-01/manifest.json",
          "/semantic-ids/2026-03-01/report/index.html", "/semantic-ids/2026-03-02/evaluation.json",
          "/semantic-ids/2026-03-02/evaluation_recall.png", "/semantic-ids/no/such/file.png"]
PASSED = {"status": "passed", "recall_at_10": 0.0691, "recall_at_10_se": 0.0101, "nll": 5.2149, "nll_se": 0.081,
          "vs_rqkmeans_nll": -0.0512, "vs_rqkmeans_nll_se": 0.0298, "reason": ""}


@pytest.fixture(scope="module")
def published_root(tmp_path_factory) -> Path:
    """Two real published versions (2026-03-01, 2026-03-02) of a small run, each with its report; the newer
    one also has a downstream evaluation with a plot, as the evaluation DAG leaves it."""
    base = tmp_path_factory.mktemp("plugin")
    root = base / "published"
    for day in ("2026-03-01", "2026-03-02"):
        work = base / "work" / day
        folder = RunFolder(work)
        loaded = load_embeddings(synth(base / "emb" / day, 2000, dim=8, seed=2), work)
        validate_dims(loaded["path"], folder.input_report, InputChecks(expected_dim=8, min_items=1))
        run = run_info(work, publish_root=root, snapshot=day)
        trained = train_rqvae(run, loaded["path"], ModelConfig(input_dim=8, num_codebooks=2, codebook_size=8),
                              TrainConfig(epochs=1, batch_size=256), RetrainPolicy())
        encoded = encode_all(trained["model_path"], loaded["path"], work, plan=trained["plan"],
                             publish_root=root, snapshot=day)
        validate_codes(encoded["path"], loaded["path"], folder.codes_report, CodeChecks(min_unique_ratio=0.01),
                       codebook_sizes=encoded["codebook_size"], recon_mse=encoded["recon_mse"])
        publish(run, RunOptions(), loaded=None, trained=trained, encoded=encoded)
    (root / "2026-03-02" / "evaluation.json").write_text(json.dumps({"summary": PASSED}))
    (root / "2026-03-02" / "evaluation_recall.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / "secret.txt").write_text("not for the UI")
    return root


@pytest.fixture(scope="module")
def tokens(airflow_db) -> dict[str, str]:
    """JWTs signed by Airflow's own auth manager: an admin, a viewer (the least a reader needs) and a user
    without any role (authenticated, authorised for nothing)."""
    from airflow.api_fastapi.app import init_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    manager = init_auth_manager()
    users = {"admin": "admin", "viewer": "viewer", "nobody": None}
    return {name: manager.generate_jwt(SimpleAuthManagerUser(username=name, role=role)) for name, role in users.items()}


@pytest.fixture()
def app(published_root, tokens, monkeypatch) -> FastAPI:
    """The plugin's sub-app mounted by Airflow's own init_plugins, reading the root from the environment."""
    from airflow.api_fastapi.app import init_plugins

    monkeypatch.setenv("RQVAE_PUBLISH_ROOT", str(published_root))
    app = FastAPI()
    init_plugins(app)
    return app


@pytest.fixture()
def anonymous(app) -> TestClient:
    return TestClient(app)


@pytest.fixture()
def client(app, tokens) -> TestClient:
    """A logged-in browser: the UI's `_token` cookie, as the page in the UI's iframe sends it."""
    client = TestClient(app)
    client.cookies.set("_token", tokens["admin"])
    return client


def as_user(app: FastAPI, token: str) -> TestClient:
    return TestClient(app, headers={"Authorization": f"Bearer {token}"})


def test_airflow_discovers_the_plugin_and_its_menu_entry():
    from airflow import plugins_manager

    apps, _ = plugins_manager.get_fastapi_plugins()
    assert any(a["url_prefix"] == "/semantic-ids" and a["name"] == "Semantic IDs" for a in apps)
    views, _ = plugins_manager._get_ui_plugins()
    view = next(v for v in views if v["name"] == "Semantic IDs")
    assert view["href"] == "/semantic-ids/" and view["url_route"] == "semantic-ids"
    assert plugins_manager.get_import_errors() == {}


# ------------------------------------------------------------------------------------------ access


@pytest.mark.parametrize("route", ROUTES)
def test_every_route_refuses_anonymous_callers(anonymous, published_root, route):
    answer = anonymous.get(route, follow_redirects=False)
    assert answer.status_code == 401 and answer.json() == {"detail": "Not authenticated"}
    assert str(published_root) not in answer.text


@pytest.mark.parametrize("route", ROUTES)
def test_a_logged_out_browser_is_sent_to_the_login_page(anonymous, route):
    navigate = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document", "Accept": "text/html"}
    answer = anonymous.get(route, headers=navigate, follow_redirects=False)
    assert answer.status_code == 307
    assert answer.headers["location"].startswith("/auth/login?next=http%3A%2F%2Ftestserver%2Fsemantic-ids%2F")


@pytest.mark.parametrize("route", ROUTES)
def test_bad_tokens_and_users_without_access_are_refused(app, tokens, route):
    assert as_user(app, "not-a-jwt").get(route).status_code == 403  # Airflow: "Invalid JWT token"
    refused = as_user(app, tokens["nobody"]).get(route, follow_redirects=False)
    assert refused.status_code == 403 and refused.json() == {"detail": "Forbidden"}


@pytest.mark.parametrize("user", ["admin", "viewer"])
def test_readers_get_the_page_by_bearer_token(app, tokens, user):
    reader = as_user(app, tokens[user])
    assert reader.get("/semantic-ids/").status_code == 200
    assert reader.get("/semantic-ids/2026-03-02/manifest.json").json()["snapshot"] == "2026-03-02"


def test_a_bearer_token_wins_over_the_cookie(app, tokens):
    """As on Airflow's own API: an explicit credential is the caller's identity, not the ambient cookie."""
    client = as_user(app, tokens["nobody"])
    client.cookies.set("_token", tokens["admin"])
    assert client.get("/semantic-ids/").status_code == 403


# ------------------------------------------------------------------------------------------ the page


def test_index_lists_versions_and_marks_latest(client):
    page = client.get("/semantic-ids/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    text = page.text
    assert "2026-03-01" in text and "2026-03-02 <b>(latest)</b>" in text
    assert text.index("2026-03-02") < text.index("2026-03-01"), "newest first"
    assert 'href="2026-03-01/report/index.html"' in text
    assert 'iframe src="2026-03-02/report/index.html"' in text
    assert "2000" in text  # n_items


def test_a_publish_root_set_as_an_airflow_variable_is_the_pages_root(published_root, tokens, monkeypatch):
    """The page resolves the roots as the DAGs do (include.settings.configured_roots): with no environment
    variable, the Airflow Variable `rqvae_publish_root` (set in the UI, no redeploy) decides what it lists."""
    from airflow.api_fastapi.app import init_plugins
    from airflow.models.variable import Variable  # the metadata DB, as the UI writes it (no task here)

    monkeypatch.delenv("RQVAE_PUBLISH_ROOT", raising=False)
    app = FastAPI()
    init_plugins(app)
    page = as_user(app, tokens["admin"])
    assert "2026-03-02 <b>(latest)</b>" not in page.get("/semantic-ids/").text  # the project default: empty
    Variable.set("rqvae_publish_root", str(published_root))
    try:
        text = page.get("/semantic-ids/").text
        assert "2026-03-01" in text and "2026-03-02 <b>(latest)</b>" in text
        assert page.get("/semantic-ids/2026-03-01/manifest.json").status_code == 200
    finally:
        Variable.delete("rqvae_publish_root")
    assert "2026-03-02 <b>(latest)</b>" not in page.get("/semantic-ids/").text


def test_index_shows_downstream_and_interactions_columns(client):
    text = client.get("/semantic-ids/").text
    assert "<th>Interactions</th>" in text and "<th>Downstream</th>" in text and "<th>Migration</th>" in text
    assert "passed · R@10 0.069 ± 0.010 · NLL 5.21 ± 0.08 (vs rq-kmeans -0.05 ± 0.03)" in text
    assert '<td class="downstream absent">—</td>' in text  # 2026-03-01 has no evaluation.json
    assert text.count("<td>content only</td>") == 2  # the real manifests have no "collaborative" key
    assert 'href="2026-03-02/evaluation.json">evaluation</a>' in text
    assert 'href="2026-03-02/evaluation_recall.png">evaluation_recall.png</a>' in text
    assert 'href="2026-03-01/evaluation.json"' not in text


def test_report_files_manifest_and_evaluation_are_served(client):
    report = client.get("/semantic-ids/2026-03-01/report/index.html")
    assert report.status_code == 200 and 'src="usage_per_level.png"' in report.text
    png = client.get("/semantic-ids/2026-03-01/report/usage_per_level.png")
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    assert client.get("/semantic-ids/2026-03-02/manifest.json").json()["snapshot"] == "2026-03-02"
    assert client.get("/semantic-ids/2026-03-02/evaluation.json").json()["summary"]["status"] == "passed"
    assert client.get("/semantic-ids/2026-03-02/evaluation_recall.png").content[:4] == b"\x89PNG"
    assert client.get("/semantic-ids/latest/evaluation.json").status_code == 200  # through the symlink
    latest = client.get("/semantic-ids/latest", follow_redirects=False)
    assert latest.status_code in (302, 307) and latest.headers["location"] == "2026-03-02/report/index.html"


@pytest.mark.parametrize(
    "path",
    ["secret.txt", "2026-03-01/semantic_ids.parquet", "2026-03-01/model/config.json", "../../etc/passwd",
     "2026-03-01/report/../../secret.txt", "2026-03-01/report/missing.png", "2026-03-01/validation/input.json",
     "2026-03-01/report/../model/config.json", "2026-03-02/evaluation_recall.txt", "latest.json",
     "2026-03-01/evaluation.json"],
)
def test_nothing_but_reports_manifests_and_evaluations_is_served(client, path):
    assert client.get(f"/semantic-ids/{path}").status_code == 404


MALFORMED = {
    "null byte": "2026-03-01/manifest.json%00.png",
    "null byte alone": "%00",
    "encoded slashes": "..%2F..%2F..%2Fetc%2Fpasswd",
    "encoded dots": "%2e%2e/%2e%2e/secret.txt",
    # Both reached the model before: the old check looked for "report" in the path as requested.
    "encoded dots out of a report": "2026-03-01/report/%2e%2e/model/config.json",
    "encoded slash out of a report": "2026-03-01/report/..%2Fmodel/config.json",
    "double-encoded": "%252e%252e%252fsecret.txt",
    "encoded backslash": "2026-03-01%5C..%5C..%5Csecret.txt",
    "overlong name": "2026-03-01/" + "a" * 300 + ".png",
    "overlong path": "a/" * 1500 + "x.png",
    "hidden folder": ".staging-2026-03-03-0000/manifest.json",
    "absolute": "/etc/passwd",
}


@pytest.mark.parametrize("path", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_paths_are_not_found_never_an_error(client, published_root, path):
    answer = client.get(f"/semantic-ids/{path}")
    assert answer.status_code == 404 and answer.json() == {"detail": "Not Found"}
    assert str(published_root) not in answer.text


def test_an_empty_root_says_so(tmp_path, tokens):
    from plugins.semantic_ids_plugin import create_app

    client = as_user(create_app(tmp_path), tokens["viewer"])
    page = client.get("/")
    assert page.status_code == 200 and "No published versions yet" in page.text
    assert client.get("/latest").status_code == 404


# ------------------------------------------------------------------------------------------ the new columns


def version(root: Path, name: str, manifest: dict | str = "{}", evaluation: dict | str | None = None) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    if evaluation is not None:
        text = evaluation if isinstance(evaluation, str) else json.dumps(evaluation)
        (folder / "evaluation.json").write_text(text)
    return folder


@pytest.mark.parametrize(
    ("evaluation", "text", "state"),
    [
        (None, "—", "absent"),
        ({"summary": PASSED}, "passed · R@10 0.069 ± 0.010 · NLL 5.21 ± 0.08 (vs rq-kmeans -0.05 ± 0.03)", "passed"),
        ({"summary": {**PASSED, "vs_rqkmeans_nll": 0.12, "vs_rqkmeans_nll_se": 0.04}},
         "passed · R@10 0.069 ± 0.010 · NLL 5.21 ± 0.08 (vs rq-kmeans +0.12 ± 0.04)", "passed"),
        ({"summary": {**PASSED, "vs_rqkmeans_nll": None, "vs_rqkmeans_nll_se": None}},
         "passed · R@10 0.069 ± 0.010 · NLL 5.21 ± 0.08", "passed"),
        ({"summary": {**PASSED, "status": "failed", "reason": "NLL 0.4 worse than rq-kmeans (> 2 se)"}},
         "FAILED: NLL 0.4 worse than rq-kmeans (> 2 se)", "failed"),
        ({"summary": {"status": "skipped", "reason": "no interactions for 2026-03-01"}}, "skipped", "skipped"),
        ("{not json", "unreadable", "unreadable"),
        ("[1, 2]", "unreadable", "unreadable"),
        ({"no_summary": {}}, "unreadable", "unreadable"),
        ({"summary": {"status": "great"}}, "unreadable", "unreadable"),
        ({"summary": {**PASSED, "nll": "low"}}, "unreadable", "unreadable"),
        ({"summary": {**PASSED, "recall_at_10": None}}, "unreadable", "unreadable"),
    ],
)
def test_downstream_cell(tmp_path, evaluation, text, state):
    from plugins.semantic_ids_page import downstream

    assert downstream(version(tmp_path, "2026-03-01", evaluation=evaluation)) == (text, state)


@pytest.mark.parametrize(
    ("manifest", "text"),
    [({"collaborative": {"used": True, "weight": 0.1, "interactions": 120000}}, "w=0.1"),
     ({"collaborative": {"used": False, "weight": 0.1}}, "content only"),
     ({}, "content only"),
     ({"collaborative": "yes"}, "content only")],
)
def test_interactions_marker(manifest, text):
    from plugins.semantic_ids_page import interactions

    assert interactions(manifest) == text


def test_bad_files_do_not_break_the_page(tmp_path, tokens):
    """A failed evaluation is highlighted, a malformed one or a malformed manifest is named, and the rest of
    the page still renders."""
    from plugins.semantic_ids_plugin import create_app

    failed = {"summary": {"status": "failed", "reason": "worse than <previous> by 3 se"}}
    version(tmp_path, "2026-04-01", {"collaborative": {"used": True, "weight": 0.25}}, failed)
    version(tmp_path, "2026-04-02", evaluation="{broken")
    version(tmp_path, "2026-04-03", manifest="{broken", evaluation={"summary": PASSED})
    (tmp_path / "latest.json").write_text("{broken")
    page = as_user(create_app(tmp_path), tokens["viewer"]).get("/")
    assert page.status_code == 200
    text = page.text
    assert '<td class="downstream failed" title="FAILED: worse than &lt;previous&gt; by 3 se">' in text
    assert "FAILED: worse than &lt;previous&gt; by 3 se</td>" in text and "<td>w=0.25</td>" in text
    assert '<td class="downstream unreadable">unreadable</td>' in text
    assert "unreadable manifest" in text and 'href="2026-04-03/evaluation.json"' in text


@pytest.mark.parametrize(
    ("manifest", "text"),
    [({"migration": {"previous": "2026-03-01", "kept": 2700, "changed": 270, "new": 30, "removed": 0,
                     "alignment": None}}, "vs 2026-03-01: kept 2,700 · changed 270 · new 30 · removed 0"),
     ({"migration": {"previous": "2026-03-01", "kept": 10, "changed": 90, "new": 0, "removed": 0,
                     "alignment": {"applied": True, "id_churn_before": 1.0, "id_churn_after": 0.206}}},
      "vs 2026-03-01: kept 10 · changed 90 · new 0 · removed 0 (aligned: churn 100% -> 21%)"),
     ({"migration": {"previous": None}}, None),
     ({}, None),
     ({"migration": "yes"}, None)],
)
def test_migration_cell(manifest, text):
    from plugins.semantic_ids_page import migration

    assert migration(manifest) == text
