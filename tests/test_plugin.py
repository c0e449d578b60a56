"""The Airflow UI plugin: discovered by Airflow's plugin manager, mounted like the API server mounts it,
listing published versions (latest marked) and serving their reports, and nothing outside them."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from include.encode_items import encode_all
from include.layout import RunFolder
from include.load_embeddings import load_embeddings
from include.publish import publish
from include.train_rqvae import train_rqvae
from include.validate_codes import validate_codes
from include.validate_dims import validate_dims
from rqvae.synth import synth


@pytest.fixture(scope="module")
def published_root(tmp_path_factory) -> Path:
    """Two real published versions (2026-03-01, 2026-03-02) of a small run, each with its report."""
    base = tmp_path_factory.mktemp("plugin")
    root = base / "published"
    for day in ("2026-03-01", "2026-03-02"):
        work = base / "work" / day
        folder = RunFolder(work)
        loaded = load_embeddings(synth(base / "emb" / day, 2000, dim=8, seed=2), work)
        validate_dims(loaded["path"], folder.input_report, expected_dim=8)
        trained = train_rqvae(loaded["path"], work, num_codebooks=2, codebook_size=8, epochs=1, batch_size=256)
        encoded = encode_all(trained["model_path"], loaded["path"], work)
        validate_codes(encoded["path"], loaded["path"], folder.codes_report, codebook_sizes=encoded["codebook_size"],
                       recon_mse=encoded["recon_mse"], min_unique_ratio=0.01)
        publish(day, work, root, upstream={"train_rqvae": trained, "encode_items": encoded})
    (root / "secret.txt").write_text("not for the UI")
    return root


@pytest.fixture()
def client(published_root, monkeypatch) -> TestClient:
    """The plugin's sub-app mounted by Airflow's own init_plugins, reading the root from the environment."""
    from airflow.api_fastapi.app import init_plugins

    monkeypatch.setenv("RQVAE_PUBLISH_ROOT", str(published_root))
    app = FastAPI()
    init_plugins(app)
    return TestClient(app)


def test_airflow_discovers_the_plugin_and_its_menu_entry():
    from airflow import plugins_manager

    apps, _ = plugins_manager.get_fastapi_plugins()
    assert any(a["url_prefix"] == "/semantic-ids" and a["name"] == "Semantic IDs" for a in apps)
    views, _ = plugins_manager._get_ui_plugins()
    view = next(v for v in views if v["name"] == "Semantic IDs")
    assert view["href"] == "/semantic-ids/" and view["url_route"] == "semantic-ids"
    assert plugins_manager.get_import_errors() == {}


def test_index_lists_versions_and_marks_latest(client):
    page = client.get("/semantic-ids/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    text = page.text
    assert "2026-03-01" in text and "2026-03-02 <b>(latest)</b>" in text
    assert text.index("2026-03-02") < text.index("2026-03-01"), "newest first"
    assert 'href="2026-03-01/report/index.html"' in text
    assert 'iframe src="2026-03-02/report/index.html"' in text
    assert "2000" in text  # n_items


def test_report_files_and_manifest_are_served(client):
    report = client.get("/semantic-ids/2026-03-01/report/index.html")
    assert report.status_code == 200 and 'src="usage_per_level.png"' in report.text
    png = client.get("/semantic-ids/2026-03-01/report/usage_per_level.png")
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    assert client.get("/semantic-ids/2026-03-02/manifest.json").json()["snapshot"] == "2026-03-02"
    latest = client.get("/semantic-ids/latest", follow_redirects=False)
    assert latest.status_code in (302, 307) and latest.headers["location"] == "2026-03-02/report/index.html"


@pytest.mark.parametrize(
    "path",
    ["secret.txt", "2026-03-01/semantic_ids.parquet", "2026-03-01/model/config.json", "../../etc/passwd",
     "2026-03-01/report/../../secret.txt", "2026-03-01/report/missing.png"],
)
def test_nothing_but_reports_and_manifests_is_served(client, path):
    assert client.get(f"/semantic-ids/{path}").status_code == 404


def test_an_empty_root_says_so(tmp_path, monkeypatch):
    from plugins.semantic_ids_plugin import create_app

    page = TestClient(create_app(tmp_path)).get("/")
    assert page.status_code == 200 and "No published versions yet" in page.text
    assert TestClient(create_app(tmp_path)).get("/latest").status_code == 404
