"""Splitting the data among processes and assembling per-process rows into one global jax.Array.

The global batch is the concatenation of the shards' rows, shard 0 first. Process p of P hosts the
contiguous shards [p*S/P, (p+1)*S/P), so its local rows are a contiguous block of the global batch, in
process order: what `jax.make_array_from_process_local_data` expects when the batch axis is sharded over a
mesh whose devices are ordered by process (as jax.make_mesh orders them).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from ctxjax.data.config import DataError


def process_layout(process_index: int | None = None, process_count: int | None = None) -> tuple[int, int]:
    return (jax.process_index() if process_index is None else process_index,
            jax.process_count() if process_count is None else process_count)


def local_shards(num_shards: int, process_index: int, process_count: int) -> range:
    if num_shards % process_count:
        raise DataError(f"data.num_shards={num_shards} is not a multiple of the {process_count} processes; "
                        f"set data.num_shards to a multiple of {process_count}")
    per_process = num_shards // process_count
    return range(process_index * per_process, (process_index + 1) * per_process)


def make_global_batch(local_batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh | None,
                      sharding: jax.sharding.Sharding | PartitionSpec) -> dict[str, jax.Array]:
    """One global array per field from this process's rows; `sharding` shards the batch (first) axis.

    `sharding` is a Sharding, or a PartitionSpec combined with `mesh`. The global batch has
    process_count times the local rows.
    """
    if isinstance(sharding, PartitionSpec):
        if mesh is None:
            raise DataError("make_global_batch got a PartitionSpec but no mesh; pass the mesh or a Sharding")
        sharding = NamedSharding(mesh, sharding)
    out = {}
    for key, local in local_batch.items():
        global_shape = (local.shape[0] * jax.process_count(),) + local.shape[1:]
        out[key] = jax.make_array_from_process_local_data(sharding, local, global_shape)
    return out


def merge_process_states(local_state: dict) -> dict:
    """Every process's iterator state merged into one (all shards): a collective, so every process calls it
    at the same step. The result restores on any number of processes that divides num_shards."""
    if jax.process_count() == 1:
        return local_state
    import json

    from jax.experimental import multihost_utils

    encoded = np.frombuffer(json.dumps(local_state).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.array([len(encoded)], np.int32))).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[:len(encoded)] = encoded
    gathered = np.asarray(multihost_utils.process_allgather(padded))  # [process_count, longest]
    merged = dict(local_state, shards={})
    for row, size in zip(gathered, sizes):
        merged["shards"].update(json.loads(bytes(row[:size]).decode())["shards"])
    return merged
