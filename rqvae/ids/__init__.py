"""What makes codes into IDs a recommender can depend on: unique IDs (collisions), continuity between versions
(lineage, alignment, retired IDs, churn), the collision audit, the serving index, the per-version report, and
which version is served (promotion: the `serving` alias and its log)."""
