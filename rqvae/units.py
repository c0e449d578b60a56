"""Units of measure that modules with nothing else in common convert with; imports nothing, so the DAG's
parse-time modules may use it too."""

SECONDS_PER_DAY = 86_400
