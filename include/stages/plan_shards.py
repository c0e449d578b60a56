"""Stage `plan_shards`: cut the artifact into the row ranges `encode_items` is mapped over.

It runs before training, so a `shard_size` Airflow cannot map (more instances than `[core] max_map_length`)
fails in seconds, not after hours of training.
"""

from __future__ import annotations

import math

from include.results import Shard
from rqvae.config import EncodeOptions
from rqvae.errors import ConfigError


def plan_shards(n_items: int, options: EncodeOptions, max_shards: int | None) -> list[Shard]:
    """Row ranges `{index, count, start, stop}` covering `[0, n_items)`: ceil(n / shard_size) near-equal shards.

    Equal sizes rather than full shards plus a remainder, so parallel workers finish together. `max_shards` is
    Airflow's `[core] max_map_length` (None: no cap): more would fail the mapped task with a less helpful message.
    """
    shard_size = options.shard_size
    if n_items < 1:
        raise ConfigError(f"nothing to shard: n_items={n_items}")
    if shard_size < 1:
        raise ConfigError(f"shard_size must be >= 1, got {shard_size}")
    count = math.ceil(n_items / shard_size)
    if max_shards is not None and count > max_shards:
        raise ConfigError(
            f"shard_size={shard_size} cuts {n_items} items into {count} shards, more than the {max_shards} mapped "
            f"task instances Airflow allows ([core] max_map_length); use shard_size >= "
            f"{math.ceil(n_items / max_shards)}"
        )
    bounds = [i * n_items // count for i in range(count + 1)]
    return [Shard(index=i, count=count, start=bounds[i], stop=bounds[i + 1]) for i in range(count)]
