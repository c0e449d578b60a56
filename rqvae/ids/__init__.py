"""What makes codes into IDs a recommender can depend on: unique IDs (collisions), continuity between versions
(lineage, alignment, retired IDs, churn), the collision audit, the serving index and the per-version report."""
