"""The users' path through the Airflow UI, in a real browser: log in, fill the trigger form, watch the run
succeed, read the published version's report on the project's plugin page and promote it to serving; bad form
values are refused.

A module fixture runs `make airflow`'s script, scripts/airflow_standalone.sh (`airflow standalone`: api-server,
scheduler, dag-processor, triggerer; LocalExecutor, SQLite; tests/airflow_server.py), with its home and data
roots in a temp folder and a 2,000 x 16 synthetic snapshot, and stops exactly the process group it started.
Debian's chromium is driven by Playwright (no browser download). Screenshots of every step land in
var/test-artifacts/browser/; the assertions read page content, never pixels.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.airflow_server import AirflowUI, standalone
from tests.helpers import TASK_IDS

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[2]
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
RUN_TIMEOUT_S = 180
# The plugin page's Downstream cell: no evaluation.json yet, or whatever state the evaluation DAG recorded.
DOWNSTREAM_CELL = re.compile(r"^(—|skipped|unreadable|FAILED: .+|passed · R@10 .+)$")

pytest.importorskip("playwright", reason="playwright is in the dev extra (make venv)")
if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} missing: apt-get install chromium (.ci/run does)", allow_module_level=True)

from playwright.sync_api import FrameLocator, Locator, Page, expect, sync_playwright  # noqa: E402

expect.set_options(timeout=20_000)  # pages that fetch logs or runs take a few seconds on a busy 2-core machine


@pytest.fixture(scope="module")
def airflow_ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowUI]:
    from rqvae.io.synth import synth

    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    root = tmp_path_factory.mktemp("browser-airflow")
    synth(root / "data" / "embeddings" / SNAPSHOT, n=2000, dim=16, seed=3)  # parts + _SUCCESS
    try:
        with standalone(root, ARTIFACTS / "airflow-standalone.log", dag_id=DAG_ID) as ui:
            yield ui
    finally:
        task_logs = root / "airflow" / "logs" / f"dag_id={DAG_ID}"
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
    # The UI mirrors the iframe's own path after the plugin prefix (/plugin/semantic-ids/semantic-ids/).
    page.wait_for_url(re.compile(r"/plugin/semantic-ids(/.*)?$"))
    listing = page.frame_locator("iframe").first
    expect(listing.get_by_role("heading", name="Published semantic IDs")).to_be_visible()
    row = listing.get_by_role("row").filter(has_text=SNAPSHOT)
    expect(row).to_contain_text("(latest)")
    expect(row).to_contain_text("2000")  # items
    # The downstream evaluation is another DAG's; whatever it got to (nothing yet, most likely), the cell says so.
    expect(listing.get_by_role("columnheader", name="Downstream")).to_be_visible()
    expect(row.locator("td.downstream")).to_have_text(DOWNSTREAM_CELL)
    expect(listing.get_by_role("columnheader", name="Interactions")).to_be_visible()
    expect(listing.get_by_role("columnheader", name="Migration")).to_be_visible()  # first version: no previous
    expect(row).to_contain_text(re.compile(r"content only|w=[0-9.e+-]+"))
    latest = listing.frame_locator("iframe[title='latest report']")
    expect(latest.get_by_role("heading", name=f"Semantic IDs {SNAPSHOT}")).to_be_visible()
    expect(latest.get_by_role("img")).to_have_count(3)
    # Every plot decoded inside the UI's iframe, i.e. fetched with the UI's session. (Not "networkidle": the
    # UI's iframe path sync leaves Playwright's idle tracking unsettled, even with no request in flight.)
    report = next(f for f in page.frames if f.url.endswith(f"/semantic-ids/{SNAPSHOT}/report/index.html"))
    report.wait_for_function("() => [...document.images].every(img => img.complete && img.naturalWidth > 0)")
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


def test_promote_from_the_page_marks_the_version_serving(airflow_ui: AirflowUI, page: Page) -> None:
    """As admin, on Browse -> Semantic IDs (inside the UI's sandboxed iframe, where `confirm()` dialogs are
    blocked): press Promote on the published version's row, read the confirmation, give a reason, confirm; the
    page comes back marking the version serving, with the move in its promotion log, and `serving` on disk
    names the version."""
    ui = airflow_ui
    version = ui.publish_root / SNAPSHOT
    assert version.is_dir(), "published by test_trigger_form_run_and_report"
    assert not (ui.publish_root / "serving").exists(), "no interactions that day: nothing promoted it yet"
    login(page, ui)
    listing = open_plugin_page(page, ui)
    versions = listing.locator("table:not(.log) tbody tr").filter(has_text=SNAPSHOT)
    expect(listing.locator("p.aliases")).to_contain_text("serving (what consumers read): none yet")
    expect(versions.locator("td.verdict")).to_have_text("not evaluated")
    confirm = versions.get_by_role("button", name=f"Yes, promote to {SNAPSHOT}")
    expect(confirm).to_be_hidden()  # one click to open the confirmation, one to confirm
    versions.get_by_text("Promote…").click()
    expect(versions.locator("p.confirm")).to_have_text(f"Promote serving to {SNAPSHOT}?")
    versions.get_by_label(f"reason for {SNAPSHOT}").fill("browser test: serve the first version")
    shot(page, "16-promote-confirmation")
    confirm.click()
    expect(listing.locator("p.aliases")).to_contain_text(f"serving (what consumers read): {SNAPSHOT}")
    expect(versions.first).to_contain_text("(serving)")
    expect(versions.locator("td.serving")).to_have_text("serving")
    expect(listing.locator("table.log")).to_contain_text("browser test: serve the first version")
    shot(page, "17-promoted-serving")
    assert (ui.publish_root / "serving").resolve() == version.resolve()
    (move,) = [json.loads(line) for line in (ui.publish_root / "promotions.jsonl").read_text().splitlines()]
    assert (move["by"], move["via"], move["kind"], move["to"]) == ("admin", "ui", "manual", SNAPSHOT)


def open_plugin_page(page: Page, ui: AirflowUI) -> FrameLocator:
    """Browse -> Semantic IDs: the plugin's page in the UI's iframe."""
    page.goto(ui.url + "/")
    page.get_by_role("button", name="Browse").click()
    page.get_by_role("menuitem", name="Semantic IDs").click()
    page.wait_for_url(re.compile(r"/plugin/semantic-ids(/.*)?$"))
    listing = page.frame_locator("iframe").first
    expect(listing.get_by_role("heading", name="Published semantic IDs")).to_be_visible()
    return listing


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


def test_plugin_page_asks_for_login(airflow_ui: AirflowUI, page: Page) -> None:
    """Logged out, the plugin's page (its own URL, outside the UI) sends the browser to the UI's login page,
    which brings it back to the page after signing in: the plugin sits behind the same session as the UI."""
    ui = airflow_ui
    page.context.clear_cookies()
    page.goto(f"{ui.url}/semantic-ids/")
    page.wait_for_url(re.compile(r"/auth/login\?next="))
    expect(page.get_by_role("heading", name="Sign into Airflow")).to_be_visible()
    assert "Published semantic IDs" not in page.content()
    shot(page, "14-plugin-logged-out")
    page.get_by_label("Username").fill("admin")
    page.get_by_label("Password").fill(ui.password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(re.compile(r"/semantic-ids/$"))
    expect(page.get_by_role("heading", name="Published semantic IDs")).to_be_visible()
    expect(page.get_by_role("columnheader", name="Downstream")).to_be_visible()
    shot(page, "15-plugin-after-login")
