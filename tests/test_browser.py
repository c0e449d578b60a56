"""The users' path through the Airflow UI, in a real browser: log in, fill the trigger form, watch the run
succeed, read the published version's report on the project's plugin page; bad form values are refused.

A module fixture runs `make airflow`'s script, scripts/airflow_standalone.sh (`airflow standalone`: api-server,
scheduler, dag-processor, triggerer; LocalExecutor, SQLite), with its home and data roots in a temp folder and a
2,000 x 16 synthetic snapshot, and stops exactly the process group it started. Debian's chromium is driven by
Playwright (no browser download). Screenshots of every step land in var/test-artifacts/browser/; the assertions
read page content, never pixels.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.helpers import TASK_IDS

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]
ARTIFACTS = REPO / "var" / "test-artifacts" / "browser"
DAG_ID = "rqvae_semantic_ids"
SNAPSHOT = "2026-11-20"
# Small enough for a run of well under a minute on two CPU cores; the thresholds suit 2,000 items.
FORM_VALUES = {
    "snapshot": SNAPSHOT,
    "min_items": "100",
    "num_codebooks": "3",
    "codebook_size": "16",
    "epochs": "1",
    "min_unique_ratio": "0.1",
    "max_recon_mse": "0.5",
}
STARTUP_TIMEOUT_S = 120
RUN_TIMEOUT_S = 180

pytest.importorskip("playwright", reason="playwright is in the dev extra (make venv)")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} missing: apt-get install chromium (.ci/run does)", allow_module_level=True)

from playwright.sync_api import Locator, Page, expect, sync_playwright  # noqa: E402

expect.set_options(timeout=20_000)  # pages that fetch logs or runs take a few seconds on a busy 2-core machine


@dataclass
class AirflowUI:
    url: str
    password: str
    home: Path
    publish_root: Path
    log: Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _airflow_env(root: Path, port: int) -> dict[str, str]:
    """The developer's own Airflow settings are dropped: this server must not touch var/airflow.

    The folders, executor and SQLite database come from scripts/airflow_env.py (which airflow_standalone.sh
    applies for the AIRFLOW_HOME set here); only what this test needs on top is set.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "RQVAE_"))}
    url = f"http://127.0.0.1:{port}"
    home = root / "airflow"
    env.update(
        {
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{url}/execution/",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(_free_port()),
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(_free_port()),
            # Only the runs the test triggers: unpausing must not add today's scheduled run.
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
            "RQVAE_EMBEDDINGS_ROOT": str(root / "data" / "embeddings"),
            "RQVAE_WORK_ROOT": str(root / "data" / "work"),
            "RQVAE_PUBLISH_ROOT": str(root / "data" / "published"),
            "RQVAE_SENSOR_POKE_S": "1",
            "RQVAE_RETRIES": "0",
        }
    )
    return env


def _wait_until_ready(ui: AirflowUI, proc: subprocess.Popen) -> None:
    """Health endpoint up, the admin password written, and the DAG parsed into the database."""
    passwords = ui.home / "simple_auth_manager_passwords.json.generated"
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"airflow standalone exited with {proc.returncode}; see {ui.log}")
        try:
            if passwords.is_file() and not ui.password:
                ui.password = json.loads(passwords.read_text())["admin"]
            if ui.password:
                token = requests.post(
                    f"{ui.url}/auth/token", json={"username": "admin", "password": ui.password}, timeout=5
                ).json()["access_token"]
                dag = requests.get(
                    f"{ui.url}/api/v2/dags/{DAG_ID}", headers={"Authorization": f"Bearer {token}"}, timeout=5
                )
                if dag.status_code == 200:
                    return
        except (requests.RequestException, ValueError, KeyError):
            pass
        time.sleep(1)
    raise TimeoutError(f"Airflow was not ready after {STARTUP_TIMEOUT_S}s; see {ui.log}")


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group the fixture created (standalone and every component it spawned)."""
    pgid = proc.pid
    for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            proc.poll()
            try:
                os.killpg(pgid, 0)  # any member of our group left?
            except ProcessLookupError:
                return
            time.sleep(0.2)


@pytest.fixture(scope="module")
def airflow_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowUI]:
    from rqvae.synth import synth

    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    root = tmp_path_factory.mktemp("browser-airflow")
    synth(root / "data" / "embeddings" / SNAPSHOT, n=2000, dim=16, seed=3)  # parts + _SUCCESS
    port = _free_port()
    env = _airflow_env(root, port)
    ui = AirflowUI(f"http://127.0.0.1:{port}", "", Path(env["AIRFLOW_HOME"]), root / "data" / "published",
                   ARTIFACTS / "airflow-standalone.log")
    # `make airflow`'s own script (db migrate, GPU pool, then exec airflow standalone), pointed at the temp home.
    with ui.log.open("wb") as log:
        proc = subprocess.Popen([str(REPO / "scripts" / "airflow_standalone.sh")], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_until_ready(ui, proc)
        yield ui
    finally:
        _stop(proc)
        task_logs = ui.home / "logs" / f"dag_id={DAG_ID}"
        if task_logs.is_dir():
            shutil.copytree(task_logs, ARTIFACTS / "task-logs", dirs_exist_ok=True)


@pytest.fixture(scope="module")
def page(airflow_ui: AirflowUI, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
        )
        context.set_default_timeout(30_000)
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


def shot(page: Page, name: str, full_page: bool = False) -> None:
    page.wait_for_timeout(400)  # let accordions and toasts finish animating
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=full_page)


def login(page: Page, ui: AirflowUI) -> None:
    page.goto(ui.url + "/")
    # The app redirects to the login page by script, after its first request fails: wait for either page.
    page.get_by_role("heading", name=re.compile("^(Sign into Airflow|Welcome)$")).wait_for()
    if "/auth/login" not in page.url:
        return  # the module's browser profile is already signed in
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(ui.password)
    shot(page, "01-login")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Welcome")).to_be_visible()
    page.wait_for_load_state("networkidle")  # the app keeps the session token once the home page has loaded


def open_trigger_form(page: Page, ui: AirflowUI) -> Locator:
    page.goto(f"{ui.url}/dags/{DAG_ID}")
    expect(page.get_by_role("heading", name=DAG_ID)).to_be_visible()
    page.get_by_role("button", name="Trigger Dag").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text(f"Trigger Dag - {DAG_ID}")).to_be_visible()
    return dialog


def open_section(dialog: Locator, section: str) -> None:
    """The form's sections are accordions that show one section at a time."""
    button = dialog.get_by_role("button", name=section, exact=True)
    if button.get_attribute("aria-expanded") != "true":
        button.click()
    expect(button).to_have_attribute("aria-expanded", "true")


