"""Security: no code path unpickles model files, trigger-form paths cannot leave the configured roots, no
secret is committed, neither the compose file nor the stack script turns login off, the UI plugin's routes
(mounted apart from Airflow's authenticated API) refuse anonymous callers on a real `airflow standalone`, and
its promote route moves `serving` only for a user with edit access (a viewer gets 403, anonymous 401, a
cookie without the page's CSRF token 403, an unknown version 404: nothing moves).

Already covered elsewhere and referenced by docs/reliability.md: model weights are safetensors, a tampered
weights file and a pickle smuggled in as weights are refused (tests/unit/test_checkpoint.py); a pickle input is
refused unless explicitly allowed, without being executed (tests/dag/test_bad_inputs.py, case
`pickle_not_allowed`); every secret the compose file reads is required and documented in `.env.example`
(tests/system/test_compose.py).
"""

from __future__ import annotations

import ast
import http.client
import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from include import settings
from tests.airflow_server import AirflowUI, standalone
from tests.helpers import TASK_IDS, latest, make_snapshot, run, scrub_paths, states, tree

REPO = Path(__file__).resolve().parents[2]
SOURCE_DIRS = ("rqvae", "include", "dags", "plugins", "scripts", "bench")


def python_sources() -> list[Path]:
    return sorted(p for d in SOURCE_DIRS for p in (REPO / d).rglob("*.py"))


def unpickling_calls(path: Path) -> list[tuple[int, str]]:
    """`torch.load` without `weights_only=True`, and any `pickle.load(s)` / `np.load(allow_pickle=True)`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
        kwargs = {k.arg: k.value for k in node.keywords}
        name = f"{owner}.{node.func.attr}"
        if name == "torch.load":
            flag = kwargs.get("weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                found.append((node.lineno, name))
        elif name in ("pickle.load", "pickle.loads", "pickle.Unpickler"):
            found.append((node.lineno, name))
        elif name == "np.load":
            flag = kwargs.get("allow_pickle")
            if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                found.append((node.lineno, name))
    return found


def test_nothing_unpickles_except_the_explicit_opt_in(reliability_log):
    """Model directories load from safetensors; `torch.load` only with `weights_only=True` (training
    checkpoints); the one `pickle.load` is rqvae.io.formats' reader behind `allow_pickle`, which the DAG never sets."""
    calls = {str(p.relative_to(REPO)): c for p in python_sources() if (c := unpickling_calls(p))}
    assert set(calls) == {"rqvae/io/formats.py"}, calls
    assert [name for _, name in calls["rqvae/io/formats.py"]] == ["pickle.load"]
    source = (REPO / "rqvae" / "io" / "formats.py").read_text()
    gate = source.index("def _load_pickle")
    assert source.index("if not allow_pickle:", gate) < source.index("pickle.load(", gate)
    assert "allow_pickle" not in (REPO / "dags" / "rqvae_semantic_ids.py").read_text()
    reliability_log.append(
        {
            "section": "security",
            "check": "no unpickling of models or inputs",
            "result": "torch.load only with weights_only=True; the only pickle.load is rqvae.io.formats behind "
            "allow_pickle (never set by the DAG); models are safetensors with a SHA-256 check",
            "tests": "test_security.py, test_checkpoint.py (tampered / pickled weights refused), "
            "test_bad_inputs.py::pickle_not_allowed",
        }
    )


ESCAPES = ["../outside", "a/../../outside", "/etc", "~/outside"]


@pytest.mark.parametrize("value", ESCAPES)
def test_settings_refuse_paths_outside_the_roots(value, tmp_path):
    roots = settings.Roots(tmp_path / "in", tmp_path / "work", tmp_path / "pub")
    with pytest.raises(settings.PathOutsideRootError, match="outside the configured roots"):
        settings.dataset_roots(roots, value)
    # Another configured root is still not a place the embeddings param may point to.
    with pytest.raises(settings.PathOutsideRootError):
        settings.dataset_roots(roots, str(roots.work))
    inside = settings.dataset_roots(roots, "team-a/../movielens")
    assert inside.embeddings == roots.embeddings / "movielens"
    assert inside.work == roots.work / "movielens" and inside.publish == roots.publish / "movielens"


