"""What the pipeline publishes is pinned byte for byte: IDs, models, serving files and manifests (times, run ids
and machine paths aside) equal those of the code before the issue-29 reorganisation.

tests/pinned_runs.py runs the real DAG (dag.test) in a fresh one-thread process on a demo-like snapshot with the
form untouched and on three consecutive snapshots (retrain; incremental with `reassign`; an anchored retrain),
and digests every published version; tests/fixtures/outputs_before_refactor/digests.json is the same script's
output on the commit before the reorganisation (README there). A refactor that changes one default, one draw or
one float operation on the way from the form to the files fails here, naming the file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "outputs_before_refactor" / "digests.json"

pytestmark = [pytest.mark.slow, pytest.mark.airflow]


def _differences(expected: dict, got: dict, where: str = "") -> list[str]:
    """Every key path whose value differs (or is missing on one side)."""
    if not (isinstance(expected, dict) and isinstance(got, dict)):
        return [] if expected == got else [f"{where}: {expected!r} -> {got!r}"[:300]]
    out = []
    for key in sorted(set(expected) | set(got)):
        if key not in got or key not in expected:
            out.append(f"{where}/{key}: {'missing now' if key not in got else 'new'}")
        else:
            out += _differences(expected[key], got[key], f"{where}/{key}")
    return out


def test_published_versions_are_bit_identical_to_the_pinned_ones(airflow_db: Path, tmp_path: Path) -> None:
    out = tmp_path / "digests.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run([sys.executable, "-m", "tests.pinned_runs", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected, got = json.loads(FIXTURE.read_text()), json.loads(out.read_text())
    assert set(got) == {"demo/2026-03-01", "days/2026-03-02", "days/2026-03-03", "days/2026-03-04"}
    assert all("model/model.safetensors" in v and "serving_index/meta.json" in v for v in got.values())
    diff = _differences(expected, got)
    assert not diff, "published files changed:\n" + "\n".join(diff[:40])
