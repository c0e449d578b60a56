"""Stage `promote_version`: the `semantic_ids_promote` DAG's one task, a person's promotion or rollback of the
`serving` alias from the trigger form (the same move as the UI page's button and `rqvae promote`).

Any verdict may be served on purpose, with a reason; a version that failed the gate needs `force` and the
log marks it forced. A refusal (unknown version, no reason, a failed version without force) is permanent:
the task fails at once and nothing moves.
"""

from __future__ import annotations

import logging
from pathlib import Path

from include.params import PromotionOptions
from include.promotion import promoted, resolve_version
from include.results import Promoted
from rqvae.ids.promotion import promote

log = logging.getLogger(__name__)


def promote_version(options: PromotionOptions, publish_root: str | Path, by: str, run_id: str | None) -> Promoted:
    """Move `serving` to `options.version` (relative to the configured `publish_root`) for user `by`."""
    folder, snapshot = resolve_version(publish_root, options.version)
    outcome = promote(folder, snapshot, by=by, via="dag", reason=options.reason, force=options.force,
                      run_id=run_id)
    log.info("promote_version: %s", outcome.message)
    return promoted(publish_root, folder, snapshot, outcome)
