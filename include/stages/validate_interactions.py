"""Stage `validate_interactions`: check an interactions snapshot before a retriever is trained on it.

Interaction logs come from another team's export, so the same habits as for embeddings apply: named rules
in a Great Expectations suite, a JSON report, sample item ids in every failure. Beyond nulls and clock
errors, the rule that matters most here is coverage: when most logged items have no embedding in the
snapshot (a stale catalogue, ids from another namespace), an evaluation would judge the IDs on a handful of
items and still print confident numbers, so the share is reported and bounded by `min_known_share`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from include.files import write_json_atomic
from include.gx_rules import interaction_users_expectations, interactions_expectations
from include.gx_suites import ID_COLUMN, Batch, run_suite
from include.params import EvaluationOptions
from include.results import InteractionsChecked
from rqvae.units import SECONDS_PER_DAY

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

log = logging.getLogger(__name__)

CLOCK_SLACK_S = SECONDS_PER_DAY  # a timestamp up to a day ahead of the validating machine's clock is still accepted
MIN_EVENTS_PER_USER = 3  # leave-one-out needs a training, a validation and a test item


def event_frame(interactions_dir: str | Path, known_items: np.ndarray) -> pd.DataFrame:
    """One row per event: user_id, item_id (nullable), timestamp, known (1 when the item has an embedding)."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa

    from rqvae.io.interactions import COLUMNS, interaction_batches

    # not strict: nulls and odd types become failed rules with counts and samples, not a bare exception
    batches = list(interaction_batches(interactions_dir, strict=False))
    frame = pa.Table.from_batches(batches).to_pandas(types_mapper=pd.ArrowDtype) if batches else pd.DataFrame(
        {c: pd.Series(dtype="Int64") for c in COLUMNS})
    for column in COLUMNS:
        frame[column] = frame[column].astype("Int64")
    known = np.isin(frame[ID_COLUMN].fillna(-1).to_numpy(dtype=np.int64), known_items)
    frame["known"] = known.astype(np.int8)
    return frame


def user_frame(events: pd.DataFrame) -> pd.DataFrame:
    """Users with at least three events on known items: the ones a leave-one-out evaluation keeps."""
    usable = events[(events["known"] == 1) & events["user_id"].notna() & events[ID_COLUMN].notna()]
    counts = usable.groupby("user_id").size().rename("events").reset_index()
    return counts[counts["events"] >= MIN_EVENTS_PER_USER]


def validate_interactions(
    interactions_dir: str | Path,
    known_items: np.ndarray,
    report_path: str | Path,
    options: EvaluationOptions,
    now_s: int | None = None,
) -> InteractionsChecked:
    """Run the interactions suite; save the report; raise ValidationFailed when a rule fails.

    `known_items` are the item ids of the embeddings snapshot; `options` gives `min_known_share` and `min_users`
    (the form's Interactions section); `now_s` the clock future timestamps are judged against (None: now).
    """
    min_known_share, min_users = options.min_known_share, options.min_users
    clock = int(time.time()) if now_s is None else int(now_s)
    events = event_frame(interactions_dir, known_items)
    users = user_frame(events)
    known_share = float(events["known"].mean()) if len(events) else 0.0
    log.info(
        "validate_interactions: %d events of %d users in %s; %.1f%% on items with an embedding; %d users with "
        ">= %d usable events", len(events), events["user_id"].nunique(), interactions_dir, 100 * known_share,
        len(users), MIN_EVENTS_PER_USER,
    )
    result = run_suite(
        "interactions",
        [
            Batch("events", events, interactions_expectations(clock + CLOCK_SLACK_S, min_known_share),
                  index_columns=[ID_COLUMN]),
            Batch("users", users, interaction_users_expectations(min_users)),
        ],
    )
    summary = {
        "n_events": len(events),
        "n_users": int(events["user_id"].nunique()),
        "n_kept_users": len(users),
        "known_share": round(known_share, 6),
    }
    report = {
        **result.to_dict(),
        **summary,
        "interactions": str(interactions_dir),
        "params": {"min_known_share": min_known_share, "min_users": min_users, "max_timestamp": clock + CLOCK_SLACK_S},
    }
    write_json_atomic(report_path, report)
    result.raise_for_failures(str(report_path))
    return InteractionsChecked(ok=True, **summary, report=str(report_path), evaluated=len(result.checks),
                               seconds=result.seconds)