def fill_param(dialog: Locator, sections: dict[str, str], name: str, value: str) -> None:
    open_section(dialog, sections[name])
    field = dialog.locator(f"[name=element_{name}]")
    field.fill(value)
    expect(field).to_have_value(value)


def param_sections(pipeline_dag) -> dict[str, str]:
    return {name: pipeline_dag.params.get_param(name).schema["section"] for name in pipeline_dag.params}


def trigger(page: Page, dialog: Locator) -> str:
    """Press Trigger; the UI opens the new run's page. Returns its run id."""
    dialog.get_by_role("button", name="Trigger", exact=True).click()
    page.wait_for_url(re.compile(rf"/dags/{DAG_ID}/runs/[^/]+$"))
    expect(page.get_by_text("Dag run has been successfully triggered.").first).to_be_visible()
    return requests.utils.unquote(page.url.rsplit("/runs/", 1)[1])


def wait_for_run_state(page: Page, run_id: str, want: str) -> None:
    """The run page refreshes itself while the run is active; the header badge shows the run's state."""
    badge = page.get_by_role("heading", name=run_id).locator("xpath=..").get_by_test_id("state-badge")
    deadline = time.monotonic() + RUN_TIMEOUT_S
    state = ""
    while time.monotonic() < deadline:
        state = badge.first.inner_text().strip() if badge.count() else ""
        if state in ("Success", "Failed"):
            break
        page.wait_for_timeout(2000)
    assert state == want, f"run {run_id} is {state!r} in the UI, expected {want!r} (task logs: {ARTIFACTS})"


def test_trigger_form_run_and_report(airflow_ui: AirflowUI, page: Page, pipeline_dag) -> None:
    ui = airflow_ui
    login(page, ui)
    shot(page, "02-home")

    dialog = open_trigger_form(page, ui)
    shot(page, "03-trigger-form")
    sections = param_sections(pipeline_dag)
    for section in dict.fromkeys(sections.values()):  # every param shows its title and description
        open_section(dialog, section)
        for name in (n for n, s in sections.items() if s == section):
            schema = pipeline_dag.params.get_param(name).schema
            title = re.compile(rf"^{re.escape(schema['title'])}\s*\*?$")  # required fields get a "*"
            expect(dialog.get_by_text(title)).to_be_visible()
            if schema.get("description"):
                expect(dialog.get_by_text(schema["description"], exact=True)).to_be_visible()
            expect(dialog.locator(f"[name=element_{name}]")).to_be_attached()
        shot(page, f"04-form-{section.lower().replace(' ', '-')}")

    for name, value in FORM_VALUES.items():
        fill_param(dialog, sections, name, value)
    open_section(dialog, "Model")
    shot(page, "05-form-filled-model")
    run_id = trigger(page, dialog)
    shot(page, "06-run-triggered")

    wait_for_run_state(page, run_id, "Success")
    # the run + each task (the mapped encode_items shows as one row)
    expect(page.get_by_test_id("state-badge").filter(has_text="Success")).to_have_count(1 + len(TASK_IDS))
    for task_id in ("wait_for_embeddings", "train_rqvae", "publish"):
        expect(page.get_by_role("link", name=task_id).first).to_be_visible()
    shot(page, "07-run-success")

    version = ui.publish_root / SNAPSHOT
    assert (version / "semantic_ids.parquet").is_file()
    manifest = json.loads((version / "manifest.json").read_text())
    assert manifest["airflow"]["run_id"] == run_id  # the version came from the run the form started
    levels, size = int(FORM_VALUES["num_codebooks"]), int(FORM_VALUES["codebook_size"])
    assert manifest["config"]["model"]["model"]["codebook_size"] == [size] * levels  # the form's values were used
    check_report_plugin(page, ui)


