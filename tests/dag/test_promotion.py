"""Promotion as a recommender team runs it: three published versions, the second failing the downstream gate.
`latest` ends on the third and `serving` never names the second; a rollback from the Semantic IDs page moves
serving back and logs who, when, from, to, why and the verdict; a viewer's POST gets 403 and changes nothing;
the `semantic_ids_promote` DAG does the same move from a trigger form.

The versions are real (publish of a trained, validated work folder) and so is the gate (record_evaluation on
a result whose paired NLL difference is set; the retriever itself is tests/dag/test_evaluation_dag.py's). After
each verdict the evaluation DAG's last task, the `promote` stage, runs as the DAG runs it: not after a failed
gate. The page runs in-process with Airflow's real simple auth manager, JWTs and init_plugins; the same routes
on a real `airflow standalone` are tests/system/test_security.py's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from tests.helpers import evaluation_result, prepare_work, publish_work, states

pytestmark = pytest.mark.airflow

D1, D2, D3 = "2026-06-01", "2026-06-02", "2026-06-03"
GATE_NLL = {D1: -0.1, D2: 0.5, D3: -0.1}  # paired NLL this - residual k-means, SE 0.1: D2 is 5 SE worse
NAVIGATE = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe"}  # the page's form, in the UI's iframe


@pytest.fixture(scope="module")
def history(airflow_db, roots, tmp_path_factory) -> dict:
    """Publish D1, D2, D3 in turn; after each, the gate, then `promote` if the gate passed. Records what
    `latest` and `serving` named after every step."""
    from include.params import EvaluationOptions
    from include.settings import load_roots
    from include.stages.find_version import find_version
    from include.stages.promote import promote
    from include.stages.record_evaluation import QualityGateFailed, record_evaluation
    from include.versions import read_latest
    from rqvae.ids.promotion import read_serving
    from rqvae.io.synth import synth

    base = tmp_path_factory.mktemp("promotion")
    work = prepare_work(synth(base / "input", 800, dim=16, seed=4), base / "work")
    root = roots["publish"]
    seen: dict = {"latest": [], "serving": [], "gate_failed": [], "promoted": {}}
    for day in (D1, D2, D3):
        publish_work(day, work, root, run_id=f"publish-{day}")
        seen["latest"].append(read_latest(root))
        seen["serving"].append(read_serving(root))  # right after publish: publishing never moves serving
        result = evaluation_result(root / day, GATE_NLL[day], base / "eval" / day / "result.json")
        ref = find_version(load_roots(), day)
        try:
            record_evaluation(root / day, result, EvaluationOptions(max_se=2.0), run_id=f"eval-{day}")
        except QualityGateFailed:
            seen["gate_failed"].append(day)  # the DAG stops here: promote is upstream_failed
            late = promote(ref, EvaluationOptions(), True, root, "semantic_ids_evaluation", f"eval-{day}")
            assert not late["moved"], "even run by hand, promote refuses a failed version"
        else:
            seen["promoted"][day] = promote(ref, EvaluationOptions(), True, root, "semantic_ids_evaluation",
                                            f"eval-{day}")
        seen["latest"].append(read_latest(root))
        seen["serving"].append(read_serving(root))
    return seen


def moves(root: Path) -> list[dict]:
    from rqvae.ids.promotion import read_promotions

    return read_promotions(root)


def picture(root: Path) -> dict[str, object]:
    """What a promotion changes: the alias, its file and the log (compared before / after a refusal)."""
    link = root / "serving"
    return {"serving": link.readlink() if link.is_symlink() else None,
            **{name: (root / name).read_text() if (root / name).is_file() else None
               for name in ("serving.json", "promotions.jsonl")}}


def serve(root: Path, day: str) -> None:
    """Put serving on `day` (a test's starting point), as a person would."""
    from rqvae.ids.promotion import promote

    promote(root, day, by="test-setup", via="cli", reason="starting point", force=True)


def test_serving_never_names_the_version_that_failed_the_gate(history, roots):
    root = roots["publish"]
    assert history["gate_failed"] == [D2]
    assert history["latest"] == [D1, D1, D2, D2, D3, D3], "latest moved at every publish"
    assert history["serving"] == [None, D1, D1, D1, D1, D3], "serving moved only after a passed gate"
    assert D2 not in history["serving"]
    assert [(m["from"], m["to"], m["kind"], m["verdict"]) for m in moves(root)] == [
        (None, D1, "automatic", "passed"), (D1, D3, "automatic", "passed")]
    assert history["promoted"][D3]["moved"] and history["promoted"][D3]["serving"] == D3
    assert json.loads((root / "serving.json").read_text())["snapshot"] == D3
    assert (root / "serving" / "manifest.json").is_file() and (root / "serving").resolve() == (root / D3).resolve()


# ------------------------------------------------------------------------------------------ the page


@pytest.fixture(scope="module")
def tokens(airflow_db) -> dict[str, str]:
    """JWTs of Airflow's own auth manager: admin, an editor (role `user`: may edit DAGs), a viewer, nobody."""
    from airflow.api_fastapi.app import init_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    manager = init_auth_manager()
    users = {"admin": "admin", "editor": "user", "viewer": "viewer", "nobody": None}
    return {name: manager.generate_jwt(SimpleAuthManagerUser(username=name, role=role)) for name, role in users.items()}


@pytest.fixture()
def app(history, roots) -> FastAPI:
    from airflow.api_fastapi.app import init_plugins

    app = FastAPI()
    init_plugins(app)  # the plugin reads RQVAE_PUBLISH_ROOT (the `roots` fixture) at each request
    return app


def browser(app: FastAPI, token: str) -> TestClient:
    """A logged-in UI session: the `_token` cookie, as the page in the UI's iframe sends it."""
    client = TestClient(app)
    client.cookies.set("_token", token)
    return client


def csrf_of(page: str) -> str:
    tokens = set(re.findall(r'name="csrf_token" value="([^"]+)"', page))
    assert len(tokens) == 1, "one token per page, in every promote form"
    return tokens.pop()


def test_the_page_shows_both_aliases_verdicts_and_the_log(history, app, tokens, roots):
    serve(roots["publish"], D3)
    text = browser(app, tokens["admin"]).get("/semantic-ids/").text
    assert f"{D3} <b>(latest)</b> <b>(serving)</b>" in text
    assert f"serving (what consumers read): <b>{D3}</b> (passed;" in text
    assert f"latest (newest published): <b>{D3}</b>" in text
    assert '<td class="verdict failed" title="nll worse than rqkmeans' in text and text.count(
        '<td class="verdict passed">passed</td>') == 2
    assert '<td class="serving">serving</td>' in text
    assert f'name="version" value="{D1}"' in text and f'name="version" value="{D2}"' in text
    assert f'name="version" value="{D3}"' not in text, "no button on the served version"
    assert text.count('name="force"') == 1, "force only on the failed version"
    assert "Roll back" in text and "It FAILED the downstream gate" in text
    assert "<h3>Promotion log</h3>" in text and "semantic_ids_evaluation (evaluation)" in text
    assert 'title="latest report"' in text and 'iframe src="serving/report/index.html"' not in text
    viewer = browser(app, tokens["viewer"]).get("/semantic-ids/").text
    assert f"{D3} <b>(latest)</b> <b>(serving)</b>" in viewer and "<form" not in viewer and "csrf" not in viewer


def test_a_rollback_from_the_page_moves_serving_back_and_logs_it(history, app, tokens, roots):
    root = roots["publish"]
    serve(root, D3)
    admin = browser(app, tokens["admin"])
    token = csrf_of(admin.get("/semantic-ids/").text)
    answer = admin.post("/semantic-ids/promote", headers=NAVIGATE, follow_redirects=False,
                        data={"version": D1, "reason": "CTR dropped after 06-03", "csrf_token": token})
    assert answer.status_code == 303 and answer.headers["location"] == "./"
    assert (root / "serving").resolve() == (root / D1).resolve()
    last = moves(root)[-1]
    assert {k: last[k] for k in ("by", "via", "kind", "from", "to", "verdict", "forced", "reason")} == {
        "by": "admin", "via": "ui", "kind": "rollback", "from": D3, "to": D1, "verdict": "passed", "forced": False,
        "reason": "CTR dropped after 06-03"}
    text = admin.get("/semantic-ids/").text
    assert f"{D1} <b>(serving)</b>" in text and f"{D3} <b>(latest)</b></td>" in text
    assert '<tr class="rollback">' in text and "CTR dropped after 06-03" in text
    assert 'iframe src="serving/report/index.html" title="serving report"' in text  # serving != latest now


@pytest.mark.parametrize("who", ["viewer", "nobody"])
def test_a_viewers_post_is_403_and_changes_nothing(history, app, tokens, roots, who):
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    from plugins.semantic_ids_plugin import csrf_token

    root = roots["publish"]
    serve(root, D3)
    before = picture(root)
    form = {"version": D1, "reason": "let me", "csrf_token": csrf_token(SimpleAuthManagerUser(username=who,
                                                                                              role="viewer"))}
    as_page = browser(app, tokens[who]).post("/semantic-ids/promote", data=form, headers=NAVIGATE)
    as_api = TestClient(app).post("/semantic-ids/promote", json=form,
                                  headers={"Authorization": f"Bearer {tokens[who]}"})
    assert as_page.status_code == as_api.status_code == 403, (as_page.text, as_api.text)
    assert picture(root) == before
    anonymous = TestClient(app).post("/semantic-ids/promote", data=form)
    assert anonymous.status_code == 401 and picture(root) == before


def test_a_cookie_post_without_the_pages_csrf_token_is_refused(history, app, tokens, roots):
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    from plugins.semantic_ids_plugin import csrf_token

    root = roots["publish"]
    serve(root, D3)
    before = picture(root)
    admin = browser(app, tokens["admin"])
    someone_else = csrf_token(SimpleAuthManagerUser(username="editor", role="user"))
    for token in (None, "", "forged", someone_else, csrf_of(admin.get("/semantic-ids/").text)[:-2] + "xx"):
        form = {"version": D1, "reason": "cross-site", **({"csrf_token": token} if token is not None else {})}
        answer = admin.post("/semantic-ids/promote", data=form)
        assert answer.status_code == 403 and "CSRF" in answer.json()["detail"], answer.text
    as_json = admin.post("/semantic-ids/promote", json={"version": D1, "reason": "x", "csrf_token": 123})
    assert as_json.status_code == 403, "a cookie needs the token however the body is sent"
    assert picture(root) == before


@pytest.mark.parametrize("version", ["", "2026-06-09", "../2026-06-01", "latest", "serving", ".versions",
                                     "2026-06-01/manifest.json", "nope/2026-06-01", "a" * 300, "2026-06-01%00"])
def test_malformed_or_unknown_versions_are_404_and_move_nothing(history, app, tokens, roots, version):
    root = roots["publish"]
    serve(root, D3)
    before = picture(root)
    answer = TestClient(app).post("/semantic-ids/promote", json={"version": version, "reason": "r", "force": True},
                                  headers={"Authorization": f"Bearer {tokens['admin']}"})
    assert answer.status_code == 404 and answer.json() == {"detail": "Not Found"}
    assert str(root) not in answer.text and picture(root) == before


def test_an_api_client_forces_a_failed_version_with_its_bearer_token(history, app, tokens, roots):
    root = roots["publish"]
    serve(root, D3)
    before = picture(root)
    editor = TestClient(app, headers={"Authorization": f"Bearer {tokens['editor']}"})
    refused = editor.post("/semantic-ids/promote", json={"version": D2, "reason": "gate noise"})
    assert refused.status_code == 409 and "force" in refused.json()["detail"] and picture(root) == before
    no_reason = editor.post("/semantic-ids/promote", json={"version": D2, "reason": " ", "force": True})
    assert no_reason.status_code == 400 and picture(root) == before
    forced = editor.post("/semantic-ids/promote", json={"version": D2, "reason": "gate noise", "force": True})
    assert forced.status_code == 200, forced.text
    body = forced.json()
    assert body["moved"] and body["verdict"] == "failed" and body["record"]["forced"] is True
    assert body["record"]["via"] == "api" and body["record"]["by"] == "editor" and body["version"] == D2
    assert (root / "serving").resolve() == (root / D2).resolve()
    page = browser(app, tokens["admin"]).get("/semantic-ids/").text
    assert "rollback <b>(forced)</b>" in page and "(failed; rollback, forced by editor" in page


# ------------------------------------------------------------------------------------------ the promote DAG


def test_the_promote_dag_rolls_back_from_its_form_and_updates_the_asset(history, promote_dag, roots):
    from tests.dag.test_evaluation_dag import serving_events

    root = roots["publish"]
    serve(root, D3)
    before = picture(root)

    def trigger(**conf):
        return promote_dag.test(run_conf={"version": "", "reason": "", "force": False, **conf})

    refused = trigger(version=D2, reason="try without force")
    assert states(refused)["promote_version"] == "failed" and str(refused.state) == "failed"
    assert picture(root) == before
    run = trigger(version=D1, reason="rollback from the form")
    assert states(run)["promote_version"] == "success", states(run)
    assert (root / "serving").resolve() == (root / D1).resolve()
    last = moves(root)[-1]
    assert last["kind"] == "rollback" and last["via"] == "dag" and last["run_id"] == run.run_id
    assert last["reason"] == "rollback from the form"
    assert serving_events()[-1] == {"version": D1, "snapshot": D1, "verdict": "passed", "kind": "rollback",
                                    "forced": False, "serving_path": str(root / "serving")}
    logged = len(moves(root))
    again = trigger(version=D1, reason="twice")
    assert states(again)["promote_version"] == "skipped" and len(moves(root)) == logged, "already serving"


def test_a_promotion_from_the_page_updates_the_asset_too(history, app, tokens, roots, promote_dag):
    """The asset is registered once a DAG declaring it is parsed into the DB (dag.test does it here)."""
    from tests.dag.test_evaluation_dag import serving_events

    root = roots["publish"]
    serve(root, D1)
    promote_dag.test(run_conf={"version": D3, "reason": "registers the asset", "force": False})
    count = len(serving_events())
    answer = TestClient(app).post("/semantic-ids/promote", json={"version": D1, "reason": "back again"},
                                  headers={"Authorization": f"Bearer {tokens['admin']}"})
    assert answer.status_code == 200 and answer.json()["asset_event"] is True, answer.text
    events = serving_events()
    assert len(events) == count + 1 and events[-1]["version"] == D1 and events[-1]["kind"] == "rollback"