@pytest.mark.airflow
@pytest.mark.parametrize("value", ["../outside", "{base}/outside"])
def test_dag_refuses_an_embeddings_root_outside_the_configured_root(
    value, airflow_db, pipeline_dag, roots, capfd, reliability_log
):
    """A complete snapshot waits outside the root: only the path check stands between it and a publish."""
    from tests.dag.test_bad_inputs import task_error

    base = roots["embeddings"].parent
    snapshot = "2026-09-01"
    make_snapshot({"embeddings": base / "outside"}, snapshot, n=600)
    make_snapshot(roots, "2026-08-31", n=600)
    if latest(roots) is None:  # a good version to keep
        assert str(run(pipeline_dag, "2026-08-31").state) == "success"
    before, before_all = latest(roots), tree(base)
    capfd.readouterr()

    dag_run = run(pipeline_dag, snapshot, embeddings_root=value.format(base=base))
    found = states(dag_run)
    assert found["wait_for_embeddings"] == "failed"
    assert all(found[t] == "upstream_failed" for t in TASK_IDS[1:]), found
    error = task_error(capfd.readouterr().out)
    assert "PathOutsideRootError" in error and "outside the configured roots" in error, error
    assert tree(base) == before_all, "nothing may be written anywhere"
    assert latest(roots) == before
    reliability_log.append(
        {
            "section": "security",
            "check": f"trigger form embeddings_root={value!r}",
            "result": "run failed at wait_for_embeddings: "
            + scrub_paths(error, base).split(";")[0][:160],
            "tests": "test_security.py (DAG + include.settings)",
        }
    )


def test_snapshot_param_cannot_carry_a_path(pipeline_dag):
    """The snapshot is a date by the form's own pattern and by parse_snapshot: no `../` can reach a folder."""
    import copy

    from airflow.sdk.exceptions import ParamValidationError

    from include.snapshot import SnapshotError, parse_snapshot

    for bad in ("../2026-01-01", "2026-01-01/../../x", "/etc"):
        param = copy.deepcopy(pipeline_dag.params.get_param("snapshot"))
        with pytest.raises(ParamValidationError):
            param.resolve(bad)
        with pytest.raises(SnapshotError):
            parse_snapshot(bad)

# --------------------------------------------------------------------------------------------- secrets

PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
AWS_KEY = re.compile(r"\bAKIA[0-9A-Z]{16}\b")
# NAME=value or NAME: value where NAME looks like a secret; the value is what gets judged.
ASSIGNED = re.compile(
    r"""(?<![{$])(?P<name>\b[A-Z][A-Z0-9_]*(?:PASSWORD|PASSWORDS|SECRET|SECRET_KEY|FERNET_KEY|TOKEN)\b)"""
    r"""[ \t]*[:=][ \t]*(?P<value>"[^"\n]*"|'[^'\n]*'|[^\s#"',]*)"""
)
PLACEHOLDER = re.compile(r"^(|change-me|changeme|<[^>]*>|\$.*|\{.*|\*+|x+|none|null|example.*|\(.*)$", re.I)


def tracked_files() -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [REPO / name for name in listed.decode().split("\0") if name]


def secret_findings(path: Path) -> list[str]:
    try:
        text = path.read_text()
    except (UnicodeDecodeError, OSError):
        return []
    found = [f"private key at line {text[: m.start()].count(chr(10)) + 1}" for m in PRIVATE_KEY.finditer(text)]
    found += [f"AWS key at line {text[: m.start()].count(chr(10)) + 1}" for m in AWS_KEY.finditer(text)]
    for match in ASSIGNED.finditer(text):
        value = match.group("value").strip("\"'")
        parts = [v.split(":", 1)[-1] for v in value.split(",")]  # `user:password,user:password` lists
        placeholder = PLACEHOLDER.match(value) or all(PLACEHOLDER.match(v) for v in parts)
        if not placeholder and not value.startswith(("os.environ", "env", "secrets.")):
            found.append(f"{match.group('name')}={value[:4]}... at line {text[: match.start()].count(chr(10)) + 1}")
    return found


