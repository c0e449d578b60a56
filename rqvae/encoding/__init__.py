"""Encoding every item: a streamed pass in bounded memory (`encode`), sharded as the pipeline maps it
(`shards`), merged in level-1 groups when the catalogue is larger than memory (`partitions`)."""
