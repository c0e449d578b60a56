"""Check a run's params against the DAG's declared schemas before any work starts.

Airflow's trigger form and REST API (3.3) accept values that break a param's schema (e.g. `codebook_size` 0
below its minimum of 2): the run is created and only a later task would fail, after the snapshot's work folder
was emptied. The first task calls `check_params`, so a bad value fails the run at once, without retries (it is
a ValueError), with one message naming every offending param, its value and the rule it breaks.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ParamsError(ValueError):
    """Run params that break the DAG's declared schemas."""


def check_params(values: Mapping[str, Any], schemas: Mapping[str, Mapping[str, Any]]) -> None:
    """Raise ParamsError listing every param whose value breaks its JSON schema (title shown when set)."""
    import jsonschema

    problems = []
    for name, schema in schemas.items():
        value = values.get(name)
        errors = sorted(jsonschema.Draft7Validator(dict(schema)).iter_errors(value), key=lambda e: e.message)
        if errors:
            title = f" ({schema['title']})" if schema.get("title") else ""
            problems.append(f"{name}{title}={value!r}: {'; '.join(e.message for e in errors)}")
    if problems:
        raise ParamsError(f"invalid params, fix them in the trigger form or the run conf: {' | '.join(problems)}")