def test_no_secret_is_committed(reliability_log):
    files = tracked_files()
    assert ".env" not in {p.name for p in files}, ".env holds real secrets: never commit it"
    assert ".env" in (REPO / ".gitignore").read_text().split()
    findings = {str(p.relative_to(REPO)): f for p in files if p.is_file() and (f := secret_findings(p))}
    assert findings == {}, findings
    reliability_log.append(
        {
            "section": "security",
            "check": "no secret in the repository",
            "result": f"{len(files)} tracked files scanned (private keys, AWS keys, *PASSWORD/*SECRET/*TOKEN "
            "values): none; .env is ignored",
            "tests": "test_security.py",
        }
    )


def test_secret_scan_catches_what_it_should(tmp_path):
    """The scanner itself: real-looking values are flagged, placeholders and references are not."""
    leaky = tmp_path / "leaky.env"
    leaky.write_text(  # split so that this file itself does not look like it holds secrets
        "\n".join(["AIRFLOW__API_AUTH__JWT_" "SECRET=s3cr3t-value", "POSTGRES_PASS" "WORD: 'hunter2'",
                   "-----BEGIN RSA PRIVATE" " KEY-----", "key = 'AKIA" "ABCDEFGHIJKLMNOP'"])
    )
    assert len(secret_findings(leaky)) == 4
    fine = tmp_path / "fine.env"
    fine.write_text(
        "\n".join([
            "POSTGRES_PASSWORD=change-me",
            "AIRFLOW_JWT_SECRET=${AIRFLOW_JWT_SECRET:?set it}",
            "X_TOKEN=",
            "AIRFLOW__API_AUTH__JWT_SECRET: $STACK_JWT_SECRET",
            "AIRFLOW_USER_PASSWORDS=admin:change-me,viewer:change-me",
            "DB: postgresql://${POSTGRES_USER:-airflow}:${POSTGRES_PASSWORD:?set it}@postgres/db",
        ])
    )
    assert secret_findings(fine) == []


def test_env_example_documents_every_required_secret():
    compose = REPO / "docker-compose.yaml"
    if not compose.exists():
        pytest.skip("no docker-compose.yaml yet")
    required = set(re.findall(r"\$\{(\w+):\?", compose.read_text()))
    example = dict(
        line.split("=", 1) for line in (REPO / ".env.example").read_text().splitlines()
        if "=" in line and not line.lstrip().startswith("#")
    )
    assert required, "the compose file should require its secrets (${NAME:?message})"
    assert required <= set(example), required - set(example)
    for name in required:
        if re.search(r"PASSWORD|SECRET|KEY", name):
            assert "change-me" in example[name], f"{name} in .env.example must be a placeholder"


ALL_ADMINS = re.compile(r"SIMPLE_AUTH_MANAGER_ALL_ADMINS\W{0,3}\s*[:=]\s*[\"']?\s*true", re.I)


@pytest.mark.parametrize("name", ["docker-compose.yaml", "scripts/stack.sh"])
def test_api_server_requires_login(name, reliability_log):
    path = REPO / name
    if not path.exists():
        pytest.skip(f"{name} not written yet")
    text = path.read_text()
    assert not ALL_ADMINS.search(text), f"{name} turns login off (SIMPLE_AUTH_MANAGER_ALL_ADMINS=True)"
    assert "SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" in text or "SIMPLE_AUTH_MANAGER_USERS" in text, (
        f"{name} should configure the simple auth manager's users"
    )
    reliability_log.append(
        {
            "section": "security",
            "check": f"{name}: the API server requires login",
            "result": "no SIMPLE_AUTH_MANAGER_ALL_ADMINS=True; users and passwords configured",
            "tests": "test_security.py",
        }
    )


# --------------------------------------------------------------------------------------------- UI plugin

