"""The kill sweep over the `serving` alias: a promotion (or a rollback) killed before each change it makes to
the publish root, and a publish killed at each step while `serving` names the copy being re-published.

Whatever step the kill lands on, `serving` names a complete version that passed the gate (the old one or the
new one), and the retry ends with serving on the new version, serving.json agreeing, exactly one log line per
move that took effect and nothing left over. A kill is SIGKILL-faithful, as in tests/stages/test_faults.py:
the move runs in a child whose audit hook calls `os._exit(137)` before the k-th change, for k = 1, 2, ...
until the move completes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from include.layout import RunFolder
from include.params import EvaluationOptions
from include.stages import publish as publish_module
from include.stages.record_evaluation import record_evaluation
from include.versions import LATEST, LOCK_FILE, SERVING, SERVING_JSON, VERSIONS
from rqvae.ids.promotion import judge, promote, promote_automatically, read_promotions, read_serving
from rqvae.io.synth import synth
from rqvae.modes import Verdict
from tests.helpers import evaluation_result, prepare_work, publish_work
from tests.stages.test_faults import KILLED, SWEEP_CHILD, verify

OLD, NEW = "2026-07-01", "2026-07-02"
PROMOTE_CHILD = """
import os, sys
from pathlib import Path
from rqvae.ids import promotion

root, kill_at, kind, name = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
seen = []

def hook(event, args):
    # every write to an entry of the publish root itself: pointers, their files, the log, the journal, the lock
    if event == "open":
        paths = [args[0]] if isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR) else []
    elif event in ("os.rename", "os.symlink", "os.remove"):
        paths = list(args[:2])
    else:
        return
    for arg in paths:
        if isinstance(arg, (str, bytes, os.PathLike)) and Path(os.fsdecode(arg)).parent == root:
            seen.append(event)
            if len(seen) == kill_at:
                os._exit({killed})
            return

sys.addaudithook(hook)
if kind == "automatic":
    outcome = promotion.promote_automatically(root, name, by="killed", reason="sweep")
else:
    outcome = promotion.promote(root, name, by="killed", via="cli", reason="sweep")
