"""Stage `promote`: the evaluation DAG's last task moves the `serving` alias to the version it judged, when the
version passed the gate.

It runs after `record_evaluation` succeeded (the gate passed) or was skipped (no interactions snapshot that
day), never after a failure: a failed gate fails `record_evaluation`, this task is `upstream_failed`, the run
is failed and `serving` stays where it was. The verdict is read again from the version's own evaluation.json
under the publish lock (rqvae.ids.promotion), so what moves serving is what the version folder says, not an
XCom. A day without interactions moves serving only when `promote_without_evaluation` is on. Automatic
promotion never moves serving to an older snapshot than it names: a backfill's late verdict leaves it alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

from include.params import EvaluationOptions
from include.promotion import promoted
from include.results import Promoted
from include.version_ref import VersionRef
from rqvae.ids.promotion import judge, promote_automatically
from rqvae.modes import Verdict

log = logging.getLogger(__name__)


def promote(
    ref: VersionRef,
    options: EvaluationOptions,
    had_interactions: bool,
    publish_root: str | Path,
    by: str,
    run_id: str | None,
) -> Promoted:
    """Promote `ref`'s version if it passed (or, without interactions, if `options.promote_without_evaluation`).

    `publish_root`: the configured root (the result names the version relative to it); `by`: who promotes (the
    DAG); `run_id`: the evaluating run, recorded in the log line. `moved` False says why in `message`.
    """
    folder = Path(ref.publish_root)
    unjudged = not had_interactions and options.promote_without_evaluation
    if judge(ref.version_path).verdict == Verdict.PASSED:  # the rule is applied again, under the lock
        reason = f"passed the downstream gate (promoted by run {run_id})"
    else:
        reason = f"no interactions snapshot for {ref.snapshot}; promote_without_evaluation is on"
    outcome = promote_automatically(folder, ref.snapshot, by=by, reason=reason, allow_unevaluated=unjudged,
                                    run_id=run_id)
    if not outcome.moved and not had_interactions and not options.promote_without_evaluation:
        log.info("no interactions to judge %s with and promote_without_evaluation is off: serving stays on %s",
                 ref.snapshot, outcome.serving)
    log.info("promote: %s", outcome.message)
    return promoted(publish_root, folder, ref.snapshot, outcome)