PLUGIN_VERSION = "2026-05-01"
PLUGIN_ROUTES = {
    "index page": "/semantic-ids/",
    "latest report": "/semantic-ids/latest",
    "manifest": f"/semantic-ids/{PLUGIN_VERSION}/manifest.json",
    "report page": f"/semantic-ids/{PLUGIN_VERSION}/report/index.html",
    "report plot": f"/semantic-ids/{PLUGIN_VERSION}/report/usage_per_level.png",
    "evaluation": f"/semantic-ids/{PLUGIN_VERSION}/evaluation.json",
    "evaluation plot": f"/semantic-ids/{PLUGIN_VERSION}/evaluation_recall.png",
    "any other path": "/semantic-ids/no/such/file.png",
}
LOGGED_IN_STATUS = {"latest report": 307, "any other path": 404}  # the rest: 200
# Sent verbatim (http.client): the server decodes them, the plugin must answer 404, never 500.
MALFORMED_PATHS = [
    f"/semantic-ids/{PLUGIN_VERSION}/manifest.json%00.png",
    "/semantic-ids/%00",
    "/semantic-ids/..%2F..%2F..%2Fetc%2Fpasswd",
    f"/semantic-ids/{PLUGIN_VERSION}/report/%2e%2e/model/config.json",
    f"/semantic-ids/{PLUGIN_VERSION}/report/..%2Fmodel/config.json",
    f"/semantic-ids/{PLUGIN_VERSION}/report/../../secret.txt",
    f"/semantic-ids/{PLUGIN_VERSION}%5C..%5C..%5Csecret.txt",
    f"/semantic-ids/{PLUGIN_VERSION}/" + "a" * 300 + ".png",
    "/semantic-ids/" + "a/" * 1500 + "x.png",
]
BROWSER_NAVIGATION = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document", "Accept": "text/html"}


