"""The rules of each Great Expectations suite: which expectations the validation tasks check, with the phrase
each failure message completes (`meta["what"]`, see include.gx_suites). Built at run time, since GX loads
slowly (include.gx_suites.expectations_module)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from include import gx_suites
from include.gx_suites import ID_COLUMN

if TYPE_CHECKING:
    from great_expectations.expectations import Expectation


def input_expectations(
    expected_dim: int,
    min_items: int,
    min_norm: float,
    max_norm: float,
    max_abs: float,
) -> list[Expectation]:
    """Rules for the per-row statistics of the loaded embeddings (see validate_dims.row_stats)."""
    gxe = gx_suites.expectations_module()
    return [
        gxe.ExpectTableRowCountToBeBetween(
            min_value=min_items, meta={"what": f"the snapshot needs at least min_items={min_items} rows"}
        ),
        gxe.ExpectColumnValuesToNotBeNull(column=ID_COLUMN, meta={"what": "have a null item_id"}),
        gxe.ExpectColumnValuesToBeUnique(
            column=ID_COLUMN, meta={"what": "share their item_id with another row (seen: {seen})"}
        ),
        *(
            gxe.ExpectColumnValuesToBeBetween(column=column, min_value=low, max_value=high, meta={"what": what})
            for column, low, high, what in (  # what the failing rows do, completing "N of M rows ..."
                ("dim", expected_dim, expected_dim, f"have dim {{seen}} != {expected_dim}"),
                ("nonfinite", 0, 0, "hold NaN/Inf values"),
                ("norm", min_norm, max_norm, f"have an L2 norm ({{seen}}) outside [{min_norm}, {max_norm}]"),
                ("max_abs", None, max_abs, f"hold a value with |value| ({{seen}}) > {max_abs}"),
            )
        ),
    ]


def codes_expectations(
    codebook_sizes: Sequence[int],
    min_unique_ratio: float,
    min_usage: float,
) -> list[Expectation]:
    """Rules for the semantic IDs joined with the input ids (see validate_codes.joined_frame)."""
    gxe = gx_suites.expectations_module()
    levels = [f"code_{level}" for level in range(len(codebook_sizes))]
    rules: list[Expectation] = [
        gxe.ExpectColumnValuesToBeInSet(
            column="coverage",
            value_set=["ok"],
            meta={
                "what": "are {seen} instead of ok (missing: an input item without a semantic ID; "
                "extra: a semantic ID for an item not in the input)"
            },
        ),
        gxe.ExpectColumnValuesToBeUnique(column=ID_COLUMN, meta={"what": "appear more than once in the output"}),
    ]
    for level, (column, size) in enumerate(zip(levels, codebook_sizes, strict=True)):
        rules.append(
            gxe.ExpectColumnValuesToBeBetween(
                column=column,
                min_value=0,
                max_value=int(size) - 1,
                meta={"what": f"have level-{level} codes ({{seen}}) outside [0, {size})"},
            )
        )
    rules.append(
        gxe.ExpectCompoundColumnsToBeUnique(
            column_list=[*levels, "dedup"], meta={"what": "share their codes + dedup with another item"}
        )
    )
    rules.append(
        gxe.ExpectColumnProportionOfUniqueValuesToBeBetween(
            column="prefix",
            min_value=min_unique_ratio,
            meta={"what": f"unique-ID ratio (codes before dedup) must be >= min_unique_ratio={min_unique_ratio}"},
        )
    )
    for level, (column, size) in enumerate(zip(levels, codebook_sizes, strict=True)):
        needed = max(1, math.ceil(min_usage * int(size)))
        rules.append(
            gxe.ExpectColumnUniqueValueCountToBeBetween(
                column=column,
                min_value=needed,
                meta={"what": f"level {level} must use >= {needed} of its {size} codes (min_usage={min_usage})"},
            )
        )
    return rules


def quality_expectations(max_recon_mse: float) -> list[Expectation]:
    """Rules for the one-row frame of model-level metrics."""
    gxe = gx_suites.expectations_module()
    return [
        gxe.ExpectColumnValuesToBeBetween(
            column="recon_mse",
            min_value=0,
            max_value=max_recon_mse,
            meta={"what": f"have a reconstruction MSE ({{seen}}) above max_recon_mse={max_recon_mse}"},
        )
    ]


def interactions_expectations(max_timestamp: int, min_known_share: float) -> list[Expectation]:
    """Rules for the per-event frame of an interactions snapshot (see validate_interactions.event_frame)."""
    gxe = gx_suites.expectations_module()
    return [
        gxe.ExpectColumnValuesToNotBeNull(column="user_id", meta={"what": "have a null user_id"}),
        gxe.ExpectColumnValuesToNotBeNull(column=ID_COLUMN, meta={"what": "have a null item_id"}),
        gxe.ExpectColumnValuesToBeBetween(
            column="timestamp",
            min_value=1,
            max_value=max_timestamp,
            meta={"what": f"have a timestamp ({{seen}}) outside [1, {max_timestamp}] (seconds since the epoch; "
                          "milliseconds or a missing clock show up here)"},
        ),
        gxe.ExpectColumnMeanToBeBetween(
            column="known",
            min_value=min_known_share,
            max_value=1,
            meta={"what": f"share of events whose item has an embedding in the snapshot must be >= "
                          f"min_known_share={min_known_share}"},
        ),
    ]


def interaction_users_expectations(min_users: int) -> list[Expectation]:
    """Rules for the per-user frame: enough users with >= 3 usable events for a leave-one-out evaluation."""
    gxe = gx_suites.expectations_module()
    return [
        gxe.ExpectTableRowCountToBeBetween(
            min_value=min_users,
            meta={"what": f"need at least min_users={min_users} users with 3 or more events on known items"},
        ),
    ]
