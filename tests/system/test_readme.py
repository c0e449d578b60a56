"""Every command in README.md is exercised: the quick ones are run here, the long ones are mapped to the tests
that run them.

Commands are the lines of the README's fenced ```bash blocks (backslash continuations joined, comments
dropped). `rqvae ...` commands run for real, in order, with their `var/` paths moved into a temp folder; every
```python block runs as a script in that folder. Anything else must appear in MAPPED with the test that covers
it, and that test must exist: a new README command without either fails here.
"""

from __future__ import annotations

import ast
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
STACK_TEST = "tests/system/test_stack_integration.py"

# Command prefix -> (test file, test function) that runs the same thing, and how.
MAPPED: dict[str, tuple[str, str]] = {
    # scripts/demo.py (what `make demo` runs) on a small snapshot in a temp Airflow home.
    "make demo": ("tests/dag/test_demo.py", "test_demo_publishes_a_version_and_prints_where"),
    # `make test` is what CI runs; this very test is part of it.
    "make test": ("tests/system/test_readme.py", "test_every_readme_command_is_run_or_mapped"),
    # scripts/airflow_standalone.sh (what `make airflow` runs) started by the browser test, then the UI used.
    "make airflow": ("tests/system/test_browser.py", "test_trigger_form_run_and_report"),
    "cat var/airflow/simple_auth_manager_passwords.json.generated": (
        "tests/system/test_browser.py", "test_trigger_form_run_and_report"),  # the fixture logs in with that password
    # `airflow backfill create` against a running scheduler (the native Celery stack).
    "airflow backfill create": (STACK_TEST, "test_trigger_and_backfill_on_the_celery_stack"),
    "scripts/stack.sh": (STACK_TEST, "test_trigger_and_backfill_on_the_celery_stack"),
    # No Docker engine in CI: docker-compose.yaml is resolved by `docker-compose config` with .env.example.
    "cp .env.example .env": (
        "tests/system/test_compose.py", "test_env_example_documents_every_variable_the_file_reads"),
    "docker compose": ("tests/system/test_compose.py", "test_services_exist"),
    # needs a published, judged version: the CLI's promotions, rollbacks and refusals on real publish roots
    "rqvae promote": ("tests/unit/test_promotion.py", "test_the_cli_promotes_rolls_back_and_refuses_with_exit_code_2"),
}
RUN_PREFIXES = ("rqvae ", 'eval "$(.venv/bin/python scripts/airflow_env.py --export)"')


def blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.M | re.S)


def commands() -> list[str]:
    found = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            command = re.sub(r"\s+#.*$", "", line).strip()
            if command and not command.startswith("#"):
                found.append(re.sub(r"\s+", " ", command))
    return found


def test_every_readme_command_is_run_or_mapped():
    found = commands()
    assert any(c.startswith("rqvae ") for c in found) and blocks("python"), "the README lost its examples"
    unknown = [c for c in found if not c.startswith(RUN_PREFIXES) and not any(c.startswith(m) for m in MAPPED)]
    assert not unknown, f"README commands neither run by tests/system/test_readme.py nor mapped in MAPPED: {unknown}"
    for prefix, (path, name) in MAPPED.items():
        tree = ast.parse((REPO / path).read_text())
        defined = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert name in defined, f"MAPPED[{prefix!r}] names {path}::{name}, which does not exist"
    unused = [p for p in MAPPED if not any(c.startswith(p) for c in found)]
    assert not unused, f"MAPPED entries for commands the README no longer has: {unused}"


def test_airflow_env_line_prints_the_demo_settings():
    line = next(c for c in commands() if c.startswith("eval "))
    inner = re.fullmatch(r'eval "\$\((.*)\)"', line).group(1)
    proc = subprocess.run(shlex.split(inner), cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")})
    assert proc.returncode == 0, proc.stderr
    assert "export AIRFLOW_HOME=" in proc.stdout and "var/airflow" in proc.stdout
    assert "export AIRFLOW__CORE__EXECUTOR=LocalExecutor" in proc.stdout


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("readme")


def test_readme_cli_commands_run(workdir: Path):
    """The CLI walkthrough as written, its `var/` paths inside a temp folder; each exits 0 and leaves its file."""
    cli = [c for c in commands() if c.startswith("rqvae ") and not any(c.startswith(m) for m in MAPPED)]
    assert [shlex.split(c)[1] for c in cli] == ["synth", "train", "encode", "evaluate", "evaluate-retrieval"]
    for command in cli:
        argv = [a.replace("var/", f"{workdir}/var/", 1) if a.startswith("var/") else a for a in shlex.split(command)]
        proc = subprocess.run([sys.executable, "-m", "rqvae.cli", *argv[1:]], capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, f"{command}\n{proc.stderr[-3000:]}"
        for flag in ("--out", "--json-dict", "--interactions"):
            if flag in argv:
                assert Path(argv[argv.index(flag) + 1]).exists(), f"{command}: no {flag} output"


def test_readme_python_snippets_run(workdir: Path):
    for n, snippet in enumerate(blocks("python")):
        script = workdir / f"snippet_{n}.py"
        script.write_text(snippet)
        proc = subprocess.run([sys.executable, str(script)], cwd=workdir, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, f"README python block {n} failed:\n{snippet}\n{proc.stderr[-3000:]}"