assert outcome.moved, outcome
print(len(seen))
"""


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> Path:
    """OLD and NEW published from a real work folder, both judged passed by the real gate, serving on OLD."""
    base = tmp_path_factory.mktemp("promotion-faults")
    work = prepare_work(synth(base / "input", 800, dim=16, seed=4), base / "work")
    root = base / "published"
    for day in (OLD, NEW):
        publish_work(day, work, root, run_id=day)
        result = evaluation_result(root / day, -0.1, base / "eval" / day / "result.json")
        record_evaluation(root / day, result, EvaluationOptions(max_se=2.0), run_id=f"eval-{day}")
    assert promote_automatically(root, OLD, by="setup", reason="first pass").moved
    return root


def serving_is_sound(root: Path) -> str:
    """What a consumer sees at any moment: `serving` leads to a complete version that passed the gate."""
    assert os.path.exists(root / SERVING), "serving is " + ("dangling" if os.path.lexists(root / SERVING)
                                                              else "missing")
    target = (root / SERVING).resolve()
    verify(target)  # exactly the files its manifest lists, each with its checksum
    assert judge(target).verdict == Verdict.PASSED
    snapshot = json.loads((target / "manifest.json").read_text())["snapshot"]
    assert read_serving(root) == snapshot
    return snapshot


def settled(root: Path, serving: str, moves: list[tuple[str | None, str]]) -> None:
    """The end state after the retry: serving and serving.json on `serving`, one log line per move, no leftovers."""
    assert serving_is_sound(root) == serving
    assert (root / SERVING).resolve() == (root / serving).resolve(), "the copy the name points to"
    assert json.loads((root / SERVING_JSON).read_text())["snapshot"] == serving
    assert [(m["from"], m["to"]) for m in read_promotions(root)] == moves
    assert {p.name for p in root.iterdir() if p.name.startswith(".")} <= {LOCK_FILE, VERSIONS}, "leftovers"


def sweep(template: Path, tmp_path: Path, start: str | None, target: str, kind: str) -> int:
    """Kill the move to `target` before each of its changes (serving on `start` first); returns the steps."""
    script = PROMOTE_CHILD.format(killed=KILLED)
    moves = [(None, OLD)] + ([(OLD, start)] if start not in (None, OLD) else [])
    kill_at, steps = 1, None
    while steps is None:
        root = tmp_path / f"step-{kill_at}"
        shutil.copytree(template, root, symlinks=True)
        if start not in (None, OLD):
            promote(root, start, by="setup", via="cli", reason="starting point")
        done = subprocess.run([sys.executable, "-c", script, str(root), str(kill_at), kind, target],
                              capture_output=True, text=True, timeout=120)
        if done.returncode == 0:  # fewer changes than kill_at: the move completed
            steps = int(done.stdout.split()[-1])
            settled(root, target, [*moves, (start or OLD, target)])
        else:
            assert done.returncode == KILLED, done.stderr[-2000:]
            assert serving_is_sound(root) in (start or OLD, target)
            if kind == "automatic":  # the evaluation task's retry
                promote_automatically(root, target, by="retry", reason="sweep")
            else:  # the person runs `rqvae promote` again
                promote(root, target, by="retry", via="cli", reason="sweep")
            settled(root, target, [*moves, (start or OLD, target)])
        shutil.rmtree(root)
        kill_at += 1
    return steps


@pytest.mark.parametrize(("kind", "start", "target"), [("automatic", OLD, NEW), ("rollback", NEW, OLD)])
def test_a_promotion_killed_before_each_change_leaves_serving_on_a_passed_version(template, tmp_path, kind, start,
                                                                                  target, reliability_log):
    steps = sweep(template, tmp_path, start, target, kind)
    # lock, journal (temp + rename), temp symlink + swap, serving.json (temp + rename), the log, journal removal
    assert steps >= 8, f"{steps} changes seen"
    reliability_log.append(
        {
            "section": "fault",
            "fault": f"{'automatic promotion' if kind == 'automatic' else 'rollback'} killed before each of its "
                     f"{steps} changes of the publish root",
            "left_behind": "at most the journal .serving.pending.json, a temp symlink or a temp serving.json",
            "latest_after_kill": f"serving: {start} or {target}, always a complete version that passed the gate",
            "after_retry": f"serving -> {target}, serving.json agrees, one log line per move, no leftovers",
            "versions_lost": 0,
        }
    )


def test_a_publish_killed_at_each_step_never_takes_the_served_copy_away(template, tmp_path, reliability_log):
    """serving pins NEW's copy; NEW is re-published (a third time: older copies are dropped) and killed before
    each change of the root: the copy serving names is never renamed or deleted, and after the retry serving
    still names it, complete and passed, while `latest` and the name move to the new copy."""
    base = tmp_path / "base"
    shutil.copytree(template, base, symlinks=True)
    promote_automatically(base, NEW, by="setup", reason="serve NEW")
    served_copy = os.readlink(base / SERVING)
    work = template.parent / "work"
    for run_id in ("second", "third"):
        publish_work(NEW, work, base, run_id=run_id)
    assert os.readlink(base / SERVING) == served_copy, "two re-publishes later, serving still pins its copy"
    staged = tmp_path / "staged"
    publish_module._stage(staged, RunFolder(work), NEW, False, "killed", None, {}, {}, {}, {})

    def staged_copy(staging: Path, *args) -> dict:
        shutil.copytree(staged, staging)
        return json.loads((staging / "manifest.json").read_text())

    script = SWEEP_CHILD.format(killed=KILLED)
    kill_at, steps = 1, None
    while steps is None:
        root = tmp_path / f"step-{kill_at}"
        shutil.copytree(base, root, symlinks=True)
        done = subprocess.run([sys.executable, "-c", script, NEW, str(work), str(root), str(kill_at), str(staged)],
                              capture_output=True, text=True, timeout=120)
        if done.returncode == 0:
            steps = int(done.stdout.split()[-1])
        else:
            assert done.returncode == KILLED, done.stderr[-2000:]
            assert serving_is_sound(root) == NEW and os.readlink(root / SERVING) == served_copy
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(publish_module, "_stage", staged_copy)
                publish_work(NEW, work, root, run_id="retry")
            assert serving_is_sound(root) == NEW and os.readlink(root / SERVING) == served_copy
            assert os.readlink(root / NEW) != served_copy and os.readlink(root / LATEST) == NEW
            assert [(m["from"], m["to"]) for m in read_promotions(root)] == [(None, OLD), (OLD, NEW)]
        shutil.rmtree(root)
        kill_at += 1
    assert steps >= 5, f"{steps} steps seen"
    reliability_log.append(
        {
            "section": "fault",
            "fault": f"re-publish of the served snapshot killed before each of its {steps} changes",
            "left_behind": "at most a staging folder, a temp symlink or an unnamed stored copy",
            "latest_after_kill": "serving: the judged copy it named, untouched",
            "after_retry": f"{NEW} re-published (not yet judged), serving still on its judged copy",
            "versions_lost": 0,
        }
    )
