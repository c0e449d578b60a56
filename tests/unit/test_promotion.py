"""The `serving` alias from the library alone (rqvae.ids.promotion, the `rqvae promote` CLI): it moves only to
complete versions whose verdict allows it, automatic promotion never goes back, a person's move needs a reason
(and force for a failed version), every move is one log line, and an interrupted move is completed or dropped.

Publish roots are built by hand in the published layout (`{snapshot}` -> `.versions/{snapshot}/{copy}/{snapshot}`
with a manifest): the library needs nothing else, which is the point of it living here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rqvae.cli import main
from rqvae.ids.promotion import (
    NeedsForce,
    ReasonRequired,
    UnknownVersion,
    finish_interrupted,
    judge,
    promote,
    promote_automatically,
    read_promotions,
    read_serving,
    serving_target,
)
from rqvae.io.published import PROMOTION_PENDING, PROMOTIONS, SERVING, SERVING_JSON, swap_link
from rqvae.modes import PromotionKind, Verdict

REPO = Path(__file__).resolve().parents[2]
D1, D2, D3 = "2026-07-01", "2026-07-02", "2026-07-03"


def publish(root: Path, snapshot: str, verdict: str | None = None, *, copy: str = "c1", ids: str = "sha256:a",
            evaluated: str | None = None) -> Path:
    """A complete stored copy named by `{snapshot}` (and by `latest`), with an evaluation.json when `verdict`."""
    stored = root / ".versions" / snapshot / copy / snapshot
    stored.mkdir(parents=True)
    (stored / "manifest.json").write_text(json.dumps({"snapshot": snapshot, "checksums": {"semantic_ids": ids}}))
    (stored / "semantic_ids.parquet").write_bytes(b"ids of " + snapshot.encode())
    if verdict is not None:
        evaluate(stored, verdict, evaluated or ids)
    swap_link(root / snapshot, f".versions/{snapshot}/{copy}/{snapshot}")
    swap_link(root / "latest", snapshot)
    return stored


def evaluate(folder: Path, verdict: str, ids: str) -> None:
    summary = {"status": verdict, "reason": "nll worse than rqkmeans by 0.5 (5.0 paired SE > max_se=2.0)"
               if verdict == "failed" else ""}
    (folder / "evaluation.json").write_text(json.dumps({"summary": summary, "semantic_ids_sha256": ids}))


def served(root: Path) -> str | None:
    """The snapshot whose stored copy `serving` resolves to, checked complete (what a consumer would load)."""
    if not os.path.lexists(root / SERVING):
        return None
    manifest = json.loads((root / SERVING / "manifest.json").read_text())
    assert (root / SERVING / "semantic_ids.parquet").read_bytes() == b"ids of " + manifest["snapshot"].encode()
    return manifest["snapshot"]


def state(root: Path) -> dict[str, object]:
    """Everything a move may change: the alias, its file and the log."""
    files = {name: (root / name).read_text() if (root / name).is_file() else None for name in (SERVING_JSON,
                                                                                                 PROMOTIONS)}
    return {"serving": os.readlink(root / SERVING) if os.path.lexists(root / SERVING) else None, **files}


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "published"
    folder.mkdir()
    return folder


def test_automatic_promotion_follows_passed_versions_only(root):
    publish(root, D1, "passed")
    first = promote_automatically(root, D1, by="semantic_ids_evaluation", reason="passed", run_id="r1")
    assert first.moved and first.record["kind"] == PromotionKind.AUTOMATIC and served(root) == D1
    publish(root, D2, "failed")
    second = promote_automatically(root, D2, by="semantic_ids_evaluation", reason="passed")
    assert not second.moved and "failed" in second.message and second.verdict == Verdict.FAILED
    assert served(root) == D1 and read_serving(root) == D1
    publish(root, D3)  # not evaluated (a day without interactions)
    assert not promote_automatically(root, D3, by="e", reason="r").moved
    assert promote_automatically(root, D3, by="e", reason="no interactions", allow_unevaluated=True).moved
    assert served(root) == D3
    log = read_promotions(root)
    assert [(m["from"], m["to"], m["verdict"]) for m in log] == [(None, D1, "passed"), (D1, D3, "not evaluated")]
    assert log[0]["run_id"] == "r1" and log[0]["by"] == "semantic_ids_evaluation" and log[0]["at"]
    pointer = json.loads((root / SERVING_JSON).read_text())
    assert pointer["snapshot"] == D3 and pointer["promotion"]["id"] == log[-1]["id"]


def test_automatic_promotion_never_moves_serving_back(root):
    publish(root, D1, "passed")
    publish(root, D3, "passed")
    assert promote_automatically(root, D3, by="e", reason="r").moved
    late = promote_automatically(root, D1, by="e", reason="r")  # a backfill's verdict arriving late
    assert not late.moved and "never moves it back" in late.message and served(root) == D3
    assert len(read_promotions(root)) == 1


def test_serving_pins_the_judged_copy_through_a_republish(root):
    """A re-publish makes a copy no judge has seen: the name moves to it, serving stays on the judged copy."""
    publish(root, D1, "passed", copy="c1")
    promote_automatically(root, D1, by="e", reason="r")
    publish(root, D1, copy="c2", ids="sha256:b")  # the same day re-published, not evaluated yet
    assert os.readlink(root / D1).endswith("/c2/" + D1) and serving_target(root).parts[2] == "c1"
    assert not promote_automatically(root, D1, by="e", reason="r").moved
    evaluate(root / D1, "passed", "sha256:b")  # its evaluation passes: serving follows to the new copy
    assert promote_automatically(root, D1, by="e", reason="r").moved and serving_target(root).parts[2] == "c2"
    assert [m["path"].split("/")[2] for m in read_promotions(root)] == ["c1", "c2"]


def test_a_verdict_on_other_ids_counts_as_not_evaluated(root):
    stored = publish(root, D1, "passed", evaluated="sha256:other")
    assert judge(stored) == judge(root / D1)
    assert judge(stored).verdict == Verdict.NOT_EVALUATED and "other IDs" in judge(stored).detail
    (stored / "evaluation.json").write_text("{torn")
    assert judge(stored).verdict == Verdict.NOT_EVALUATED


def test_a_person_promotes_with_a_reason_and_forces_a_failed_version(root):
    publish(root, D1, "passed")
    publish(root, D2, "failed")
    promote_automatically(root, D1, by="e", reason="r")
    before = state(root)
    with pytest.raises(NeedsForce, match="failed the downstream gate .*nll worse than rqkmeans"):
        promote(root, D2, by="alice", via="cli", reason="checked by hand")
    with pytest.raises(ReasonRequired):
        promote(root, D2, by="alice", via="cli", reason="  ", force=True)
    assert state(root) == before, "a refused promotion changes nothing"
    forced = promote(root, D2, by="alice", via="cli", reason="gate noise", force=True)
    assert forced.moved and served(root) == D2
    assert {k: forced.record[k] for k in ("by", "via", "kind", "from", "to", "verdict", "forced", "reason")} == {
        "by": "alice", "via": "cli", "kind": "manual", "from": D1, "to": D2, "verdict": "failed", "forced": True,
        "reason": "gate noise"}
    back = promote(root, D1, by="bob", via="ui", reason="CTR dropped")
    assert back.record["kind"] == PromotionKind.ROLLBACK and not back.record["forced"] and served(root) == D1
    again = promote(root, D1, by="bob", via="ui", reason="again")
    assert not again.moved and "already serving" in again.message
    assert [m["kind"] for m in read_promotions(root)] == ["automatic", "manual", "rollback"]


@pytest.mark.parametrize("name", ["", "latest", "serving", "serving.json", "promotions.jsonl", ".versions", "../x",
                                  "a/b", "2026-07-09", "2026-07-01\x00", "x" * 300, "lost"])
def test_unknown_or_malformed_versions_move_nothing(root, name):
    publish(root, D1, "passed")
    promote_automatically(root, D1, by="e", reason="r")
    (root / "lost").symlink_to(".versions/lost/c1/lost")  # a pointer to nothing
    before = state(root)
    with pytest.raises(UnknownVersion):
        promote(root, name, by="alice", via="api", reason="r", force=True)
    assert state(root) == before


def test_incomplete_or_pre_immutable_versions_are_refused(root):
    stored = publish(root, D1, "passed")
    (stored / "manifest.json").unlink()  # a copy without its manifest is not complete
    with pytest.raises(UnknownVersion, match="not complete"):
        promote(root, D1, by="a", via="cli", reason="r")
    (root / D2).mkdir()
    (root / D2 / "manifest.json").write_text(json.dumps({"snapshot": D2}))
    with pytest.raises(UnknownVersion, match="re-publish"):
        promote(root, D2, by="a", via="cli", reason="r")
    with pytest.raises(UnknownVersion, match="no publish root"):
        promote(root / "nope", D1, by="a", via="cli", reason="r")
    assert not os.path.lexists(root / SERVING)


def test_a_torn_log_line_is_skipped_and_ended_before_the_next(root):
    publish(root, D1, "passed")
    publish(root, D2, "passed")
    promote_automatically(root, D1, by="e", reason="r")
    with open(root / PROMOTIONS, "a") as log:
        log.write('{"id": "torn", "to": "20')  # a power cut mid-line
    assert [m["to"] for m in read_promotions(root)] == [D1]
    promote_automatically(root, D2, by="e", reason="r")
    assert [m["to"] for m in read_promotions(root)] == [D1, D2]


def test_an_interrupted_move_is_completed_when_serving_moved_and_dropped_when_not(root):
    publish(root, D1, "passed")
    publish(root, D2, "passed")
    promote_automatically(root, D1, by="e", reason="r")
    record = {"id": "killed", "to": D2, "from": D1, "path": f".versions/{D2}/c1/{D2}", "verdict": "passed",
              "at": "2026-07-02T00:00:00+00:00", "kind": "automatic"}
    (root / PROMOTION_PENDING).write_text(json.dumps(record))  # killed before the swap
    finish_interrupted(root)
    assert not (root / PROMOTION_PENDING).exists() and served(root) == D1 and len(read_promotions(root)) == 1

    (root / PROMOTION_PENDING).write_text(json.dumps(record))  # killed after the swap, before the log
    swap_link(root / SERVING, record["path"])
    (root / f".{SERVING}.link-deadbeef").symlink_to("nowhere")  # and a temp link of another kill
    finish_interrupted(root)
    assert [m["id"] for m in read_promotions(root)][-1] == "killed"
    assert json.loads((root / SERVING_JSON).read_text())["snapshot"] == D2
    assert sorted(p.name for p in root.iterdir() if p.name.startswith(".")) == [".publish.lock", ".versions"]
    finish_interrupted(root)
    assert len(read_promotions(root)) == 2, "completed once"


def test_the_cli_promotes_rolls_back_and_refuses_with_exit_code_2(root, capsys):
    publish(root, D1, "passed")
    publish(root, D2, "failed")
    (root / "movielens").mkdir()
    publish(root / "movielens", D1, "passed")
    assert main(["promote", "--publish-root", str(root), D1, "--reason", "first"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["moved"] and out["record"]["by"] and out["record"]["via"] == "cli"
    assert main(["promote", "--publish-root", str(root), D2, "--reason", "try"]) == 2
    assert "error: 2026-07-02 failed the downstream gate" in capsys.readouterr().err and served(root) == D1
    assert main(["promote", "--publish-root", str(root), D2, "--reason", "ok", "--force", "--by", "dave"]) == 0
    record = json.loads(capsys.readouterr().out)["record"]
    assert record["forced"] is True and record["by"] == "dave"
    assert main(["promote", "--publish-root", str(root), f"movielens/{D1}", "--reason", "ns"]) == 0
    assert served(root / "movielens") == D1 and served(root) == D2
    for bad in ("../2026-07-01", "movielens/../2026-07-01", ".versions/2026-07-01"):
        assert main(["promote", "--publish-root", str(root), bad, "--reason", "x"]) == 2
    assert served(root) == D2


def test_rqvae_promote_needs_neither_airflow_nor_the_pipeline_package(root):
    publish(root, D1, "passed")
    script = ("import sys; from rqvae.cli import main; code = main(sys.argv[1:]); "
              "print(sorted({m.split('.')[0] for m in sys.modules} & {'airflow', 'include', 'torch'}), code)")
    done = subprocess.run([sys.executable, "-c", script, "promote", "--publish-root", str(root), D1, "--reason",
                           "r"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().splitlines()[-1] == "[] 0", done.stdout + done.stderr
