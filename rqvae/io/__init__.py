"""Everything that touches files: embedding readers for every layout users have, the semantic-ID file format,
interaction logs, model directories, atomic writes and checksums, synthetic data, and the publish root's
pointers and lock (`published`)."""
