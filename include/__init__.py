"""Task logic of the `rqvae_semantic_ids` DAG: one module per stage, named after its task id (`plan_shards`
lives with `encode_items`, the task it feeds).

Each stage is a plain function of paths and parameters returning a small JSON-able dict, so tests and
scripts call it without a scheduler and the DAG file stays a thin wiring layer. Nothing here is imported
at DAG-parse time: the DAG imports these modules inside task bodies.
"""