def check_report_plugin(page: Page, ui: AirflowUI) -> None:
    """The project's plugin (Browse > Semantic IDs) lists the new version as latest, with its report's plots."""
    assert (REPO / "plugins" / "semantic_ids_plugin.py").is_file(), "the UI plugin module is missing"
    page.goto(ui.url + "/")
    page.get_by_role("button", name="Browse").click()
    page.get_by_role("menuitem", name="Semantic IDs").click()
    page.wait_for_url(re.compile(r"/plugin/semantic-ids$"))
    listing = page.frame_locator("iframe").first
    expect(listing.get_by_role("heading", name="Published semantic IDs")).to_be_visible()
    row = listing.get_by_role("row").filter(has_text=SNAPSHOT)
    expect(row).to_contain_text("(latest)")
    expect(row).to_contain_text("2000")  # items
    latest = listing.frame_locator("iframe[title='latest report']")
    expect(latest.get_by_role("heading", name=f"Semantic IDs {SNAPSHOT}")).to_be_visible()
    expect(latest.get_by_role("img")).to_have_count(3)
    page.wait_for_load_state("networkidle")
    shot(page, "08-plugin-versions")

    href = row.get_by_role("link", name="report").get_attribute("href")
    page.goto(f"{ui.url}/semantic-ids/{href}")
    expect(page.get_by_role("heading", name=f"Semantic IDs {SNAPSHOT}")).to_be_visible()
    expect(page.get_by_role("row", name=re.compile(r"^n_items\s+2000$"))).to_be_visible()
    plots = page.get_by_role("img")
    expect(plots).to_have_count(3)
    for plot in plots.all():  # each plot is a decoded PNG, not a broken-image icon
        plot.scroll_into_view_if_needed()
        assert plot.evaluate("img => img.complete && img.naturalWidth > 0"), plot.get_attribute("src")
    shot(page, "09-report", full_page=True)


def test_bad_form_values_are_refused(airflow_ui: AirflowUI, page: Page, pipeline_dag) -> None:
    """codebook_size 0: the form clamps a number to its param's bounds as the field loses focus (0 becomes the
    minimum 2, so 0 is never submitted), and the server refuses 0 from any other client with the rule broken.
    embeddings_root "../../etc": the form accepts any text, the first task fails the run at once, and its log in
    the UI says the path leaves the configured roots."""
    ui = airflow_ui
    login(page, ui)
    sections = param_sections(pipeline_dag)

    dialog = open_trigger_form(page, ui)
    fill_param(dialog, sections, "codebook_size", "0")
    field = dialog.locator("[name=element_codebook_size]")
    field.press("Tab")
    expect(field).to_have_value(str(pipeline_dag.params.get_param("codebook_size").schema["minimum"]))
    shot(page, "10-bad-codebook-size-clamped")
    token = requests.post(
        f"{ui.url}/auth/token", json={"username": "admin", "password": ui.password}, timeout=10
    ).json()["access_token"]
    refused = requests.post(
        f"{ui.url}/api/v2/dags/{DAG_ID}/dagRuns",
        headers={"Authorization": f"Bearer {token}"},
        json={"logical_date": None, "conf": {"snapshot": SNAPSHOT, "codebook_size": 0}},
        timeout=10,
    )
    assert refused.status_code == 400, refused.text
    assert "Invalid input for param codebook_size: 0 is less than the minimum of 2" in refused.text
    page.keyboard.press("Escape")

    dialog = open_trigger_form(page, ui)
    fill_param(dialog, sections, "snapshot", SNAPSHOT)
    fill_param(dialog, sections, "embeddings_root", "../../etc")
    shot(page, "11-bad-root-form")
    run_id = trigger(page, dialog)
    wait_for_run_state(page, run_id, "Failed")
    shot(page, "12-bad-root-run-failed")
    page.goto(f"{ui.url}/dags/{DAG_ID}/runs/{run_id}/tasks/wait_for_embeddings")
    expect(page.get_by_text("Task failed with exception").first).to_be_visible()
    expect(page.get_by_text("PathOutsideRootError: path '../../etc' resolves to").first).to_be_visible()
    expect(page.get_by_text("outside the configured roots").first).to_be_visible()
    shot(page, "13-bad-root-task-log")