def fake_version(root: Path) -> None:
    """A published version as the UI reads it (no pipeline run needed), plus files it must never serve."""
    folder = root / PLUGIN_VERSION
    (folder / "report").mkdir(parents=True)
    (folder / "model").mkdir()
    png = b"\x89PNG\r\n\x1a\n"
    manifest = {"snapshot": PLUGIN_VERSION, "counts": {"n_items": 1234}, "airflow": {"run_id": "manual__x"},
                "collaborative": {"used": True, "weight": 0.1}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    (folder / "report" / "index.html").write_text(f"<h1>Semantic IDs {PLUGIN_VERSION}</h1>")
    (folder / "report" / "usage_per_level.png").write_bytes(png)
    (folder / "evaluation.json").write_text(json.dumps({"summary": {"status": "skipped", "reason": "no logs"}}))
    (folder / "evaluation_recall.png").write_bytes(png)
    (folder / "model" / "config.json").write_text("{}")
    (root / "secret.txt").write_text("not for the UI")
    (root / "latest").symlink_to(PLUGIN_VERSION)
    for snapshot in PROMOTABLE:
        stored_version(root, snapshot)


PROMOTABLE = ("2026-04-29", "2026-04-30")  # versions in the stored-copy layout, judged passed: promotable


def stored_version(root: Path, snapshot: str) -> None:
    """A published version as publish lays it out (`{snapshot}` -> its stored copy) with a passed verdict."""
    copy = root / ".versions" / snapshot / "c1" / snapshot
    copy.mkdir(parents=True)
    manifest = {"snapshot": snapshot, "counts": {"n_items": 1234}, "checksums": {"semantic_ids": "sha256:ab"}}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    summary = {"status": "passed", "recall_at_10": 0.07, "recall_at_10_se": 0.01, "nll": 5.2, "nll_se": 0.08,
               "reason": ""}
    (copy / "evaluation.json").write_text(json.dumps({"summary": summary, "semantic_ids_sha256": "sha256:ab"}))
    (root / snapshot).symlink_to(f".versions/{snapshot}/c1/{snapshot}")


@pytest.fixture(scope="module")
def plugin_server(tmp_path_factory) -> Iterator[AirflowUI]:
    """`make airflow`'s standalone with a published version, an empty dags folder (only the API matters
    here) and three users: admin, a viewer (the least role that may read runs) and one without a role."""
    root = tmp_path_factory.mktemp("plugin-airflow")
    fake_version(root / "data" / "published")
    (root / "dags").mkdir()
    extra = {"AIRFLOW__CORE__DAGS_FOLDER": str(root / "dags"),
             "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,reader:viewer,nobody:"}
    log = REPO / "var" / "test-artifacts" / "security" / "airflow-standalone.log"
    with standalone(root, log, extra_env=extra) as ui:
        yield ui


def raw_get(ui: AirflowUI, path: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    """GET with the path exactly as written (requests would normalise `..`); (status, Location, body)."""
    url = urlsplit(ui.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        connection.request("GET", path, headers=headers or {})
        answer = connection.getresponse()
        return answer.status, answer.getheader("Location") or "", answer.read().decode(errors="replace")
    finally:
        connection.close()


@pytest.mark.airflow
@pytest.mark.slow
@pytest.mark.parametrize("name", PLUGIN_ROUTES)
def test_plugin_routes_need_login_on_a_real_api_server(name, plugin_server, reliability_log):
    """Airflow authenticates its own routers, not a mounted plugin app: the plugin must, on every route."""
    ui, route = plugin_server, PLUGIN_ROUTES[name]
    assert raw_get(ui, "/api/v2/dags")[0] == 401  # the core API's own answer, for comparison

    anonymous, _, body = raw_get(ui, route)
    assert anonymous == 401 and json.loads(body) == {"detail": "Not authenticated"}, (anonymous, body)
    assert str(ui.publish_root) not in body and "secret" not in body
    browser, location, _ = raw_get(ui, route, BROWSER_NAVIGATION)
    assert browser == 307 and location.startswith("/auth/login?next="), (browser, location)
    forged = raw_get(ui, route, {"Authorization": "Bearer not-a-jwt"})[0]
    assert forged == 403
    no_role = raw_get(ui, route, {"Authorization": f"Bearer {ui.token('nobody')}"})
    assert no_role[0] == 403 and json.loads(no_role[2]) == {"detail": "Forbidden"}

    want = LOGGED_IN_STATUS.get(name, 200)
    admin = raw_get(ui, route, {"Authorization": f"Bearer {ui.token('admin')}"})
    viewer = raw_get(ui, route, {"Cookie": f"_token={ui.token('reader')}"})  # how the UI's iframe asks
    assert admin[0] == viewer[0] == want, (admin[:2], viewer[:2])
    if name == "index page":
        assert "Published semantic IDs" in viewer[2] and "<th>Downstream</th>" in viewer[2] and "w=0.1" in viewer[2]
    reliability_log.append(
        {
            "section": "security",
            "check": f"UI plugin, {name}: GET {route}",
            "result": f"anonymous {anonymous}; logged-out browser {browser} to {location.split('?')[0]}; "
            f"forged token {forged}; user without a role {no_role[0]}; admin token {admin[0]}, "
            f"viewer's UI cookie {viewer[0]}",
            "tests": "test_security.py (real airflow standalone), test_plugin.py",
        }
    )


@pytest.mark.airflow
@pytest.mark.slow
def test_plugin_malformed_paths_are_404_on_a_real_api_server(plugin_server, reliability_log):
    ui = plugin_server
    headers = {"Authorization": f"Bearer {ui.token('admin')}"}
    found = {path: raw_get(ui, path, headers) for path in MALFORMED_PATHS}
    assert {path: status for path, (status, _, _) in found.items()} == dict.fromkeys(MALFORMED_PATHS, 404)
    assert not any(str(ui.publish_root) in body for _, _, body in found.values())
    assert all(json.loads(body) == {"detail": "Not Found"} for _, _, body in found.values())
    reliability_log.append(
        {
            "section": "security",
            "check": "UI plugin, malformed paths (logged in): %00, encoded ../ and \\, %2e%2e out of report/, "
            "a 300-byte name, a 3,000-character path",
            "result": f"{len(found)} requests: 404 Not Found each, no 500, no publish-root path in any answer",
            "tests": "test_security.py (real airflow standalone), test_plugin.py",
        }
    )


def promotion_state(root: Path) -> dict[str, object]:
    """Everything a promotion changes: the alias, its file and the log."""
    link = root / "serving"
    return {"serving": os.readlink(link) if link.is_symlink() else None,
            **{name: (root / name).read_text() if (root / name).is_file() else None
               for name in ("serving.json", "promotions.jsonl")}}


@pytest.mark.airflow
@pytest.mark.slow
def test_promotion_needs_edit_access_on_a_real_api_server(plugin_server, reliability_log):
    """POST /semantic-ids/promote against `airflow standalone`: refused to anonymous (401), forged and role-less
    tokens (403), the viewer by token or by UI cookie (403), the admin's cookie without the page's CSRF token
    (403), unknown and malformed versions (404), each leaving serving, serving.json and the log as they were;
    the admin's token moves serving, and the admin's UI session rolls it back with the page's own form."""
    import requests

    ui = plugin_server
    root = ui.publish_root
    url = f"{ui.url}/semantic-ids/promote"
    move = {"version": PROMOTABLE[1], "reason": "security test"}
    before = promotion_state(root)

    def post(headers: dict[str, str] | None = None, **body: object) -> requests.Response:
        return requests.post(url, headers=headers or {}, timeout=30, allow_redirects=False, **body)

    bearer = {name: {"Authorization": f"Bearer {ui.token(name)}"} for name in ("admin", "reader", "nobody")}
    refused = {
        "anonymous": post(json=move).status_code,
        "forged token": post({"Authorization": "Bearer not-a-jwt"}, json=move).status_code,
        "user without a role": post(bearer["nobody"], json=move).status_code,
        "viewer's token": post(bearer["reader"], json=move).status_code,
        "viewer's UI cookie": post({"Cookie": f"_token={ui.token('reader')}"}, data=move).status_code,
        "admin's UI cookie, no CSRF token": post({"Cookie": f"_token={ui.token('admin')}"}, data=move).status_code,
        "admin, forged CSRF token": post({"Cookie": f"_token={ui.token('admin')}"},
                                         data={**move, "csrf_token": "forged"}).status_code,
    }
    assert refused == {"anonymous": 401, "forged token": 403, "user without a role": 403, "viewer's token": 403,
                       "viewer's UI cookie": 403, "admin's UI cookie, no CSRF token": 403,
                       "admin, forged CSRF token": 403}, refused
    unknown = ["2026-04-28", "../2026-04-30", "latest", ".versions/2026-04-30", "2026-04-30/../2026-04-29",
               PLUGIN_VERSION, "a" * 300]  # PLUGIN_VERSION: a plain folder from before stored copies
    not_found = {version: post(bearer["admin"], json={**move, "version": version}) for version in unknown}
    assert {v: a.status_code for v, a in not_found.items()} == dict.fromkeys(unknown, 404)
    assert not any(str(root) in a.text for a in not_found.values())
    assert promotion_state(root) == before, "nothing moved"

    moved = post(bearer["admin"], json=move)
    assert moved.status_code == 200 and moved.json()["moved"], moved.text
    assert os.readlink(root / "serving").endswith(f"/{PROMOTABLE[1]}")
    cookie = {"Cookie": f"_token={ui.token('admin')}"}
    page = requests.get(f"{ui.url}/semantic-ids/", headers=cookie, timeout=30).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    back = post({**cookie, "Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe"},
                data={"version": PROMOTABLE[0], "reason": "rollback from the page", "csrf_token": token})
    assert back.status_code == 303 and os.readlink(root / "serving").endswith(f"/{PROMOTABLE[0]}")
    log = [json.loads(line) for line in (root / "promotions.jsonl").read_text().splitlines()]
    assert [(m["by"], m["via"], m["kind"], m["to"]) for m in log] == [
        ("admin", "api", "manual", PROMOTABLE[1]), ("admin", "ui", "rollback", PROMOTABLE[0])]
    viewer_page = requests.get(f"{ui.url}/semantic-ids/", headers={"Cookie": f"_token={ui.token('reader')}"},
                               timeout=30).text
    assert f"{PROMOTABLE[0]} <b>(serving)</b>" in viewer_page and "<form" not in viewer_page
    reliability_log.append(
        {
            "section": "security",
            "check": "UI plugin, POST /semantic-ids/promote",
            "result": "; ".join(f"{who} {code}" for who, code in refused.items())
            + f"; {len(unknown)} unknown or malformed versions 404; nothing moved by any of them; admin token 200 "
            "(moved), admin UI session with the page's CSRF token 303 (rolled back), both logged",
            "tests": "test_security.py (real airflow standalone), test_promotion.py",
        }
    )

